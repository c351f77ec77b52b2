"""The GRID Enterprise session API, unchanged, against gridop.

    python examples/start_session.py      # with KUBECONFIG pointing at the cluster
"""

import asyncio
import pathlib

from gridop.client import GridSessionManager

HERE = pathlib.Path(__file__).parent


async def main() -> None:
    manager = GridSessionManager(user_id="user123", resource_config_file_path=str(HERE / "resource_config.json"))
    started = await manager.start_session(
        session_id="session-001", resource="node0", session_config_file_path=str(HERE / "session_config.json")
    )
    print("started:", started)
    print(await manager.list_sessions())
    print("stopped:", await manager.stop_session(session_id="session-001"))
    await manager.close()


if __name__ == "__main__":
    asyncio.run(main())
