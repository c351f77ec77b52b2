"""The Redis data plane of one or many task batches (asyncio, redis-py with hiredis).

Layout for batch `sid` (every key carries the `{sid}` hash tag):

    gridop:{sid}:meta        hash   total, submitted, cursor, digest, max_attempts, max_infra, backoff*,
                                    policy_source, cancelled, suspended, created
    gridop:{sid}:q           list   pending task indices, in order
    gridop:{sid}:q1          list   pending tasks whose worker died under them: claimed one at a time
    gridop:{sid}:st|att|iatt hash   index -> state | attempts | attempts lost to infrastructure
    gridop:{sid}:in|out|err  hash   index -> base64 JSON input | base64 JSON output | error message
    gridop:{sid}:ek          hash   index -> kind of the last failed attempt (application|timeout|infrastructure)
    gridop:{sid}:apx         hash   append id -> first index it was given (appends are replay-safe)
    gridop:{sid}:ts:<stage>  hash   index -> unix time (submitted, queued, claimed, started, finished)
    gridop:{sid}:lease       zset   index -> lease deadline, while processing
    gridop:{sid}:own         hash   index -> claim token (worker:attempt)
    gridop:{sid}:retry       zset   index -> time it may run again
    gridop:{sid}:n           hash   state -> count, and e:<kind> -> failed attempts of that kind
    gridop:{sid}:done        stream one entry per task reaching a terminal state (i, s)
    gridop:{sid}:wake        list   a nudge for idle workers when work arrives

Columns rather than a hash per task: a batch of N tasks is a few commands, not N.

A worker pool (a TaskPool) serves every session sent to it; its keys carry the `{pool:<name>}` tag:

    gridop:{pool:<p>}:sessions  zset  session id -> time it joined, until all its tasks are terminal
    gridop:{pool:<p>}:ready     set   sessions that may have queued tasks (a hint: a claim confirms it)
    gridop:{pool:<p>}:wake      list  a nudge for the pool's idle workers when work arrives
    gridop:{pool:<p>}:sweeper   str   which worker sweeps the pool's sessions this round

Pool bookkeeping is in commands of its own, never inside a session's scripts: a session's keys
and its pool's may live on different Redis Cluster shards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis

from . import scripts
from .connection import connect
from .codec import PayloadError, decode, encode
from .states import ERROR_KINDS, STAGES, TaskState

SUBMIT_CHUNK = 5000
ROLES = ("meta", "q", "q1", "st", "att", "iatt", "ek", "apx", "lease", "own", "in", "out", "err", "n", "retry", "done",
         "wake", "idle", *(f"ts:{stage}" for stage in STAGES))


def task_id(sid: str, index: int | str) -> str:
    """`<session_id>_<index>`, as HTC-Grid names tasks (`_` never occurs in a session id)."""
    return f"{sid}_{index}"


def parse_task_id(tid: str) -> tuple[str, int]:
    sid, sep, index = tid.rpartition("_")
    if not sep:
        sid, sep, index = tid.rpartition("-")  # ids handed out before 0.1.0 used '-'
    if not sep or not sid or not index.isdigit():
        raise ValueError(f"task id {tid!r} is not of the form <session_id>_<index>")
    return sid, int(index)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How failed attempts are retried. `max_retries` counts application failures (the handler
    raised or timed out); attempts lost to infrastructure (the worker died, its lease lapsed) have
    their own budget, `max_infrastructure_retries`, so a crashing neighbour never spends them."""

    max_retries: int = 3
    backoff_seconds: float = 1.0
    backoff_multiplier: float = 2.0
    backoff_max_seconds: float = 60.0
    max_infrastructure_retries: int = 3

    def meta_fields(self) -> dict[str, str]:
        """The policy as the data plane stores it (the batch's meta hash)."""
        return {
            "max_attempts": str(self.max_retries + 1), "backoff": _num(self.backoff_seconds),
            "backoff_mult": _num(self.backoff_multiplier), "backoff_max": _num(self.backoff_max_seconds),
            "max_infra": str(self.max_infrastructure_retries),
        }


def _num(value: float) -> str:
    return repr(float(value))


@dataclasses.dataclass
class ClaimedTask:
    index: int
    token: str
    attempt: int
    payload: bytes


