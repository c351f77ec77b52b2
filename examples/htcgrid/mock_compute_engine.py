"""An HTC-Grid-style lambda: `worker_arguments[0]` milliseconds of "work", returning that number.

The same function runs unchanged as a gridop handler (`handler: mock_compute_engine:lambda_handler`
in an image that has this file on its path; the gridop image ships it as
`gridop.tasks.examples:mock_compute_engine`, which examples/htcgrid/taskpool.yaml uses).
"""

import time


def lambda_handler(event, context):
    milliseconds = int(event["worker_arguments"][0])
    print(f"task {context.task_id}: computing for {milliseconds} ms")
    time.sleep(milliseconds / 1000)
    return milliseconds
