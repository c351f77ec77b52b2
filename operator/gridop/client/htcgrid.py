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

from .tasks import AsyncGridConnector, GridConnector

logging.basicConfig(format="%(asctime)s - %(levelname)s - %(filename)s - %(funcName)s  - %(lineno)d - %(message)s",
                    datefmt="%H:%M:%S", level=logging.INFO)

#: HTC-Grid's connector class: `AWSConnector()` + `init(config, username=..., password=...)`, or
#: `AWSConnector(config)`; `authenticate`, `send`, `get_results`, `cancel_sessions`.
AWSConnector = GridConnector

__all__ = ["AWSConnector", "AsyncGridConnector", "GridConnector"]