@dataclasses.dataclass
class Outcome:
    index: int
    token: str
    outcome: str  # ok | error | fatal
    payload: bytes | str  # base64 output for ok, error message otherwise
    started: float | None = None

    @property
    def failed(self) -> bool:
        return self.outcome != "ok"


@dataclasses.dataclass
class TaskRecord:
    task_id: str
    state: TaskState
    attempts: int
    input: Any
    output: Any
    error: str | None
    error_kind: str | None  # of the last failed attempt
    timestamps: dict[str, float]


# (state, output or error message, error kind) of one task in a collected report.
Report = tuple[TaskState | None, bytes | None, str | None]


class BatchExists(ValueError):
    """The session id already holds different tasks."""


class BatchClosed(ValueError):
    """The batch was cancelled: it takes no more tasks."""


def content_digest(payloads: Sequence[bytes]) -> str:
    """What identifies a submission's content: same tasks in the same order, same digest."""
    h = hashlib.blake2b(digest_size=16)
    for payload in payloads:
        h.update(len(payload).to_bytes(4, "little"))
        h.update(payload)
    return h.hexdigest()


class TaskStore:
    def __init__(self, redis: aioredis.Redis, *, prefix: str = "gridop:default"):
        self.redis = redis
        self.prefix = prefix
        self._scripts = {
            name: redis.register_script(getattr(scripts, name))
            for name in ("CLAIM", "COMPLETE", "HEARTBEAT", "SWEEP", "CANCEL", "APPEND", "COLLECT", "UNIDLE", "CREATE",
                         "SUBMIT")
        }

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "gridop:default", outage_budget: float | None = None,
                 retry_auth: bool = False, **kwargs: Any) -> TaskStore:
        """A store whose commands ride out Redis outages up to `outage_budget` seconds (None: any)."""
        return cls(connect(url, outage_budget=outage_budget, retry_auth=retry_auth, **kwargs), prefix=prefix)

    def clone(self) -> TaskStore:
        """A store with its own connections to the same Redis (for use from another thread's loop)."""
        kwargs = dict(self.redis.connection_pool.connection_kwargs)
        pool = aioredis.ConnectionPool(connection_class=self.redis.connection_pool.connection_class, **kwargs)
        return TaskStore(aioredis.Redis(connection_pool=pool), prefix=self.prefix)

    async def close(self) -> None:
        await self.redis.aclose()

    def key(self, sid: str, role: str) -> str:
        return f"{self.prefix}:{{{sid}}}:{role}"

    def keys(self, sid: str) -> list[str]:
        """What the scripts are given: the meta key; they derive the other keys from it."""
        return [self.key(sid, "meta")]

    # -- submission -----------------------------------------------------------------------

    async def create(self, sid: str, payloads: Sequence[bytes], policy: RetryPolicy) -> int:
        """Declare a batch of these tasks, atomically; returns how many of them were already
        submitted (0 for a new batch; the resume point when the same tasks were sent before).

        Raises BatchExists when the id already holds different tasks.
        """
        digest = content_digest(payloads)
        fields = policy.meta_fields()
        cursor, total = await self._scripts["CREATE"](keys=self.keys(sid), args=[
            len(payloads), digest, time.time(), fields["max_attempts"], fields["backoff"], fields["backoff_mult"],
            fields["backoff_max"], fields["max_infra"],
        ])
        if int(cursor) < 0:
            raise BatchExists(
                f"session {sid!r} already holds {int(total)} different tasks; use a new session id, "
                "or send(..., append=True) to add tasks to it"
            )
        return int(cursor)

    async def submit(self, sid: str, payloads: Sequence[bytes], start: int = 0) -> None:
        """Write the declared tasks from `start` in atomic chunks. Safe to run concurrently with
        another submitter of the same tasks, and to replay: each chunk is written once."""
        position = start
        while position < len(payloads):
            chunk = payloads[position:position + SUBMIT_CHUNK]
            position = int(await self._scripts["SUBMIT"](keys=self.keys(sid), args=[position, time.time(), *chunk]))

    async def append(self, sid: str, payloads: Sequence[bytes]) -> tuple[list[int], str] | None:
        """Add tasks to an existing batch, one script per chunk: (their indices, the terminal-event
        position before them). None if the batch does not exist; BatchClosed if it was cancelled.
        Each chunk carries an id of its own, so a replay after a lost reply appends nothing."""
        indices: list[int] = []
        position = "0-0"
        call = uuid.uuid4().hex
        for lo in range(0, len(payloads), SUBMIT_CHUNK):
            chunk = payloads[lo:lo + SUBMIT_CHUNK]
            reply = await self._scripts["APPEND"](keys=self.keys(sid), args=[time.time(), f"{call}:{lo}", *chunk])
            if int(reply[0]) == -2:
                raise BatchClosed(f"session {sid!r} was cancelled; it takes no more tasks")
            if int(reply[0]) < 0:
                return None
            if lo == 0:
                position = reply[1].decode()
            indices.extend(range(int(reply[0]), int(reply[0]) + len(chunk)))
        return indices, position

    async def collect(self, sid: str, indices: Sequence[int]) -> tuple[str, int, list[Report] | None]:
        """(last terminal-event id, how many of `indices` are terminal, and — once all are — their
        states with output (finished) or error and its kind (failed)). One round trip."""
        reply = await self._scripts["COLLECT"](keys=self.keys(sid), args=list(indices))
        last_id, terminal = reply[0].decode(), int(reply[1])
        if len(reply) == 2:
            return last_id, terminal, None
        report: list[Report] = []
        for j in range(2, len(reply), 2):
            state = TaskState(reply[j].decode()) if reply[j] else None
            if state == TaskState.FAILED:
                kind, _, message = reply[j + 1].partition(b"\x00")
                report.append((state, message, kind.decode()))
            else:
                report.append((state, reply[j + 1] or None, None))
        return last_id, terminal, report

    # -- workers ----------------------------------------------------------------------------

    async def claim(self, sid: str, worker: str, count: int, lease_seconds: float) -> list[ClaimedTask]:
        now = time.time()
        flat = await self._scripts["CLAIM"](keys=self.keys(sid), args=[count, now, now + lease_seconds, worker])
        return [
            ClaimedTask(int(flat[k]), flat[k + 1].decode(), int(flat[k + 2]), flat[k + 3])
            for k in range(0, len(flat), 4)
        ]

    async def register_idle(self, sid: str, worker: str, lease_seconds: float, ttl: float) -> str:
        """Offer this worker for direct handoff of the next appended task; returns the registration."""
        entry = f"{worker}|{lease_seconds}|{time.time() + ttl}"
        await self.redis.rpush(self.key(sid, "idle"), entry)
        return entry

    async def wait_for_work(self, sid: str, worker: str, timeout: float) -> ClaimedTask | None:
        """Block until a task is handed to this worker (returned, already claimed) or the batch's
        wake list is nudged (None: go and claim), or the timeout passes (None)."""
        reply = await self.redis.blpop([self.key(sid, f"inbox:{worker}"), self.key(sid, "wake")], timeout=timeout)
        if reply is None or reply[0].decode().endswith(":wake"):
            return None
        return _inbox_item(reply[1])

    async def unidle(self, sid: str, entry: str) -> ClaimedTask | None:
        """Withdraw a registration; a task handed over meanwhile is returned rather than lost."""
        item = await self._scripts["UNIDLE"](keys=self.keys(sid), args=[entry])
        return _inbox_item(item) if item else None

    async def nudge(self, sid: str) -> None:
        await self.redis.rpush(self.key(sid, "wake"), 1)

    async def complete(self, sid: str, outcomes: Iterable[Outcome]) -> tuple[int, int]:
        """Record outcomes: (applied, stale). Stale results (task reclaimed or cancelled) are dropped."""
        applied, stale, _, _ = await self.complete_and_next(sid, outcomes)
        return applied, stale

    async def complete_and_next(
        self, sid: str, outcomes: Iterable[Outcome], *, worker: str = "", next_count: int = 0,
        lease_seconds: float = 30.0, idle_ttl: float = 0.0,
    ) -> tuple[int, int, str | None, list[ClaimedTask]]:
        """Record outcomes and take the next step in the same round trip: claim up to `next_count`
        more tasks, or (none left, idle_ttl > 0) register for direct handoff.
        Returns (applied, stale, idle registration or None, newly claimed tasks)."""
        args: list[Any] = [time.time(), next_count, worker, lease_seconds, idle_ttl]
        for o in outcomes:
            args += [o.index, o.token, o.outcome, o.payload, "" if o.started is None else o.started]
        reply = await self._scripts["COMPLETE"](keys=self.keys(sid), args=args)
        claimed = [
            ClaimedTask(int(reply[k]), reply[k + 1].decode(), int(reply[k + 2]), reply[k + 3])
            for k in range(3, len(reply), 4)
        ]
        return int(reply[0]), int(reply[1]), reply[2].decode() if reply[2] else None, claimed

    async def heartbeat(self, sid: str, held: Iterable[tuple[int, str]], lease_seconds: float) -> list[int]:
        """Extend the leases of the tasks we hold; returns those we no longer own (cancelled or reclaimed)."""
        args: list[Any] = [time.time() + lease_seconds]
        for index, token in held:
            args += [index, token]
        if len(args) == 1:
            return []
        return [int(i) for i in await self._scripts["HEARTBEAT"](keys=self.keys(sid), args=args)]

    # -- control ----------------------------------------------------------------------------

    async def sweep(self, sid: str, limit: int = 1000) -> dict[str, int]:
        expired, retried, failed, requeued = await self._scripts["SWEEP"](keys=self.keys(sid), args=[time.time(), limit])
        return {"expired": int(expired), "retried": int(retried), "failed": int(failed), "requeued": int(requeued)}

    async def cancel(self, sid: str) -> dict[str, int]:
        pending, retrying, processing = await self._scripts["CANCEL"](keys=self.keys(sid), args=[time.time()])
        return {"pending": int(pending), "retrying": int(retrying), "processing": int(processing)}

    async def set_suspended(self, sid: str, suspended: bool) -> None:
        await self.redis.hset(self.key(sid, "meta"), "suspended", int(suspended))
        if not suspended:
            await self.nudge(sid)

    async def expire(self, sid: str, seconds: int) -> None:
        """Let the batch's keys lapse `seconds` from now (a finished pool session's retention)."""
        pipe = self.redis.pipeline(transaction=False)
        for role in ROLES:
            pipe.expire(self.key(sid, role), seconds)
        await pipe.execute()

    async def done(self, sid: str) -> bool:
        """Whether every task declared is terminal (or the batch was cancelled); False before any task."""
        meta, counts, _ = await self.snapshot(sid)
        if "total" not in meta:
            return False
        if meta.get("cancelled") == "1":
            return True
        active = counts["pending"] + counts["processing"] + counts["retrying"]
        return meta.get("submitted") == meta.get("total") and active == 0

    # -- worker pools -----------------------------------------------------------------------

    def pool_key(self, pool: str, role: str) -> str:
        return f"{self.prefix}:{{pool:{pool}}}:{role}"

    async def pool_join(self, pool: str, sid: str) -> None:
        """Put a session in a pool's hands: its workers will find it, wake up, and claim."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.key(sid, "meta"), "pool", pool)
        pipe.zadd(self.pool_key(pool, "sessions"), {sid: time.time()}, nx=True)
        self._pool_ready(pipe, pool, sid)
        await pipe.execute()

    def _pool_ready(self, pipe: Any, pool: str, sid: str) -> None:
        """Mark a session ready in its pool and wake one idle worker (the wake list stays short)."""
        pipe.sadd(self.pool_key(pool, "ready"), sid)
        pipe.lpush(self.pool_key(pool, "wake"), 1)
        pipe.ltrim(self.pool_key(pool, "wake"), 0, 63)

    async def pool_pick(self, pool: str) -> str | None:
        """A session of the pool that may have queued tasks, at random: every ready session gets an
        equal share of the pool's claims, whatever its size."""
        sid = await self.redis.srandmember(self.pool_key(pool, "ready"))
        return sid.decode() if sid else None

    async def pool_idle(self, pool: str, sid: str) -> None:
        """A claim found nothing: take the session off the ready set, unless tasks arrived meanwhile
        (a submitter adds it back after queueing, so either it or this check sees them)."""
        await self.redis.srem(self.pool_key(pool, "ready"), sid)
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(self.key(sid, "q"))
        pipe.llen(self.key(sid, "q1"))
        pipe.hmget(self.key(sid, "meta"), ["cancelled", "suspended"])
        queued, queued_alone, (cancelled, suspended) = await pipe.execute()
        if queued + queued_alone and cancelled != b"1" and suspended != b"1":
            await self.redis.sadd(self.pool_key(pool, "ready"), sid)

    async def pool_wait(self, pool: str, timeout: float) -> None:
        """Idle: wait until work arrives in the pool (or `timeout` passes)."""
        await self.redis.blpop([self.pool_key(pool, "wake")], timeout=timeout)

    async def pool_sessions(self, pool: str) -> list[str]:
        return [sid.decode() for sid in await self.redis.zrange(self.pool_key(pool, "sessions"), 0, -1)]

    async def pool_sweep(self, pool: str, holder: str, interval: float, retention: int) -> bool:
        """Sweep the pool's sessions, by one worker of the pool per `interval`: due retries and lapsed
        leases back to the queue (and the session back to ready), finished sessions out of the pool,
        their keys kept `retention` seconds. Returns whether this caller swept."""
        lock = await self.redis.set(self.pool_key(pool, "sweeper"), holder, nx=True, px=max(1, int(interval * 1000)))
        if not lock:
            return False
        for sid in await self.pool_sessions(pool):
            moved = await self.sweep(sid)
            if await self.done(sid):
                pipe = self.redis.pipeline(transaction=False)
                pipe.zrem(self.pool_key(pool, "sessions"), sid)
                pipe.srem(self.pool_key(pool, "ready"), sid)
                await pipe.execute()
                await self.expire(sid, retention)
            elif moved["retried"] or moved["requeued"] or moved["expired"]:
                pipe = self.redis.pipeline(transaction=False)
                self._pool_ready(pipe, pool, sid)
                await pipe.execute()
        return True

    async def pool_counts(self, pool: str) -> tuple[int, dict[str, int]]:
        """(sessions in the pool, their tasks per state summed): what the pool's workers are for."""
        sessions = await self.pool_sessions(pool)
        pipe = self.redis.pipeline(transaction=False)
        for sid in sessions:
            pipe.hgetall(self.key(sid, "n"))
        total = {s.value: 0 for s in TaskState}
        for raw in await pipe.execute() if sessions else []:
            for state, n in _counts(raw).items():
                total[state] += n
        return len(sessions), total

    async def delete(self, sid: str) -> int:
        """Remove every key of the batch."""
        inboxes = [k async for k in self.redis.scan_iter(match=self.key(sid, "inbox:*"), count=1000)]
        return int(await self.redis.delete(*(self.key(sid, role) for role in ROLES), *inboxes))

    # -- reading ----------------------------------------------------------------------------

    async def exists(self, sid: str) -> bool:
        """Whether tasks were ever declared under this id (a meta hash holding only a policy the
        operator wrote ahead of the first submission does not count)."""
        return bool(await self.redis.hexists(self.key(sid, "meta"), "total"))

    async def meta(self, sid: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.key(sid, "meta"))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def snapshot(self, sid: str) -> tuple[dict[str, str], dict[str, int], dict[str, int]]:
        """(meta, tasks per state, failed attempts per error kind) read atomically: a submission
        chunk moves meta and counts at once, so a reader must not see one before and the other after."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(self.key(sid, "meta"))
        pipe.hgetall(self.key(sid, "n"))
        raw_meta, raw_counts = await pipe.execute()
        return ({k.decode(): v.decode() for k, v in raw_meta.items()}, _counts(raw_counts),
                _counts(raw_counts, errors=True))

    async def counts(self, sid: str) -> dict[str, int]:
        """Tasks per state."""
        return _counts(await self.redis.hgetall(self.key(sid, "n")))

    async def error_counts(self, sid: str) -> dict[str, int]:
        """Failed attempts per error kind (application, timeout, infrastructure)."""
        return _counts(await self.redis.hgetall(self.key(sid, "n")), errors=True)

    async def set_policy(self, sid: str, policy: RetryPolicy) -> None:
        """Make `policy` the batch's, whoever submits its tasks (the operator, from the TaskBatch)."""
        await self.redis.hset(self.key(sid, "meta"), mapping={**policy.meta_fields(), "policy_source": "taskbatch"})

    async def states(self, sid: str, indices: Sequence[int]) -> list[TaskState | None]:
        if not indices:
            return []
        raw = await self.redis.hmget(self.key(sid, "st"), indices)
        return [TaskState(v.decode()) if v else None for v in raw]

    async def outputs(self, sid: str, indices: Sequence[int]) -> list[bytes | None]:
        return list(await self.redis.hmget(self.key(sid, "out"), indices)) if indices else []

    async def errors(self, sid: str, indices: Sequence[int]) -> list[tuple[str | None, str | None]]:
        """(error message, error kind) of each task's last failed attempt."""
        if not indices:
            return []
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.key(sid, "err"), indices)
        pipe.hmget(self.key(sid, "ek"), indices)
        messages, kinds = await pipe.execute()
        return [(m.decode() if m else None, k.decode() if k else None) for m, k in zip(messages, kinds)]

    async def record(self, sid: str, index: int) -> TaskRecord | None:
        pipe = self.redis.pipeline(transaction=False)
        for role in ("st", "att", "in", "out", "err", "ek", *(f"ts:{s}" for s in STAGES)):
            pipe.hget(self.key(sid, role), index)
        st, att, inp, out, err, kind, *ts = await pipe.execute()
        if st is None:
            return None
        return TaskRecord(
            task_id=task_id(sid, index),
            state=TaskState(st.decode()),
            attempts=int(att or 0),
            input=decode(inp) if inp else None,
            output=decode(out) if out else None,
            error=err.decode() if err else None,
            error_kind=kind.decode() if kind else None,
            timestamps={stage: float(t) for stage, t in zip(STAGES, ts) if t is not None},
        )

    async def terminal_events(self, sid: str, after: str = "0-0", block_ms: int | None = None,
                              count: int = 10000) -> tuple[str, list[tuple[int, TaskState]]]:
        """Tasks that reached a terminal state after stream position `after`: (new position, [(i, state)])."""
        position, events = await self.terminal_events_with_output(sid, after, block_ms, count)
        return position, [(i, s) for i, s, _ in events]

    async def terminal_events_with_output(
        self, sid: str, after: str = "0-0", block_ms: int | None = None, count: int = 10000
    ) -> tuple[str, list[tuple[int, TaskState, bytes | None]]]:
        """As terminal_events, with the output when it was small enough to travel in the event."""
        reply = await self.redis.xread({self.key(sid, "done"): after}, count=count, block=block_ms)
        if not reply:
            return after, []
        entries = reply[0][1]
        events = [(int(f[b"i"]), TaskState(f[b"s"].decode()), f.get(b"o")) for _, f in entries]
        return entries[-1][0].decode(), events


