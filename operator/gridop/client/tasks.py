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
import math
import os
import re
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import redis.asyncio as aioredis

from ..tasks.codec import decode_text
from ..tasks.connection import address_of, connect
from ..tasks.states import TaskState
from ..tasks.store import Report, RetryPolicy, TaskStore, encode_tasks, parse_task_id, task_id

log = logging.getLogger(__name__)

# HTC-Grid's own client/agent configuration (what its deployment writes to Agent_config.tfvars.json):
# accepted as is; the keys that have no meaning on gridop are ignored, with one log line.
HTC_GRID_KEYS = frozenset({
    "region", "REGION", "sqs_endpoint", "sqs_endpoint_url", "sqs_queue", "sqs_dlq", "dynamodb_endpoint_url",
    "redis_endpoint_url", "redis_endpoint_url_without_ssl", "redis_with_ssl", "redis_port", "redis_port_without_ssl",
    "redis_password", "redis_ca_cert", "redis_client_pfx", "redis_key_file", "redis_cert_file", "cluster_config",
    "connection_redis_timeout", "cluster_name", "ddb_status_table", "ddb_state_table",
    "empty_task_queue_backoff_timeout_sec", "work_proc_status_pull_interval_sec", "task_ttl_expiration_offset_sec",
    "task_ttl_refresh_interval_sec", "agent_sqs_visibility_timeout_sec", "agent_task_visibility_timeout_sec",
    "task_input_passed_via_external_storage", "lambda_name_ttl_checker", "lambda_name_submit_tasks",
    "lambda_name_get_results", "lambda_name_cancel_tasks", "s3_bucket", "s3_kms_key_id", "grid_queue_service",
    "grid_queue_config", "task_queue_service", "task_queue_config", "tasks_status_table_service",
    "tasks_status_table_config", "state_table_service", "state_table_config", "tasks_queue_name", "htc_path_logs",
    "error_log_group", "error_logging_stream", "metrics_are_enabled", "metrics_grafana_private_ip",
    "metrics_submit_tasks_lambda_connection_string", "metrics_cancel_tasks_lambda_connection_string",
    "metrics_pre_agent_connection_string", "metrics_post_agent_connection_string",
    "metrics_get_results_lambda_connection_string", "metrics_ttl_checker_lambda_connection_string",
    "agent_use_congestion_control", "public_api_gateway_url", "private_api_gateway_url", "api_gateway_key",
    "enable_xray", "user_pool_id", "cognito_userpool_client_id", "access_key", "secret_key", "username", "password",
})
KNOWN_KEYS = frozenset({
    "redis_url", "grid_storage_service", "dynamodb_results_pull_interval_sec", "results_poll_interval_sec",
    "max_payload_bytes", "max_retries", "retry_backoff_sec", "session_prefix", "key_prefix", "namespace",
    "redis_outage_budget_sec", "pool",
})
# HTC-Grid's data-plane storage choices. gridop's data plane is Redis; S3 copies are not made.
STORAGE_SERVICES = ("REDIS", "S3+REDIS", "S3")
DEFAULT_OUTAGE_BUDGET = 120.0  # seconds a call waits through a Redis restart or failover before giving up
SESSION_ID = re.compile(r"^[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?$")
DEFAULT_MAX_PAYLOAD = 1024 * 1024
READ_FROM_DATAPLANE = "read_from_dataplane"  # HTC-Grid's placeholder in failed_OUTPUT and cancelled_OUTPUT
_logged: set[str] = set()  # what this process has already said about its configuration


def _log_once(level: int, message: str, *args: Any) -> None:
    text = message % args
    if text not in _logged:
        _logged.add(text)
        log.log(level, text)


def _validate_session_id(sid: Any, field: str = "session_id") -> str:
    if not isinstance(sid, str) or not SESSION_ID.match(sid):
        raise ValueError(f"{field} {sid!r} must be 1-53 lowercase letters, digits or '-' (it names a TaskBatch)")
    return sid


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def redis_url_of(config: Mapping[str, Any]) -> str:
    """The data plane's URL from a gridop or an HTC-Grid configuration.

    HTC-Grid writes a bare host name in `redis_url` (or `redis_endpoint_url`), with the port,
    password and TLS in keys of their own; gridop also takes a full redis:// URL, and falls
    back to $GRIDOP_REDIS_URL (what the operator's Secret `gridop-data-plane` holds)."""
    raw = config.get("redis_url") or config.get("redis_endpoint_url") or os.environ.get("GRIDOP_REDIS_URL")
    if not raw:
        raise ValueError("client_config_data['redis_url'] is required (e.g. 'redis://gridop-redis:6379/0'), "
                         "or set GRIDOP_REDIS_URL")
    raw = str(raw).strip()
    if "://" in raw:
        return raw
    host, _, port = raw.partition(":")
    port = port or str(config.get("redis_port") or 6379)
    if not host or not port.isdigit():
        raise ValueError(f"client_config_data['redis_url'] {raw!r} is neither a redis:// URL nor host[:port]")
    scheme = "rediss" if _truthy(config.get("redis_with_ssl", False)) else "redis"
    password = config.get("redis_password")
    auth = f":{urllib.parse.quote(str(password), safe='')}@" if password else ""
    return f"{scheme}://{auth}{host}:{port}/0"


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def default_namespace() -> str:
    """The namespace whose data plane a client uses when its config names none: $GRIDOP_NAMESPACE,
    else the namespace of the pod it runs in, else `default`."""
    if os.environ.get("GRIDOP_NAMESPACE"):
        return os.environ["GRIDOP_NAMESPACE"]
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


