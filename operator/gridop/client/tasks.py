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
import collections
import getpass
import itertools
import logging
import math
import os
import re
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from ..tasks.codec import decode_text
from ..tasks.connection import address_of, connect
from ..tasks.states import TaskState
from ..tasks.store import (
    SUBMIT_CHUNK,
    BatchClosed,
    Report,
    RetryPolicy,
    TaskStore,
    TerminalEvent,
    encode_task,
    encode_tasks,
    key_prefix,
    parse_task_id,
    task_id,
)

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
    "redis_outage_budget_sec", "pool", "owner", "priority", "fast_lane",
})
# HTC-Grid's data-plane storage choices. gridop's data plane is Redis; S3 copies are not made.
STORAGE_SERVICES = ("REDIS", "S3+REDIS", "S3")
DEFAULT_OUTAGE_BUDGET = 120.0  # seconds a call waits through a Redis restart or failover before giving up
SESSION_ID = re.compile(r"^[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?$")
DEFAULT_MAX_PAYLOAD = 1024 * 1024
READ_FROM_DATAPLANE = "read_from_dataplane"  # HTC-Grid's placeholder in failed_OUTPUT and cancelled_OUTPUT
_logged: set[str] = set()  # what this process has already said about its configuration

# HTC-Grid's module constants, for programs that read them.
URLOPEN_LAMBDA_INVOKE_TIMEOUT_SEC = 120
TASK_TIMEOUT_SEC = 3600
RETRY_COUNT = 5
TOKEK_REFRESH_INTERVAL_SEC = 200  # (sic: HTC-Grid's name)


def get_safe_session_id() -> str:
    """A fresh session id, as HTC-Grid's function gives: a UUID (random here, not HTC-Grid's
    MAC-bearing uuid1), valid as a gridop session id."""
    return str(uuid.uuid4())


def _log_once(level: int, message: str, *args: Any) -> None:
    text = message % args
    if text not in _logged:
        _logged.add(text)
        log.log(level, text)


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's arbitrary user)
        return "anonymous"


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


class UnknownSession(ValueError):
    """No session of that id in the data plane (never sent, another namespace, or its results expired)."""