def _counts(raw: dict[bytes, bytes], *, errors: bool = False) -> dict[str, int]:
    """The `n` hash as tasks per state, or (errors=True) failed attempts per error kind."""
    if errors:
        counts = dict.fromkeys(ERROR_KINDS, 0)
        counts.update({k.decode()[2:]: int(v) for k, v in raw.items() if k.startswith(b"e:")})
    else:
        counts = {s.value: 0 for s in TaskState}
        counts.update({k.decode(): int(v) for k, v in raw.items() if not k.startswith(b"e:")})
    return counts


def _inbox_item(raw: bytes) -> ClaimedTask:
    index, token, attempt, payload = raw.split(b"\n", 3)
    return ClaimedTask(int(index), token.decode(), int(attempt), payload)


def encode_tasks(tasks_list: Any, max_payload_bytes: int) -> list[bytes]:
    """Validate and encode every task before anything is written (ValueError names the task)."""
    if not isinstance(tasks_list, list | tuple):
        raise ValueError(f"tasks_list must be a list of dicts, got {type(tasks_list).__name__}")
    if not tasks_list:
        raise ValueError("tasks_list is empty")
    encoded = []
    for n, task in enumerate(tasks_list):
        if not isinstance(task, dict):
            raise ValueError(f"tasks_list[{n}] must be a dict, got {type(task).__name__}")
        try:
            payload = encode(task, what=f"tasks_list[{n}]")
        except PayloadError as exc:
            raise ValueError(str(exc)) from exc
        if len(payload) > max_payload_bytes:
            raise ValueError(
                f"tasks_list[{n}] is {len(payload)} bytes encoded, over the {max_payload_bytes}-byte limit; "
                "pass large data by reference (e.g. an object-store URL)"
            )
        encoded.append(payload)
    return encoded
