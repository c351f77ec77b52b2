"""HTC-Grid's client API under HTC-Grid's names: migrate by changing one import line.

    from api.connector import AWSConnector          # HTC-Grid
    from gridop.client.htcgrid import AWSConnector  # gridop

Importing this module behaves as importing HTC-Grid's `api.connector` does: INFO logging is
switched on (when the program has not configured logging itself), because HTC-Grid's example
clients report their progress with `logging.info`. Native gridop programs import
`gridop.client.tasks.GridConnector` instead, which leaves logging alone.
"""

from __future__ import annotations

import logging

from .tasks import (
    RETRY_COUNT,
    TASK_TIMEOUT_SEC,
    TOKEK_REFRESH_INTERVAL_SEC,
    URLOPEN_LAMBDA_INVOKE_TIMEOUT_SEC,
    AsyncGridConnector,
    GridConnector,
    get_safe_session_id,
)

logging.basicConfig(format="%(asctime)s - %(levelname)s - %(filename)s - %(funcName)s  - %(lineno)d - %(message)s",
                    datefmt="%H:%M:%S", level=logging.INFO)

#: HTC-Grid's connector class: `AWSConnector()` + `init(config, username=..., password=...)`, or
#: `AWSConnector(config)`; `authenticate`, `send`, `get_results`, `cancel_sessions`, and the rest
#: of HTC-Grid's methods (`refresh`, `generate_user_task_json`, `submit`, `invoke_get_results_lambda`,
#: `cancel`).
AWSConnector = GridConnector

__all__ = [
    "RETRY_COUNT", "TASK_TIMEOUT_SEC", "TOKEK_REFRESH_INTERVAL_SEC", "URLOPEN_LAMBDA_INVOKE_TIMEOUT_SEC",
    "AWSConnector", "AsyncGridConnector", "GridConnector", "get_safe_session_id",
]
