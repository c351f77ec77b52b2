"""The HTC-Grid client API, unchanged, against gridop (only the constructor's config differs).

    kubectl -n gridop-system port-forward svc/gridop-redis 6379 &
    GRIDOP_REDIS_URL=redis://:PASSWORD@127.0.0.1:6379/0 python examples/send_tasks.py
"""

import os

from gridop.client.tasks import GridConnector

gridConnector = GridConnector(client_config_data={"redis_url": os.environ["GRIDOP_REDIS_URL"], "namespace": "default"})
gridConnector.authenticate()
submission = gridConnector.send(tasks_list=[{"x": i} for i in range(100)], session_id="squares")
results = gridConnector.get_results(submission_response=submission, timeout_sec=120)
print(results["metadata"], results["finished_OUTPUT"][:3])
gridConnector.close()