class AsyncGridConnector:
    """The HTC-Grid connector for asyncio. Configure it in the constructor or, as HTC-Grid's
    `AWSConnector()` is, with no arguments and then `init(config, username=..., password=...)`."""

    TRACKED = 10_000  # sends whose start in the event stream is remembered (older ones read it from the top)

    def __init__(self, client_config_data: Mapping[str, Any] | None = None):
        self._store_: TaskStore | None = None
        # Where each send's results begin in its session's terminal-event stream, by (session, first
        # task index): get_results() for that send follows the stream from there, however many sends
        # came after it.
        self._starts: collections.OrderedDict[tuple[str, int], str] = collections.OrderedDict()
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
        # Who the pool's fair share counts these sessions against, and their priority there.
        self.owner = str(config.get("owner") or urllib.parse.urlsplit(self.redis_url).username or _login())
        if "/" in self.owner:
            raise ValueError(f"client_config_data['owner'] {self.owner!r} must not contain '/'")
        try:
            self.priority = int(config.get("priority", 0))
        except (TypeError, ValueError):
            raise ValueError(f"client_config_data['priority'] {config.get('priority')!r} must be an integer "
                             "(higher runs first)") from None
        self.namespace = str(config.get("namespace") or default_namespace())
        prefix = str(config.get("key_prefix", key_prefix(self.namespace)))
        budget = float(config.get("redis_outage_budget_sec", DEFAULT_OUTAGE_BUDGET))
        if redis_custom_connection is not None and not isinstance(redis_custom_connection, aioredis.Redis):
            raise ValueError("redis_custom_connection must be a redis.asyncio.Redis client")
        fast_lane = config.get("fast_lane")  # None: GRIDOP_FAST_LANE (default on)
        redis = redis_custom_connection if redis_custom_connection is not None else (
            connect(self.redis_url, outage_budget=budget, fast_lane=fast_lane))
        self._store_ = TaskStore(redis, prefix=prefix, fast_lane=fast_lane)
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

    def _started_at(self, sid: str, first: int, position: str) -> None:
        """Remember where the send whose first task is `first` begins in the event stream."""
        self._starts[sid, first] = position
        if len(self._starts) > self.TRACKED:
            self._starts.popitem(last=False)

    def _start_of(self, sid: str, indices: Sequence[int]) -> str:
        """Where a send's results begin in its session's event stream (from the top if not known)."""
        return self._starts.get((sid, indices[0]), "0-0") if len(indices) else "0-0"

    async def __aenter__(self) -> AsyncGridConnector:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def authenticate(self) -> None:
        """Check that the data plane is reachable (gridop authenticates with Redis credentials in the URL)."""
        await self._store.redis.ping()

    async def send(
        self, tasks_list: Iterable[dict[str, Any]], session_id: str | None = None, *, append: bool = False,
        priority: int | None = None, in_pool: bool | None = None,
    ) -> dict[str, Any]:
        """Submit tasks; returns {'session_id', 'task_ids'} with ids in submission order.

        A list (or tuple) is validated and encoded whole before anything is written. With a
        client-supplied `session_id`, sending the same list again is idempotent: it returns the same
        task ids and resumes an interrupted send, even when several clients send it at once.
        Sending different tasks under an id already in use raises ValueError; with `append=True`,
        the tasks are added to that session instead (a long-lived batch; a cancelled one refuses them).

        Any other iterable (a generator of a million tasks, say) is streamed: encoded and written
        5,000 at a time, so the client's memory stays flat, and workers start on the first chunk
        while the rest is still being sent. Its `task_ids` is a lazy sequence (`TaskIds`). A task
        that cannot be encoded stops the send with ValueError and cancels what was sent of it.

        Without a `session_id`, the session gets a UUID and goes to the namespace's worker pool
        (the TaskPool named by the `pool` setting, `default` unless configured): on a cluster a
        plain `send()` runs without a TaskBatch. A named session waits for its own TaskBatch.
        `priority` (default: the `priority` setting, 0) orders sessions in a pool: higher first.
        `in_pool=True` sends a session with an id of its own to the pool all the same (HTC-Grid's
        `submit`). An empty list makes an empty session, as in HTC-Grid: its results are there at once.
        """
        store = self._store  # not configured yet: says so
        streamed = not isinstance(tasks_list, list | tuple)
        if streamed and (isinstance(tasks_list, str | bytes | Mapping) or not isinstance(tasks_list, Iterable)):
            raise ValueError(f"tasks_list must be a list of dicts (or an iterable of them), got "
                             f"{type(tasks_list).__name__}")
        payloads = [] if streamed or not tasks_list else encode_tasks(tasks_list, self.max_payload_bytes)
        if session_id is not None:
            sid = _validate_session_id(session_id)
        elif self.session_prefix:
            sid = _validate_session_id(f"{self.session_prefix}-{uuid.uuid4().hex[:12]}", "session_prefix")
        else:
            sid = str(uuid.uuid4())  # a UUID, as HTC-Grid's session ids are
        pool = self.pool if (session_id is None if in_pool is None else in_pool) else ""
        priority = self.priority if priority is None else int(priority)
        if streamed:
            return await self._send_stream(sid, iter(tasks_list), append=append, pool=pool, priority=priority)
        log.info("sending %d tasks to session %s", len(payloads), sid)
        if not payloads:
            if not append:
                await store.create(sid, [], self.retry_policy)
            return {"session_id": sid, "task_ids": []}
        if append:
            appended = await store.append(sid, payloads)
            if appended is not None:
                indices, position = appended
                self._started_at(sid, indices[0], position)
                return {"session_id": sid, "task_ids": [task_id(sid, i) for i in indices]}
        start = await store.create(sid, payloads, self.retry_policy)
        if start < len(payloads):
            await store.submit(sid, payloads, start)
        if pool:
            # No session named: the namespace's worker pool (TaskPool `pool`) runs it, as one
            # deployment of HTC-Grid agents serves every session.
            await store.pool_join(pool, sid, owner=self.owner, priority=priority)
        return {"session_id": sid, "task_ids": [task_id(sid, i) for i in range(len(payloads))]}

    async def _send_stream(self, sid: str, tasks: Iterator[Any], *, append: bool, pool: str,
                           priority: int) -> dict[str, Any]:
        """Stream tasks in chunks: each chunk is encoded while the previous one is being written."""
        store = self._store
        appending = append and await store.exists(sid)
        ranges: list[range] = []
        sent = 0  # tasks taken from the iterable so far
        cursor = 0  # where the stream's next chunk goes
        writing: asyncio.Future[Any] | None = None
        try:
            while True:
                chunk = [encode_task(task, sent + k, self.max_payload_bytes)
                         for k, task in enumerate(itertools.islice(tasks, SUBMIT_CHUNK))]
                if writing is not None:
                    await writing
                if not chunk:
                    break
                if sent == 0 and not appending:
                    await store.create_stream(sid, self.retry_policy, uuid.uuid4().hex)
                if appending:
                    writing = asyncio.ensure_future(self._append_chunk(sid, chunk, ranges))
                else:
                    ranges.append(range(cursor, cursor + len(chunk)))
                    writing = asyncio.ensure_future(self._submit_chunk(sid, cursor, chunk, pool, priority, first=sent == 0))
                    cursor += len(chunk)
                sent += len(chunk)
                await asyncio.sleep(0)  # let the write go out before encoding the next chunk
        except ValueError as exc:
            if writing is not None and not writing.done():
                await asyncio.gather(writing, return_exceptions=True)
            if sent and not appending:
                await store.cancel(sid)
                raise ValueError(f"{exc} (session {sid}: the {sent} tasks sent before it were cancelled)") from exc
            raise
        if not sent:
            if not appending:
                await store.create(sid, [], self.retry_policy)  # an empty session, as for an empty list
            return {"session_id": sid, "task_ids": TaskIds(sid, [])}
        if not appending:
            await store.close_stream(sid)
            self._starts.pop((sid, 0), None)  # a new session: its stream starts empty
        log.info("streamed %d tasks to session %s", sent, sid)
        return {"session_id": sid, "task_ids": TaskIds(sid, _merge(ranges))}

    async def _submit_chunk(self, sid: str, position: int, chunk: list[bytes], pool: str, priority: int, *,
                            first: bool) -> None:
        """Write a chunk, then (in a pool) mark the session ready. Ready strictly after the tasks are
        queued: a worker's idle check removes the session from the ready set and then looks at the
        queue, so whichever of the two runs first, the other sees the tasks."""
        await self._store.submit_chunk(sid, position, chunk)
        if not pool:
            return
        if first:
            await self._store.pool_join(pool, sid, owner=self.owner, priority=priority)
        else:
            await self._store.pool_ready(pool, sid, owner=self.owner, priority=priority)

    async def _append_chunk(self, sid: str, chunk: list[bytes], ranges: list[range]) -> None:
        appended = await self._store.append(sid, chunk)
        if appended is None:
            raise BatchClosed(f"session {sid!r} disappeared while tasks were being appended to it")
        indices, position = appended
        if not ranges:
            self._started_at(sid, indices[0], position)
        ranges.append(range(indices[0], indices[-1] + 1))

    @staticmethod
    def _submission(submission_response: Mapping[str, Any]) -> tuple[str, Sequence[int]]:
        """(session id, task indices): a range when they are contiguous, as a send's usually are."""
        if not isinstance(submission_response, Mapping) or "session_id" not in submission_response:
            raise ValueError("submission_response must be the dict send() returned (with 'session_id' and 'task_ids')")
        sid = _validate_session_id(submission_response["session_id"], "submission_response['session_id']")
        ids = submission_response.get("task_ids")
        if isinstance(ids, TaskIds):
            if ids.session_id != sid:
                raise ValueError(f"task ids of session {ids.session_id!r} do not belong to session {sid!r}")
            return sid, ids.indices()
        if not isinstance(ids, list | tuple):
            raise ValueError("submission_response['task_ids'] must be a list")
        indices = []
        for tid in ids:
            owner, index = parse_task_id(str(tid))
            if owner != sid:
                raise ValueError(f"task id {tid!r} does not belong to session {sid!r}")
            indices.append(index)
        if indices and indices == list(range(indices[0], indices[0] + len(indices))):
            return sid, range(indices[0], indices[0] + len(indices))
        return sid, indices

    async def get_results(self, submission_response: Mapping[str, Any], timeout_sec: float = 0, *,
                          wait: bool = True) -> dict[str, Any]:
        """Wait until every task of the submission is terminal, or `timeout_sec` passes; report them.

        As in HTC-Grid, `timeout_sec=0` (the default) waits as long as it takes. `wait=False`
        reports the tasks that are terminal now, without waiting.

        The wait follows the batch's terminal-event stream (one entry per worker report, not per
        task), so it costs the data plane nothing per poll; each result is then read once (small
        outputs travel in the events and need no read at all)."""
        sid, indices = self._submission(submission_response)
        timeout = float(timeout_sec)
        deadline = time.monotonic() + (0.0 if not wait else timeout if timeout > 0 else math.inf)
        position = self._start_of(sid, indices)
        tracker = _Tracker(indices, keep_outputs=True)
        await self._require(sid)
        while tracker.remaining:
            remaining = deadline - time.monotonic()
            block = int(max(1, min(remaining, self.poll_interval) * 1000)) if remaining > 0 else None
            position, events = await self._store.events(sid, position, block_ms=block)
            for event in events:
                tracker.apply(event)
            if not events and remaining <= 0:
                break
            if not events:
                await self._require(sid)  # a quiet poll: make sure there is still something to wait for
        return self._shape(sid, *await tracker.report(self._store, sid))

    async def _require(self, sid: str) -> None:
        """Waiting on a session that is not there would never end: say so instead."""
        if not await self._store.exists(sid):
            raise UnknownSession(
                f"no session {sid!r} in the data plane (namespace {self.namespace!r}): check the session id, the "
                "namespace and redis_url (a finished session's results are kept for its retention, then expire)")

    @staticmethod
    def _shape(sid: str, indices: Sequence[int], report: list[Report]) -> dict[str, Any]:
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
        finished, finished_output = shaped["finished"], shaped["finished_OUTPUT"]
        for index, (state, payload, kind) in zip(indices, report, strict=False):
            if state == TaskState.FINISHED:
                finished.append(f"{sid}_{index}")
                finished_output.append(decode_text(payload) if payload else "")
            elif state == TaskState.FAILED:
                tid = task_id(sid, index)
                shaped["failed"].append(tid)
                shaped["failed_OUTPUT"].append(READ_FROM_DATAPLANE)
                errors[tid] = payload.decode() if payload else ""
                kinds[tid] = kind or "application"
            elif state == TaskState.CANCELLED:
                shaped["cancelled"].append(task_id(sid, index))
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
        """Yield {'task_id', 'state', 'output' | 'error'} for each task as it reaches a terminal state.

        Memory stays flat whatever the submission's size (a byte per task to know which ones are
        done): results are yielded as each worker report arrives, and each is read once."""
        async for batch in self.iter_result_batches(submission_response, timeout_sec):
            for item in batch:
                yield item

    async def iter_result_batches(
        self, submission_response: Mapping[str, Any], timeout_sec: float | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """As iter_results, a list at a time: the tasks one worker report ended."""
        sid, indices = self._submission(submission_response)
        tracker = _Tracker(indices, keep_outputs=False)
        deadline = None if timeout_sec is None else time.monotonic() + timeout_sec
        position = self._start_of(sid, indices)
        await self._require(sid)
        while tracker.remaining:
            block = 1000 if deadline is None else int(max(1, min(1.0, deadline - time.monotonic()) * 1000))
            position, events = await self._store.events(sid, position, block_ms=block)
            if not events:
                await self._require(sid)
            for event in events:
                ended = tracker.apply(event, collect=True)
                finished = [i for i, state, output in ended if state == TaskState.FINISHED and output is None]
                failed = [i for i, state, _ in ended if state == TaskState.FAILED]
                outputs = dict(zip(finished, await self._store.outputs(sid, finished), strict=False)) if finished else {}
                errors = dict(zip(failed, await self._store.errors(sid, failed), strict=False)) if failed else {}
                batch = []
                for index, state, output in ended:
                    item: dict[str, Any] = {"task_id": f"{sid}_{index}", "state": state.value}
                    if state == TaskState.FINISHED:
                        payload = output if output is not None else outputs.get(index)
                        item["output"] = decode_text(payload) if payload else None
                    elif state == TaskState.FAILED:
                        item["error"], item["error_kind"] = errors.get(index, (None, None))
                    batch.append(item)
                if batch:
                    yield batch
            if deadline is not None and time.monotonic() >= deadline:
                return

    # -- the rest of HTC-Grid's connector, for programs that call it -------------------------------

    def refresh(self) -> None:
        """HTC-Grid refreshes its Cognito token here; gridop's data-plane credentials do not expire."""

    def generate_user_task_json(self, tasks_list: list[Any] | None = None) -> dict[str, Any]:
        """HTC-Grid's submission object for `tasks_list`, with a fresh session id (what `submit` takes)."""
        now_ms = int(time.time() * 1000)
        return {
            "session_id": get_safe_session_id(),
            "scheduler_data": {"task_timeout_sec": TASK_TIMEOUT_SEC, "retry_count": RETRY_COUNT,
                               "tstamp_api_grid_connector_ms": 0, "tstamp_agent_read_from_sqs_ms": 0},
            "stats": {"stage1_grid_api_01_task_creation_tstmp": {"label": " ", "tstmp": now_ms}},
            "tasks_list": {"tasks": list(tasks_list or [])},
        }

    async def submit(self, jobs: Mapping[str, Any]) -> dict[str, Any]:
        """Send a submission object (`generate_user_task_json`'s) to the pool, under its session id."""
        if not isinstance(jobs, Mapping) or not isinstance(jobs.get("tasks_list"), Mapping):
            raise ValueError("jobs must be the dict generate_user_task_json() returned (with 'tasks_list')")
        sid = jobs.get("session_id")
        return await self.send(list(jobs["tasks_list"].get("tasks") or []),
                               None if sid in (None, "None") else str(sid), in_pool=True)

    async def invoke_get_results_lambda(self, session_id: Mapping[str, Any] | str) -> dict[str, Any]:
        """The results of a whole session as they stand now (HTC-Grid's get-results call, one poll)."""
        sid = _validate_session_id(session_id.get("session_id") if isinstance(session_id, Mapping) else session_id)
        await self._require(sid)
        total = int((await self._store.meta(sid)).get("total", 0))
        return await self.get_results({"session_id": sid, "task_ids": TaskIds(sid, [range(total)])}, wait=False)

    async def cancel(self, session_id: str) -> dict[str, int]:
        """Cancel one session (HTC-Grid declares this and does nothing): its `cancel_sessions` entry."""
        return (await self.cancel_sessions([session_id]))[session_id]

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


class TaskIds(Sequence[str]):
    """The task ids of a streamed submission, made on demand (a million ids need not be held).

    A read-only sequence of `<session_id>_<index>` strings: index it, slice it, iterate it, compare
    it to a list, or `list()` it."""

    def __init__(self, session_id: str, ranges: list[range]):
        self.session_id = session_id
        self._ranges = ranges
        self._len = sum(len(r) for r in ranges)

    def indices(self) -> Sequence[int]:
        if len(self._ranges) == 1:
            return self._ranges[0]
        return [i for r in self._ranges for i in r]

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(self._len))]
        if k < 0:
            k += self._len
        if not 0 <= k < self._len:
            raise IndexError("task id index out of range")
        for r in self._ranges:
            if k < len(r):
                return f"{self.session_id}_{r[k]}"
            k -= len(r)
        raise IndexError("task id index out of range")

    def __iter__(self) -> Iterator[str]:
        for r in self._ranges:
            for i in r:
                yield f"{self.session_id}_{i}"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TaskIds):
            return (self.session_id, self._ranges) == (other.session_id, other._ranges)
        if isinstance(other, list | tuple):
            return len(other) == self._len and all(a == b for a, b in zip(self, other, strict=False))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TaskIds({self.session_id!r}, {self._len} tasks)"


