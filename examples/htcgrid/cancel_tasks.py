"""HTC-Grid's cancel example shape: configured in the constructor, ten tasks, cancel, results.

    AGENT_CONFIG_FILE=agent_config.json python examples/htcgrid/cancel_tasks.py
"""

import json
import os
import time

from gridop.client.htcgrid import AWSConnector  # was: from api.connector import AWSConnector

with open(os.environ.get("AGENT_CONFIG_FILE", "/etc/agent/Agent_config.tfvars.json")) as f:
    agent_config = json.load(f)

if __name__ == "__main__":
    connector = AWSConnector(agent_config)
    connector.authenticate()
    submission = connector.send([{"worker_arguments": ["1000", "1", "1"]} for _ in range(10)])
    print(submission)
    time.sleep(float(os.environ.get("CANCEL_AFTER_SEC", "5")))  # let some of them finish
    print(json.dumps(connector.cancel_sessions([submission["session_id"]])))
    print(json.dumps(connector.get_results(submission, timeout_sec=10)))