class AsyncGridConnector:
    """The HTC-Grid connector for asyncio. Configure it in the constructor or, as HTC-Grid's
    `AWSConnector()` is, with no arguments and then `init(config, username=..., password=...)`."""

    def __init__(self, client_config_data: Mapping[str, Any] | None = None):
        self._store_: TaskStore | None = None
        self._positions: dict[str, str] = {}
        if client_config_data is not None:
            self.init(client_config_data)

    def init(self, agent_config_data: Mapping[str, Any], username: str = "", password: str = "",
             cognitoidp_client: Any = None, s3_custom_resource: Any = None, redis_custom_connection: Any = None) -> None:
        """Configure the connector (HTC-Grid's `init`). HTC-Grid's keys that have no meaning here are
        ignored (logged once); `username`/`password` are not used: the data plane's own credentials
        (in `redis_url`, or `redis_password`) authenticate."""
        if not isinstance(agent_config_data, Mapping):
            raise ValueError("client_config_data must be a dict (the JSON of HTC-Grid's agent config, or gridop's)")
        config = dict(agent_config_data)
        ignored = sorted(k for k in config if k in HTC_GRID_KEYS and k not in ("redis_port", "redis_password",
                                                                               "redis_with_ssl", "redis_endpoint_url"))
        if ignored:
            _log_once(logging.INFO, "gridop has no use for these HTC-Grid settings, ignored: %s", ", ".join(ignored))
        unknown = sorted(k for k in config if k not in HTC_GRID_KEYS | KNOWN_KEYS)
        if unknown:
            _log_once(logging.WARNING, "unknown configuration keys, ignored: %s", ", ".join(unknown))
        if username or password or cognitoidp_client is not None or s3_custom_resource is not None:
            _log_once(logging.INFO, "gridop authenticates with the data plane's credentials (redis_url / redis_password); "
                      "HTC-Grid's username, password and AWS clients are not used")
        storage = str(config.get("grid_storage_service", "REDIS")).upper()
        if storage not in STORAGE_SERVICES:
            raise ValueError(f"client_config_data['grid_storage_service'] {storage!r} is not one of "
                             f"{', '.join(STORAGE_SERVICES)}")
        if storage != "REDIS":
            _log_once(logging.INFO, "grid_storage_service %s: gridop keeps task payloads in its Redis data plane "
                      "(no S3 copy)", storage)
        self.redis_url = redis_url_of(config)
        self.poll_interval = float(
            config.get("results_poll_interval_sec", config.get("dynamodb_results_pull_interval_sec", 0.5))
        )
        self.max_payload_bytes = int(config.get("max_payload_bytes", DEFAULT_MAX_PAYLOAD))
        self.retry_policy = RetryPolicy(
            max_retries=int(config.get("max_retries", 3)),
            backoff_seconds=float(config.get("retry_backoff_sec", 1.0)),
        )
        self.session_prefix = config.get("session_prefix")
        self.pool = str(config.get("pool") or "") if "pool" in config else "default"
        self.namespace = str(config.get("namespace") or default_namespace())
        prefix = str(config.get("key_prefix", f"gridop:{self.namespace}"))
        budget = float(config.get("redis_outage_budget_sec", DEFAULT_OUTAGE_BUDGET))
        if redis_custom_connection is not None and not isinstance(redis_custom_connection, aioredis.Redis):
            raise ValueError("redis_custom_connection must be a redis.asyncio.Redis client")
        redis = redis_custom_connection if redis_custom_connection is not None else (
            connect(self.redis_url, outage_budget=budget))
        self._store_ = TaskStore(redis, prefix=prefix)
        log.info("gridop connector ready: data plane %s, namespace %s", address_of(self.redis_url), self.namespace)

    @property
    def store(self) -> TaskStore:
        return self._store

    @property
    def _store(self) -> TaskStore:
        if self._store_ is None:
            raise RuntimeError("the connector is not configured: call init(config) first (or pass the config "
                               "to the constructor)")
        return self._store_

    async def close(self) -> None:
        if self._store_ is not None:
            await self._store_.close()

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

        Without a `session_id`, the session gets a UUID and goes to the namespace's worker pool
        (the TaskPool named by the `pool` setting, `default` unless configured): on a cluster a
        plain `send()` runs without a TaskBatch. A named session waits for its own TaskBatch.
        """
        store = self._store  # not configured yet: says so
        payloads = encode_tasks(tasks_list, self.max_payload_bytes)
        if session_id is not None:
            sid = _validate_session_id(session_id)
        elif self.session_prefix:
            sid = _validate_session_id(f"{self.session_prefix}-{uuid.uuid4().hex[:12]}", "session_prefix")
        else:
            sid = str(uuid.uuid4())  # a UUID, as HTC-Grid's session ids are
        log.info("sending %d tasks to session %s", len(payloads), sid)
        if append:
            appended = await store.append(sid, payloads)
            if appended is not None:
                indices, position = appended
                self._positions[sid] = position
                return {"session_id": sid, "task_ids": [task_id(sid, i) for i in indices]}
        start = await store.create(sid, payloads, self.retry_policy)
        if start < len(payloads):
            await store.submit(sid, payloads, start)
        if session_id is None and self.pool:
            # No session named: the namespace's worker pool (TaskPool `pool`) runs it, as one
            # deployment of HTC-Grid agents serves every session.
            await store.pool_join(self.pool, sid)
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

    async def get_results(self, submission_response: Mapping[str, Any], timeout_sec: float = 0, *,
                          wait: bool = True) -> dict[str, Any]:
        """Wait until every task of the submission is terminal, or `timeout_sec` passes; report them.

        As in HTC-Grid, `timeout_sec=0` (the default) waits as long as it takes. `wait=False`
        reports the tasks that are terminal now, without waiting."""
        sid, indices = self._submission(submission_response)
        timeout = float(timeout_sec)
        deadline = time.monotonic() + (0.0 if not wait else timeout if timeout > 0 else math.inf)
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

        As in HTC-Grid, failed and cancelled tasks carry the placeholder `read_from_dataplane`;
        gridop adds `metadata.errors` (task id -> the error of its last attempt) and
        `metadata.error_kinds` (what that attempt was blamed on: application, timeout, or
        infrastructure)."""
        shaped: dict[str, Any] = {
            "finished": [], "finished_OUTPUT": [], "failed": [], "failed_OUTPUT": [],
            "cancelled": [], "cancelled_OUTPUT": [],
        }
        kinds: dict[str, str] = {}
        errors: dict[str, str] = {}
        for index, (state, payload, kind) in zip(indices, report):
            tid = task_id(sid, index)
            if state == TaskState.FINISHED:
                shaped["finished"].append(tid)
                shaped["finished_OUTPUT"].append(decode_text(payload) if payload else "")
            elif state == TaskState.FAILED:
                shaped["failed"].append(tid)
                shaped["failed_OUTPUT"].append(READ_FROM_DATAPLANE)
                errors[tid] = payload.decode() if payload else ""
                kinds[tid] = kind or "application"
            elif state == TaskState.CANCELLED:
                shaped["cancelled"].append(tid)
                shaped["cancelled_OUTPUT"].append(READ_FROM_DATAPLANE)
        shaped["metadata"] = {
            "tasks_in_response": len(shaped["finished"]) + len(shaped["failed"]) + len(shaped["cancelled"]),
            "errors": errors,
            "error_kinds": kinds,
        }
        log.info("session %s: %d of %d tasks in response", sid, shaped["metadata"]["tasks_in_response"], len(indices))
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
            # HTC-Grid's keys: a task waiting to be retried is pending a new attempt.
            result[sid] = {
                "cancelled_pending": counts["pending"] + counts["retrying"],
                "cancelled_processing": counts["processing"],
                "total_cancelled_tasks": sum(counts.values()),
            }
            log.info("cancelled %d tasks of session %s", result[sid]["total_cancelled_tasks"], sid)
        return result