def _merge(ranges: list[range]) -> list[range]:
    merged: list[range] = []
    for r in ranges:
        if merged and merged[-1].stop == r.start:
            merged[-1] = range(merged[-1].start, r.stop)
        else:
            merged.append(r)
    return merged


_OPEN, _FINISHED, _FAILED, _CANCELLED = 0, 1, 2, 3
_STATES = {_FINISHED: TaskState.FINISHED, _FAILED: TaskState.FAILED, _CANCELLED: TaskState.CANCELLED}


class _Tracker:
    """Which tasks of a submission have ended, from the batch's terminal events: a byte per task."""

    def __init__(self, indices: Sequence[int], *, keep_outputs: bool):
        self.indices = indices
        self.size = len(indices)
        self.base = indices.start if isinstance(indices, range) and indices.step == 1 else None
        self.slot = None if self.base is not None else {i: k for k, i in enumerate(indices)}
        self.state = bytearray(self.size)
        self.outputs: list[bytes | None] | None = [None] * self.size if keep_outputs else None
        self.remaining = self.size

    def _slots(self, indices: list[int]) -> Iterator[tuple[int, int]]:
        if self.base is not None:
            base, size = self.base, self.size
            for j, i in enumerate(indices):
                k = i - base
                if 0 <= k < size:
                    yield j, k
        else:
            slot = self.slot
            assert slot is not None  # (no base: the slots were made in __init__)
            for j, i in enumerate(indices):
                found = slot.get(i)
                if found is not None:
                    yield j, found

    def apply(self, event: TerminalEvent, *, collect: bool = False) -> list[tuple[int, TaskState, bytes | None]]:
        """Mark what `event` ended; returns (index, state, carried output) of each newly ended task
        when `collect` is set."""
        ended: list[tuple[int, TaskState, bytes | None]] = []
        state, outputs, carried = self.state, self.outputs, event.outputs
        for j, k in self._slots(event.finished):
            if not state[k]:
                state[k] = _FINISHED
                self.remaining -= 1
                output = carried[j] if carried is not None else None
                if outputs is not None:
                    outputs[k] = output
                if collect:
                    ended.append((event.finished[j], TaskState.FINISHED, output))
        for j, k in self._slots(event.failed):
            if not state[k]:
                state[k] = _FAILED
                self.remaining -= 1
                if collect:
                    ended.append((event.failed[j], TaskState.FAILED, None))
        if event.cancelled:
            for k in range(self.size):
                if not state[k]:
                    state[k] = _CANCELLED
                    if collect:
                        ended.append((self.indices[k], TaskState.CANCELLED, None))
            self.remaining = 0
        return ended

    async def report(self, store: TaskStore, sid: str) -> tuple[list[int], list[Report]]:
        """The ended tasks, in submission order, with outputs and errors (each read once, in chunks;
        outputs that travelled in the events need no read)."""
        outputs = self.outputs or [None] * self.size
        ended = [k for k in range(self.size) if self.state[k]]
        unread = [self.indices[k] for k in ended if self.state[k] == _FINISHED and outputs[k] is None]
        failed = [self.indices[k] for k in ended if self.state[k] == _FAILED]
        read = dict(zip(unread, await store.outputs(sid, unread), strict=False)) if unread else {}
        errors = dict(zip(failed, await store.errors(sid, failed), strict=False)) if failed else {}
        indices: list[int] = []
        report: list[Report] = []
        for k in ended:
            index, code = self.indices[k], self.state[k]
            indices.append(index)
            if code == _FINISHED:
                output = outputs[k]
                report.append((TaskState.FINISHED, output if output is not None else read.get(index), None))
            elif code == _FAILED:
                message, kind = errors.get(index, (None, None))
                report.append((TaskState.FAILED, (message or "").encode() or None, kind))
            else:
                report.append((TaskState.CANCELLED, None, None))
        return indices, report


