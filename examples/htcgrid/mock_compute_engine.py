"""An HTC-Grid-style lambda: `worker_arguments[0]` milliseconds of "work", returning that number.

The same function runs unchanged as a gridop handler:

    kubectl apply -f examples/htcgrid/taskpool.yaml   # handler: examples.htcgrid.mock_compute_engine:lambda_handler
"""

import time


def lambda_handler(event, context):
    milliseconds = int(event["worker_arguments"][0])
    print(f"task {context.task_id}: computing for {milliseconds} ms")
    time.sleep(milliseconds / 1000)
    return milliseconds