class GridConnector:
    """The synchronous HTC-Grid connector (for scripts and notebooks without an event loop).

    Both of HTC-Grid's forms work: `GridConnector(config)`, and `GridConnector()` followed by
    `init(config, username=..., password=...)`."""

    def __init__(self, client_config_data: Mapping[str, Any] | None = None):
        try:  # the connector owns its loop, so it can pick the faster one
            import uvloop

            self._loop = uvloop.new_event_loop()
        except ImportError:
            self._loop = asyncio.new_event_loop()
        self._async = AsyncGridConnector(client_config_data)

    def init(self, agent_config_data: Mapping[str, Any], username: str = "", password: str = "",
             cognitoidp_client: Any = None, s3_custom_resource: Any = None, redis_custom_connection: Any = None) -> None:
        self._async.init(agent_config_data, username, password, cognitoidp_client, s3_custom_resource,
                         redis_custom_connection)

    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    def authenticate(self) -> None:
        self._run(self._async.authenticate())

    def send(self, tasks_list: list[dict[str, Any]], session_id: str | None = None) -> dict[str, Any]:
        return self._run(self._async.send(tasks_list, session_id))

    def get_results(self, submission_response: Mapping[str, Any], timeout_sec: float = 0, *,
                    wait: bool = True) -> dict[str, Any]:
        return self._run(self._async.get_results(submission_response, timeout_sec, wait=wait))

    def cancel_sessions(self, session_ids: list[str]) -> dict[str, dict[str, int]]:
        return self._run(self._async.cancel_sessions(session_ids))

    def close(self) -> None:
        self._run(self._async.close())
        self._loop.close()

    def __enter__(self) -> GridConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