class GridConnector:
    """The synchronous HTC-Grid connector (for scripts and notebooks without an event loop).

    Both of HTC-Grid's forms work: `GridConnector(config)`, and `GridConnector()` followed by
    `init(config, username=..., password=...)`."""

    def __init__(self, client_config_data: Mapping[str, Any] | None = None):
        try:  # the connector owns its loop, so it can pick the faster one
            import uvloop

            self._loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
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

    def send(self, tasks_list: Iterable[dict[str, Any]], session_id: str | None = None, *, append: bool = False,
             priority: int | None = None) -> dict[str, Any]:
        return self._run(self._async.send(tasks_list, session_id, append=append, priority=priority))

    def iter_results(self, submission_response: Mapping[str, Any], timeout_sec: float | None = None
                     ) -> Iterator[dict[str, Any]]:
        """Each task's result as it ends (see AsyncGridConnector.iter_results)."""
        batches = self._async.iter_result_batches(submission_response, timeout_sec).__aiter__()
        while True:
            try:
                yield from self._run(batches.__anext__())  # one trip into the loop per worker report
            except StopAsyncIteration:
                return

    def get_results(self, submission_response: Mapping[str, Any], timeout_sec: float = 0, *,
                    wait: bool = True) -> dict[str, Any]:
        return self._run(self._async.get_results(submission_response, timeout_sec, wait=wait))

    def cancel_sessions(self, session_ids: list[str]) -> dict[str, dict[str, int]]:
        return self._run(self._async.cancel_sessions(session_ids))

    def refresh(self) -> None:
        self._async.refresh()

    def generate_user_task_json(self, tasks_list: list[Any] | None = None) -> dict[str, Any]:
        return self._async.generate_user_task_json(tasks_list)

    def submit(self, jobs: Mapping[str, Any]) -> dict[str, Any]:
        return self._run(self._async.submit(jobs))

    def invoke_get_results_lambda(self, session_id: Mapping[str, Any] | str) -> dict[str, Any]:
        return self._run(self._async.invoke_get_results_lambda(session_id))

    def cancel(self, session_id: str) -> dict[str, int]:
        return self._run(self._async.cancel(session_id))

    def close(self) -> None:
        self._run(self._async.close())
        self._loop.close()

    def __enter__(self) -> GridConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
