"""The Redis data plane of one or many task batches (asyncio, redis-py with hiredis).

Layout for batch `sid` (every key carries the `{sid}` hash tag):

    gridop:{sid}:meta        hash   total, submitted, max_attempts, backoff*, cancelled, suspended, created
    gridop:{sid}:q           list   pending task indices, in order
    gridop:{sid}:st|att      hash   index -> state | attempts
    gridop:{sid}:in|out|err  hash   index -> base64 JSON input | base64 JSON output | error message
    gridop:{sid}:ts:<stage>  hash   index -> unix time (submitted, queued, claimed, started, finished)
    gridop:{sid}:lease       zset   index -> lease deadline, while processing
    gridop:{sid}:own         hash   index -> claim token (worker:attempt)
    gridop:{sid}:retry       zset   index -> time it may run again
    gridop:{sid}:n           hash   state -> count
    gridop:{sid}:done        stream one entry per task reaching a terminal state (i, s)
    gridop:{sid}:wake        list   a nudge for idle workers when work arrives

Columns rather than a hash per task: a batch of N tasks is a few commands, not N.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis

from . import scripts
from .codec import PayloadError, decode, encode
from .states import STAGES, TaskState

SUBMIT_CHUNK = 5000
ROLES = ("meta", "q", "st", "att", "lease", "own", "in", "out", "err", "n", "retry", "done", "wake", "idle",
         *(f"ts:{stage}" for stage in STAGES))


def task_id(sid: str, index: int | str) -> str:
    return f"{sid}-{index}"


def parse_task_id(tid: str) -> tuple[str, int]:
    sid, sep, index = tid.rpartition("-")
    if not sep or not index.isdigit():
        raise ValueError(f"task id {tid!r} is not of the form <session_id>-<index>")
    return sid, int(index)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    backoff_seconds: float = 1.0
    backoff_multiplier: float = 2.0
    backoff_max_seconds: float = 60.0


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


@dataclasses.dataclass
class TaskRecord:
    task_id: str
    state: TaskState
    attempts: int
    input: Any
    output: Any
    error: str | None
    timestamps: dict[str, float]


class BatchExists(ValueError):
    pass


class TaskStore:
    def __init__(self, redis: aioredis.Redis, *, prefix: str = "gridop:default"):
        self.redis = redis
        self.prefix = prefix
        self._scripts = {
            name: redis.register_script(getattr(scripts, name))
            for name in ("CLAIM", "COMPLETE", "HEARTBEAT", "SWEEP", "CANCEL", "APPEND", "COLLECT", "UNIDLE")
        }

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> TaskStore:
        return cls(aioredis.Redis.from_url(url, **kwargs))

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

    async def create(self, sid: str, total: int, policy: RetryPolicy) -> int:
        """Declare a batch of `total` tasks; returns how many were already submitted (resume point).

        Idempotent: the same id with the same total resumes an interrupted submission.
        """
        meta = self.key(sid, "meta")
        fields = {
            "total": total, "submitted": 0, "max_attempts": policy.max_retries + 1,
            "backoff": policy.backoff_seconds, "backoff_mult": policy.backoff_multiplier,
            "backoff_max": policy.backoff_max_seconds, "created": time.time(), "cancelled": 0, "suspended": 0,
        }
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(meta, "total", total)
        pipe.hget(meta, "total")
        pipe.hget(meta, "submitted")
        created, existing_total, submitted = (await pipe.execute())
        if not created:
            if int(existing_total) != total:
                raise BatchExists(f"session {sid!r} already exists with {int(existing_total)} tasks, not {total}")
            return int(submitted or 0)
        await self.redis.hset(meta, mapping={k: v for k, v in fields.items() if k != "total"})
        await self.redis.hset(self.key(sid, "n"), mapping={s.value: 0 for s in TaskState})
        return 0

    async def append(self, sid: str, payloads: Sequence[bytes]) -> tuple[list[int], str] | None:
        """Add tasks to an existing (open) batch, one script per chunk: (their indices, the
        terminal-event position before them). None if the batch does not exist."""
        indices: list[int] = []
        position = "0-0"
        for lo in range(0, len(payloads), SUBMIT_CHUNK):
            chunk = payloads[lo:lo + SUBMIT_CHUNK]
            reply = await self._scripts["APPEND"](keys=self.keys(sid), args=[time.time(), *chunk])
            if int(reply[0]) < 0:
                return None
            if lo == 0:
                position = reply[1].decode()
            indices.extend(range(int(reply[0]), int(reply[0]) + len(chunk)))
        return indices, position

    async def collect(self, sid: str, indices: Sequence[int]) -> tuple[str, int, list[tuple[TaskState | None, bytes | None]] | None]:
        """(last terminal-event id, how many of `indices` are terminal, and — once all are — their
        states with output (finished) or error (failed)). One round trip."""
        reply = await self._scripts["COLLECT"](keys=self.keys(sid), args=list(indices))
        last_id, terminal = reply[0].decode(), int(reply[1])
        if len(reply) == 2:
            return last_id, terminal, None
        report = [
            (TaskState(reply[j].decode()) if reply[j] else None, reply[j + 1] or None)
            for j in range(2, len(reply), 2)
        ]
        return last_id, terminal, report

    async def submit(self, sid: str, payloads: Sequence[bytes], start: int = 0) -> None:
        """Write tasks start.. in atomic chunks; each chunk advances meta.submitted."""
        for lo in range(start, len(payloads), SUBMIT_CHUNK):
            hi = min(lo + SUBMIT_CHUNK, len(payloads))
            idx = range(lo, hi)
            now = time.time()
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(self.key(sid, "in"), mapping={i: payloads[i] for i in idx})
            pipe.hset(self.key(sid, "st"), mapping=dict.fromkeys(idx, TaskState.PENDING.value))
            pipe.hset(self.key(sid, "ts:submitted"), mapping=dict.fromkeys(idx, now))
            pipe.hset(self.key(sid, "ts:queued"), mapping=dict.fromkeys(idx, now))
            pipe.rpush(self.key(sid, "q"), *idx)
            pipe.hincrby(self.key(sid, "n"), TaskState.PENDING.value, hi - lo)
            pipe.hset(self.key(sid, "meta"), "submitted", hi)
            pipe.rpush(self.key(sid, "wake"), 1)
            pipe.ltrim(self.key(sid, "wake"), -64, -1)
            await pipe.execute()

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

    async def delete(self, sid: str) -> int:
        """Remove every key of the batch."""
        inboxes = [k async for k in self.redis.scan_iter(match=self.key(sid, "inbox:*"), count=1000)]
        return int(await self.redis.delete(*(self.key(sid, role) for role in ROLES), *inboxes))

    # -- reading ----------------------------------------------------------------------------

    async def exists(self, sid: str) -> bool:
        return bool(await self.redis.exists(self.key(sid, "meta")))

    async def meta(self, sid: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.key(sid, "meta"))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def snapshot(self, sid: str) -> tuple[dict[str, str], dict[str, int]]:
        """(meta, counts) read atomically: a submission chunk moves both at once, so a reader
        must not see one before and the other after it."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(self.key(sid, "meta"))
        pipe.hgetall(self.key(sid, "n"))
        raw_meta, raw_counts = await pipe.execute()
        counts = {s.value: 0 for s in TaskState}
        counts.update({k.decode(): int(v) for k, v in raw_counts.items()})
        return {k.decode(): v.decode() for k, v in raw_meta.items()}, counts

    async def counts(self, sid: str) -> dict[str, int]:
        raw = await self.redis.hgetall(self.key(sid, "n"))
        counts = {s.value: 0 for s in TaskState}
        counts.update({k.decode(): int(v) for k, v in raw.items()})
        return counts

    async def states(self, sid: str, indices: Sequence[int]) -> list[TaskState | None]:
        if not indices:
            return []
        raw = await self.redis.hmget(self.key(sid, "st"), indices)
        return [TaskState(v.decode()) if v else None for v in raw]

    async def outputs(self, sid: str, indices: Sequence[int]) -> list[bytes | None]:
        return list(await self.redis.hmget(self.key(sid, "out"), indices)) if indices else []

    async def errors(self, sid: str, indices: Sequence[int]) -> list[str | None]:
        if not indices:
            return []
        return [v.decode() if v else None for v in await self.redis.hmget(self.key(sid, "err"), indices)]

    async def record(self, sid: str, index: int) -> TaskRecord | None:
        pipe = self.redis.pipeline(transaction=False)
        for role in ("st", "att", "in", "out", "err", *(f"ts:{s}" for s in STAGES)):
            pipe.hget(self.key(sid, role), index)
        st, att, inp, out, err, *ts = await pipe.execute()
        if st is None:
            return None
        return TaskRecord(
            task_id=task_id(sid, index),
            state=TaskState(st.decode()),
            attempts=int(att or 0),
            input=decode(inp) if inp else None,
            output=decode(out) if out else None,
            error=err.decode() if err else None,
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
