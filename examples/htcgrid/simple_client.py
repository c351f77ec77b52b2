"""An HTC-Grid client, as HTC-Grid's users write them; on gridop only the import line differs.

    AGENT_CONFIG_FILE=agent_config.json python examples/htcgrid/simple_client.py
"""

import json
import logging
import os

from gridop.client.htcgrid import AWSConnector  # was: from api.connector import AWSConnector

config_path = os.environ.get("AGENT_CONFIG_FILE", "/etc/agent/Agent_config.tfvars.json")
with open(config_path) as f:
    agent_config = json.load(f)

if __name__ == "__main__":
    logging.info("simple client")
    connector = AWSConnector()
    connector.init(agent_config, username=os.environ.get("USERNAME", ""), password=os.environ.get("PASSWORD", ""))
    connector.authenticate()

    tasks = [{"worker_arguments": ["100", "1", "1"]}, {"worker_arguments": ["200", "1", "1"]}]
    submission = connector.send(tasks)
    logging.info(submission)

    results = connector.get_results(submission, timeout_sec=100)
    logging.info(results)
