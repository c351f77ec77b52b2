"""GridConnector: the HTC-Grid client API (send / get_results / cancel_sessions) on gridop.

    connector = GridConnector({"redis_url": "redis://localhost:6379/0"})
    connector.authenticate()
    submission = connector.send([{"x": 1}, {"x": 2}])
    results = connector.get_results(submission, timeout_sec=60)

Method names, arguments and return shapes are HTC-Grid's. Payloads are JSON, base64-encoded in
the data plane, exactly as there. `AsyncGridConnector` is the same API for asyncio, plus
`iter_results()`, which yields each task as it reaches a terminal state.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ..tasks.codec import decode_text
from ..tasks.connection import connect
from ..tasks.states import TaskState
from ..tasks.store import Report, RetryPolicy, TaskStore, encode_tasks, parse_task_id, task_id

log = logging.getLogger(__name__)

# HTC-Grid configuration keys that only make sense on AWS: accepted, ignored, warned about.
AWS_ONLY_KEYS = frozenset({
    "s3_bucket", "public_api_gateway_url", "private_api_gateway_url", "api_gateway_key", "user_pool_id",
    "cognito_userpool_client_id", "username", "password", "region", "REGION",
    "task_input_passed_via_external_storage",
})
KNOWN_KEYS = frozenset({
    "redis_url", "grid_storage_service", "dynamodb_results_pull_interval_sec", "results_poll_interval_sec",
    "max_payload_bytes", "max_retries", "retry_backoff_sec", "session_prefix", "key_prefix", "namespace",
    "redis_outage_budget_sec",
})
DEFAULT_OUTAGE_BUDGET = 120.0  # seconds a call waits through a Redis restart or failover before giving up
SESSION_ID = re.compile(r"^[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?$")
DEFAULT_MAX_PAYLOAD = 1024 * 1024
READ_FROM_REDIS = "read_from_REDIS"


def _validate_session_id(sid: Any, field: str = "session_id") -> str:
    if not isinstance(sid, str) or not SESSION_ID.match(sid):
        raise ValueError(f"{field} {sid!r} must be 1-53 lowercase letters, digits or '-' (it names a TaskBatch)")
    return sid


class AsyncGridConnector:
    def __init__(self, client_config_data: Mapping[str, Any]):
        if not isinstance(client_config_data, Mapping):
            raise ValueError("client_config_data must be a dict")
        config = dict(client_config_data)
        ignored = sorted(k for k in config if k in AWS_ONLY_KEYS)
        if ignored:
            log.warning("ignoring AWS-only configuration keys: %s", ", ".join(ignored))
        unknown = sorted(k for k in config if k not in AWS_ONLY_KEYS | KNOWN_KEYS)
        if unknown:
            raise ValueError(f"client_config_data: unknown keys {unknown}")
        storage = str(config.get("grid_storage_service", "REDIS")).upper()
        if storage != "REDIS":
            raise ValueError(f"client_config_data['grid_storage_service'] must be 'REDIS' on gridop, not {storage!r}")
        if not config.get("redis_url"):
            raise ValueError("client_config_data['redis_url'] is required (e.g. 'redis://gridop-redis:6379/0')")
        self.redis_url = str(config["redis_url"])
        self.poll_interval = float(
            config.get("results_poll_interval_sec", config.get("dynamodb_results_pull_interval_sec", 0.5))
        )
        self.max_payload_bytes = int(config.get("max_payload_bytes", DEFAULT_MAX_PAYLOAD))
        self.retry_policy = RetryPolicy(
            max_retries=int(config.get("max_retries", 3)),
            backoff_seconds=float(config.get("retry_backoff_sec", 1.0)),
        )
        self.session_prefix = str(config.get("session_prefix", "tb"))
        # Where each session's terminal-event stream stood just before our last send to it: lets
        # get_results wait for exactly those events instead of polling first.
        self._positions: dict[str, str] = {}
        self.namespace = str(config.get("namespace", "default"))
        prefix = str(config.get("key_prefix", f"gridop:{self.namespace}"))
        budget = float(config.get("redis_outage_budget_sec", DEFAULT_OUTAGE_BUDGET))
        self._store = TaskStore(connect(self.redis_url, outage_budget=budget), prefix=prefix)

    @property
    def store(self) -> TaskStore:
        return self._store

    async def close(self) -> None:
        await self._store.close()

    async def __aenter__(self) -> AsyncGridConnector:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def authenticate(self) -> None:
        """Check that the data plane is reachable (gridop authenticates with Redis credentials in the URL)."""
        await self._store.redis.ping()

    async def send(
        self, tasks_list: list[dict[str, Any]], session_id: str | None = None, *, append: bool = False
    ) -> dict[str, Any]:
        """Submit tasks; returns {'session_id', 'task_ids'} with ids in submission order.

        Everything is validated and encoded before anything is written. With a client-supplied
        `session_id`, sending the same list again is idempotent: it returns the same task ids and
        resumes an interrupted send, even when several clients send it at once. Sending different
        tasks under an id already in use raises ValueError; with `append=True`, the tasks are added
        to that session instead (a long-lived batch; a cancelled one refuses them).
        """
        payloads = encode_tasks(tasks_list, self.max_payload_bytes)
        sid = _validate_session_id(session_id) if session_id is not None else (
            f"{self.session_prefix}-{uuid.uuid4().hex[:12]}"
        )
        if append:
            appended = await self._store.append(sid, payloads)
            if appended is not None:
                indices, position = appended
                self._positions[sid] = position
                return {"session_id": sid, "task_ids": [task_id(sid, i) for i in indices]}
        start = await self._store.create(sid, payloads, self.retry_policy)
        if start < len(payloads):
            await self._store.submit(sid, payloads, start)
        return {"session_id": sid, "task_ids": [task_id(sid, i) for i in range(len(payloads))]}

    @staticmethod
    def _submission(submission_response: Mapping[str, Any]) -> tuple[str, list[int]]:
        if not isinstance(submission_response, Mapping) or "session_id" not in submission_response:
            raise ValueError("submission_response must be the dict send() returned (with 'session_id' and 'task_ids')")
        sid = _validate_session_id(submission_response["session_id"], "submission_response['session_id']")
        ids = submission_response.get("task_ids")
        if not isinstance(ids, list):
            raise ValueError("submission_response['task_ids'] must be a list")
        indices = []
        for tid in ids:
            owner, index = parse_task_id(str(tid))
            if owner != sid:
                raise ValueError(f"task id {tid!r} does not belong to session {sid!r}")
            indices.append(index)
        return sid, indices

    async def get_results(self, submission_response: Mapping[str, Any], timeout_sec: float = 0) -> dict[str, Any]:
        """Wait until every task of the submission is terminal or `timeout_sec` passes; report them."""
        sid, indices = self._submission(submission_response)
        deadline = time.monotonic() + max(0.0, float(timeout_sec))
        position = self._positions.pop(sid, None)
        if position is not None and len(indices) <= 1000:
            # Fast path: wait for these tasks' own terminal events. When they all finished with
            # outputs small enough to travel in the events, that is the whole answer.
            waiting = set(indices)
            carried: dict[int, bytes] = {}
            clean = True
            while waiting and (remaining := deadline - time.monotonic()) > 0:
                block = int(max(1, min(remaining, self.poll_interval) * 1000))
                position, events = await self._store.terminal_events_with_output(sid, position, block_ms=block)
                for i, state, output in events:
                    if i in waiting:
                        waiting.discard(i)
                        if state == TaskState.FINISHED and output is not None:
                            carried[i] = output
                        else:
                            clean = False
            if not waiting and clean:
                return self._shape(sid, indices, [(TaskState.FINISHED, carried[i], None) for i in indices])
        while True:
            position, terminal, report = await self._store.collect(sid, indices)
            if report is not None:
                return self._shape(sid, indices, report)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # Sleep until a task of this batch reaches a terminal state (or the poll interval passes).
            # On a busy batch, look again only after a pause that grows with the submission: each
            # look costs the data plane time proportional to its size.
            block = int(max(1, min(remaining, self.poll_interval) * 1000))
            _, events = await self._store.terminal_events(sid, position, block_ms=block, count=1)
            if events and len(indices) > 1:
                pause = min(self.poll_interval, 0.005 + len(indices) * 1e-6)
                await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        states = await self._store.states(sid, indices)
        terminal = [i for i, s in zip(indices, states) if s is not None and s.is_terminal]
        partial = dict(zip(terminal, await self._payloads(sid, terminal, states, indices)))
        return self._shape(sid, terminal, [partial[i] for i in terminal])

    async def _payloads(self, sid: str, terminal: list[int], states: list[TaskState | None], indices: list[int]
                        ) -> list[Report]:
        state_of = dict(zip(indices, states))
        finished = [i for i in terminal if state_of[i] == TaskState.FINISHED]
        failed = [i for i in terminal if state_of[i] == TaskState.FAILED]
        outputs = dict(zip(finished, await self._store.outputs(sid, finished)))
        errors = dict(zip(failed, await self._store.errors(sid, failed)))
        report: list[Report] = []
        for i in terminal:
            message, kind = errors.get(i, (None, None))
            report.append((state_of[i], outputs.get(i) or (message or "").encode() or None, kind))
        return report

    @staticmethod
    def _shape(sid: str, indices: list[int], report: list[Report]) -> dict[str, Any]:
        """HTC-Grid's get_results dict from (state, output-or-error, error kind) per task.

        `metadata.error_kinds` maps each failed task to what its last attempt was blamed on:
        application (the handler raised), timeout, or infrastructure (its worker died)."""
        shaped: dict[str, Any] = {
            "finished": [], "finished_OUTPUT": [], "failed": [], "failed_OUTPUT": [],
            "cancelled": [], "cancelled_OUTPUT": [],
        }
        kinds: dict[str, str] = {}
        for index, (state, payload, kind) in zip(indices, report):
            if state == TaskState.FINISHED:
                shaped["finished"].append(task_id(sid, index))
                shaped["finished_OUTPUT"].append(decode_text(payload) if payload else "")
            elif state == TaskState.FAILED:
                shaped["failed"].append(task_id(sid, index))
                shaped["failed_OUTPUT"].append(payload.decode() if payload else READ_FROM_REDIS)
                kinds[task_id(sid, index)] = kind or "application"
            elif state == TaskState.CANCELLED:
                shaped["cancelled"].append(task_id(sid, index))
                shaped["cancelled_OUTPUT"].append(READ_FROM_REDIS)
        shaped["metadata"] = {
            "tasks_in_response": len(shaped["finished"]) + len(shaped["failed"]) + len(shaped["cancelled"]),
            "error_kinds": kinds,
        }
        return shaped

    async def iter_results(
        self, submission_response: Mapping[str, Any], timeout_sec: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield {'task_id', 'state', 'output' | 'error'} for each task as it reaches a terminal state."""
        sid, indices = self._submission(submission_response)
        wanted = set(indices)
        deadline = None if timeout_sec is None else time.monotonic() + timeout_sec
        position = "0-0"
        while wanted:
            block = 1000 if deadline is None else int(max(1, min(1.0, deadline - time.monotonic()) * 1000))
            position, events = await self._store.terminal_events(sid, position, block_ms=block)
            batch = [(i, s) for i, s in events if i in wanted]
            finished = [i for i, s in batch if s == TaskState.FINISHED]
            failed = [i for i, s in batch if s == TaskState.FAILED]
            outputs = dict(zip(finished, await self._store.outputs(sid, finished)))
            errors = dict(zip(failed, await self._store.errors(sid, failed)))
            for index, state in batch:
                wanted.discard(index)
                item: dict[str, Any] = {"task_id": task_id(sid, index), "state": state.value}
                if state == TaskState.FINISHED:
                    item["output"] = decode_text(outputs[index]) if outputs.get(index) else None
                elif state == TaskState.FAILED:
                    item["error"], item["error_kind"] = errors.get(index, (None, None))
                yield item
            if deadline is not None and time.monotonic() >= deadline:
                return

    async def cancel_sessions(self, session_ids: list[str]) -> dict[str, dict[str, int]]:
        if not isinstance(session_ids, list | tuple):
            raise ValueError("session_ids must be a list of session ids")
        result = {}
        for sid in session_ids:
            _validate_session_id(sid)
            counts = await self._store.cancel(sid) if await self._store.exists(sid) else (
                {"pending": 0, "retrying": 0, "processing": 0}
            )
            result[sid] = {
                "cancelled_retrying": counts["retrying"],
                "cancelled_pending": counts["pending"],
                "cancelled_processing": counts["processing"],
                "total_cancelled_tasks": sum(counts.values()),
            }
        return result


class GridConnector:
    """The synchronous HTC-Grid connector (for scripts and notebooks without an event loop)."""

    def __init__(self, client_config_data: Mapping[str, Any]):
        try:  # the connector owns its loop, so it can pick the faster one
            import uvloop

            self._loop = uvloop.new_event_loop()
        except ImportError:
            self._loop = asyncio.new_event_loop()
        self._async = AsyncGridConnector(client_config_data)

    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    def authenticate(self) -> None:
        self._run(self._async.authenticate())

    def send(self, tasks_list: list[dict[str, Any]], session_id: str | None = None) -> dict[str, Any]:
        return self._run(self._async.send(tasks_list, session_id))

    def get_results(self, submission_response: Mapping[str, Any], timeout_sec: float = 0) -> dict[str, Any]:
        return self._run(self._async.get_results(submission_response, timeout_sec))

    def cancel_sessions(self, session_ids: list[str]) -> dict[str, dict[str, int]]:
        return self._run(self._async.cancel_sessions(session_ids))

    def close(self) -> None:
        self._run(self._async.close())
        self._loop.close()

    def __enter__(self) -> GridConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
