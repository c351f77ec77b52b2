"""The Redis data plane of one or many task batches (asyncio, redis-py with hiredis).

Layout for batch `sid` (every key carries the `{sid}` hash tag: one batch, one cluster slot):

    gridop:{sid}:meta   hash   total, submitted, cursor, digest, open, claims, max_attempts, max_infra,
                               backoff*, policy_source, cancelled, cancelled_at, suspended, created,
                               pool, priority, owner
    gridop:{sid}:in     list   task inputs (base64 JSON), the task index is the position
    gridop:{sid}:q      list   runs of pending tasks, `lo:hi:attempt:submitted:queued`, in order
    gridop:{sid}:q1     list   single-task runs whose last worker died under them: claimed alone
    gridop:{sid}:ch     hash   claim id -> `worker|claimed|run;run...` (every claim ever made)
    gridop:{sid}:cn     hash   live claim -> `left|run;run...`: how many of its tasks are not yet
                               reported, and its runs (a report reads this one field)
    gridop:{sid}:lease  zset   live claim -> lease deadline (one entry per claim, not per task)
    gridop:{sid}:t      hash   index -> record, once the task left its claim:
                               `f|claim|started|finished|output`, `x|claim|started|finished` (failed),
                               `r|claim|started|finished` (retrying)
    gridop:{sid}:err    hash   index -> `kind\\0message` of its last failed attempt
    gridop:{sid}:fa|ia  hash   index -> failed attempts: application/timeout | infrastructure
    gridop:{sid}:retry  zset   `index:attempt:submitted` -> time it may run again
    gridop:{sid}:n      hash   state -> count, and e:<kind> -> failed attempts of that kind
    gridop:{sid}:done   stream one entry per script call that ended tasks: f (finished indices),
                               o (their outputs, when small), x (failed indices), c (batch cancelled)
    gridop:{sid}:apx    hash   append id -> first index it was given (appends are replay-safe)
    gridop:{sid}:wake   list   a nudge for idle workers when work arrives
    gridop:{sid}:idle   list   idle workers offered for direct handoff
    gridop:{sid}:hand   list   tasks handed over to idle workers, already claimed

A pending task has no record; a task in a live claim has none either (its claim's runs say which
tasks it holds); a task with no terminal record in a cancelled batch is cancelled. So submitting,
claiming and cancelling cost O(1) per chunk, claim or batch, and finishing costs one field.

A worker pool (a TaskPool) serves every session sent to it; its keys carry the `{pool:<name>}` tag:

    gridop:{pool:<p>}:sessions  zset  session id -> time it joined, until all its tasks are terminal
    gridop:{pool:<p>}:ready     zset  `owner/session` -> priority: sessions that may have queued tasks
                                      (a hint: a claim confirms it)
    gridop:{pool:<p>}:wake      list  a nudge for the pool's idle workers when work arrives
    gridop:{pool:<p>}:sweeper   str   which worker sweeps the pool's sessions this round
    gridop:{pool:<p>}:turn      int   whose turn it is (owners, then their sessions, take turns)

Pool bookkeeping is in commands of its own, never inside a session's scripts: a session's keys
and its pool's may live on different Redis Cluster shards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from redis.exceptions import NoScriptError

from . import scripts
from .codec import PayloadError, decode, encode
from .connection import FastLane, Head, LaneClosed, clone_client, connect
from .redis_internals import fast_lane_enabled
from .states import ERROR_KINDS, STAGES, TaskState

SUBMIT_CHUNK = 5000
ROLES = scripts.KEYS
_STATE_OF = {ord("f"): TaskState.FINISHED, ord("x"): TaskState.FAILED, ord("r"): TaskState.RETRYING}


def key_prefix(namespace: str) -> str:
    """Batches are named per namespace, so the namespace is part of every data-plane key: the
    operator, the workers it starts and the SDK all derive the prefix here."""
    return f"gridop:{namespace}"


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


def _whole(value: float) -> float:
    """A whole number of seconds as an int: hiredis packs an int several times faster than a float."""
    return int(value) if value == int(value) else value


@dataclasses.dataclass(slots=True)
class ClaimedTask:
    index: int
    token: str  # the claim it belongs to
    attempt: int
    payload: bytes
    submitted: float = 0.0
    queued: float = 0.0
    claimed: float = 0.0


@dataclasses.dataclass(slots=True)
class Outcome:
    index: int
    token: str
    outcome: str  # ok | error | timeout | fatal | fatal-timeout
    payload: bytes | str  # base64 output for ok, error message otherwise
    started: float | None = None
    ended: float | None = None  # when the worker had the outcome (for its run-time histogram)

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


@dataclasses.dataclass(slots=True)
class TerminalEvent:
    """One entry of a batch's terminal-event stream: tasks that ended in one script call."""

    finished: list[int]
    outputs: list[bytes] | None  # aligned with `finished`, when they were small enough to travel along
    failed: list[int]
    cancelled: bool  # the batch was cancelled: every task not ended before this event is cancelled


# (state, output or error message, error kind) of one task in a collected report.
Report = tuple[TaskState | None, bytes | None, str | None]


class BatchExists(ValueError):
    """The session id already holds different tasks."""

    def __init__(self, message: str, *, session_id: str = "", held: int = 0):
        super().__init__(message)
        self.session_id, self.held = session_id, held


class BatchClosed(ValueError):
    """The batch was cancelled: it takes no more tasks."""


def content_digest(payloads: Sequence[bytes]) -> str:
    """What identifies a submission's content: same tasks in the same order, same digest."""
    h = hashlib.blake2b(digest_size=16)
    for payload in payloads:
        h.update(len(payload).to_bytes(4, "little"))
        h.update(payload)
    return h.hexdigest()


def _runs(record: bytes) -> tuple[str, float, list[tuple[int, int, int, float, float]]]:
    """A claim record -> (worker, claimed, [(lo, hi, attempt, submitted, queued)])."""
    worker, claimed, body = record.decode().split("|", 2)
    runs = []
    for run in body.split(";"):
        lo, hi, attempt, sub, queued = run.split(":")
        runs.append((int(lo), int(hi), int(attempt), float(sub or 0), float(queued or 0)))
    return worker, float(claimed), runs


def _claimed(reply: Sequence[Any], start: int = 0) -> list[ClaimedTask]:
    """A claim as the scripts return it: claim id, claim time, #runs, the runs, then the inputs."""
    if len(reply) <= start:
        return []
    claim, claimed, count = reply[start].decode(), float(reply[start + 1]), int(reply[start + 2])
    inputs = reply[start + 3 + count:]
    tasks: list[ClaimedTask] = []
    k = 0
    for run in reply[start + 3:start + 3 + count]:
        lo, hi, attempt, sub, queued = run.split(b":")
        a, s, q = int(attempt), float(sub), float(queued)
        for i in range(int(lo), int(hi) + 1):
            tasks.append(ClaimedTask(i, claim, a, inputs[k], s, q, claimed))
            k += 1
    return tasks


_ROLE = {role: k for k, role in enumerate(scripts.KEYS)}  # a key's place in TaskStore.keys()


class _AppendIds:
    """Ids for appends: random per process, then a sequence (a uuid4 per call would read the OS's
    entropy on every round trip). A forked child draws a new prefix: it shares no ids with its parent."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prefix = uuid.uuid4().hex
        self.count = itertools.count()


_APPENDS = _AppendIds()
os.register_at_fork(after_in_child=_APPENDS.reset)


def _handed(item: bytes) -> ClaimedTask:
    """A task handed over to an idle worker: `claim\\nclaimed\\nrun\\ninput`, its run one task long."""
    claim, claimed, run, payload = item.split(b"\n", 3)
    index, _, attempt, submitted, queued = run.split(b":")
    return ClaimedTask(int(index), claim.decode(), int(attempt), payload, float(submitted), float(queued),
                       float(claimed))


class TaskStore:
    def __init__(self, redis: Any, *, prefix: str = "gridop:default", fast_lane: bool | None = None):
        self.redis = redis  # redis.asyncio.Redis or redis.asyncio.RedisCluster
        self.prefix = prefix
        self.fast_lane = fast_lane_enabled(fast_lane)  # (None: GRIDOP_FAST_LANE, default on)
        self._keys: dict[str, list[str]] = {}
        self._heads: dict[tuple[str, str], Head] = {}  # (script, batch) -> its packed EVALSHA, SHA1 and keys
        self._scripts = {
            name: redis.register_script(getattr(scripts, name))
            for name in ("CLAIM", "COMPLETE", "HEARTBEAT", "SWEEP", "CANCEL", "APPEND", "UNIDLE", "CREATE", "SUBMIT",
                         "SNAPSHOT", "RECORDS")
        }
        self._lane = FastLane(redis, enabled=self.fast_lane)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "gridop:default", outage_budget: float | None = None,
                 retry_auth: bool = False, fast_lane: bool | None = None, **kwargs: Any) -> TaskStore:
        """A store whose commands ride out Redis outages up to `outage_budget` seconds (None: any)."""
        fast_lane = fast_lane_enabled(fast_lane)
        return cls(connect(url, outage_budget=outage_budget, retry_auth=retry_auth, fast_lane=fast_lane, **kwargs),
                   prefix=prefix, fast_lane=fast_lane)

    def clone(self) -> TaskStore:
        """A store with its own connections to the same Redis (for use from another thread's loop)."""
        return TaskStore(clone_client(self.redis), prefix=self.prefix, fast_lane=self.fast_lane)

    async def close(self) -> None:
        await self._lane.aclose()
        await self.redis.aclose()

    async def _hot(self, name: str, sid: str, args: Sequence[Any]) -> Any:
        """A script a task's round trip waits on: on the fast lane when it can take it."""
        script = self._scripts[name]
        if self._lane.enabled:
            head = self._heads.get((name, sid))
            if head is None:
                if len(self._heads) > 4096:
                    self._heads.clear()
                keys = self.keys(sid)
                head = self._heads[name, sid] = Head("EVALSHA", script.sha, len(keys), *keys)
            taken, reply = await self._lane_read(*args, head=head)
            if taken:
                return reply
        return await script(keys=self.keys(sid), args=args)

    async def _lane_read(self, *args: Any, blocking: float | None = None, head: Head | None = None) -> tuple[bool, Any]:
        """A command a task's round trip waits on, on the fast lane: (taken, raw reply).
        `blocking`: how long a blocking read may wait in Redis, in seconds."""
        if self._lane.enabled:
            try:
                return True, await self._lane.call(*args, blocking=blocking, head=head)
            except (LaneClosed, NoScriptError):
                pass  # the regular path loads the script, or rides out the outage
        return False, None

    def key(self, sid: str, role: str) -> str:
        return f"{self.prefix}:{{{sid}}}:{role}"

    def keys(self, sid: str) -> list[str]:
        """Every key of the batch, in the order the scripts declare them (KEYS)."""
        keys = self._keys.get(sid)
        if keys is None:
            if len(self._keys) > 4096:
                self._keys.clear()
            keys = self._keys[sid] = [self.key(sid, role) for role in scripts.KEYS]
        return keys

    # -- submission -----------------------------------------------------------------------

    async def create(self, sid: str, payloads: Sequence[bytes], policy: RetryPolicy) -> int:
        """Declare a batch of these tasks, atomically; returns how many of them were already
        submitted (0 for a new batch; the resume point when the same tasks were sent before).

        Raises BatchExists when the id already holds different tasks.
        """
        return await self._create(sid, len(payloads), content_digest(payloads), policy, streamed=False)

    async def create_stream(self, sid: str, policy: RetryPolicy, send_id: str) -> None:
        """Open a batch whose tasks arrive in chunks, their number unknown until `close_stream`."""
        await self._create(sid, 0, send_id, policy, streamed=True)

    async def close_stream(self, sid: str) -> None:
        await self.redis.hset(self.key(sid, "meta"), "open", 0)
        await self.nudge(sid)

    async def _create(self, sid: str, total: int, digest: str, policy: RetryPolicy, *, streamed: bool) -> int:
        fields = policy.meta_fields()
        cursor, held = await self._scripts["CREATE"](keys=self.keys(sid), args=[
            total, digest, time.time(), fields["max_attempts"], fields["backoff"], fields["backoff_mult"],
            fields["backoff_max"], fields["max_infra"], int(streamed),
        ])
        if int(cursor) < 0:
            raise BatchExists(
                f"session {sid!r} already holds {int(held)} different tasks; use a new session id, "
                "or send(..., append=True) to add tasks to it", session_id=sid, held=int(held),
            )
        return int(cursor)

    async def submit(self, sid: str, payloads: Sequence[bytes], start: int = 0) -> None:
        """Write the declared tasks from `start` in atomic chunks. Safe to run concurrently with
        another submitter of the same tasks, and to replay: each chunk is written once."""
        position = start
        while position < len(payloads):
            position = await self.submit_chunk(sid, position, payloads[position:position + SUBMIT_CHUNK])

    async def submit_chunk(self, sid: str, position: int, chunk: Sequence[bytes]) -> int:
        """Write one chunk at `position`, if the cursor stands there; returns where it stands after."""
        cursor = int(await self._scripts["SUBMIT"](keys=self.keys(sid), args=[position, time.time(), *chunk]))
        if cursor == -2:
            raise BatchClosed(f"session {sid!r} was cancelled while its tasks were being sent")
        return cursor

    async def append(self, sid: str, payloads: Sequence[bytes]) -> tuple[list[int], str] | None:
        """Add tasks to an existing batch, one script per chunk: (their indices, the terminal-event
        position before them). None if the batch does not exist; BatchClosed if it was cancelled.
        Each chunk carries an id of its own, so a replay after a lost reply appends nothing."""
        indices: list[int] = []
        position = "0-0"
        call = f"{_APPENDS.prefix}.{next(_APPENDS.count)}"
        for lo in range(0, len(payloads), SUBMIT_CHUNK):
            chunk = payloads[lo:lo + SUBMIT_CHUNK]
            for delay in (0.01, 0.05, 0.2, 1.0, 0.0):
                reply = await self._hot("APPEND", sid, [time.time(), f"{call}:{lo}", *chunk])
                if int(reply[0]) != -3 or not delay:
                    break
                await asyncio.sleep(delay)  # the first submission is still being written
            first = int(reply[0])
            if first == -2:
                raise BatchClosed(f"session {sid!r} was cancelled; it takes no more tasks")
            if first == -3:
                raise BatchClosed(f"session {sid!r} is still receiving its first submission; append once it is sent")
            if first < 0:
                return None
            if lo == 0:
                position = reply[1].decode()
            indices.extend(range(first, first + len(chunk)))
        return indices, position

    # -- workers ----------------------------------------------------------------------------

    async def claim(self, sid: str, worker: str, count: int, lease_seconds: float) -> list[ClaimedTask]:
        now = time.time()
        return _claimed(await self._hot("CLAIM", sid, [count, now, now + lease_seconds, worker]))

    async def register_idle(self, sid: str, worker: str, lease_seconds: float, ttl: float) -> str:
        """Offer this worker for direct handoff of the next appended task; returns the registration."""
        entry = f"{worker}|{lease_seconds}|{time.time() + ttl}"
        await self.redis.rpush(self.key(sid, "idle"), entry)
        return entry

    async def wait_for_work(self, sid: str, timeout: float) -> ClaimedTask | None:
        """Block until a task is handed over to an idle worker of the batch (returned, already
        claimed), or its wake list is nudged (None: go and claim), or the timeout passes (None)."""
        batch = self.keys(sid)
        keys = [batch[_ROLE["hand"]], batch[_ROLE["wake"]]]
        taken, reply = await self._lane_read("BLPOP", *keys, timeout, blocking=timeout)
        if not taken:
            reply = await self.redis.blpop(keys, timeout=timeout)
        if reply is None or reply[0].decode().endswith(":wake"):
            return None
        return _handed(reply[1])

    async def unidle(self, sid: str, entry: str, *, holding: ClaimedTask | None = None) -> ClaimedTask | None:
        """Withdraw a registration; a task handed over for it meanwhile is returned rather than left
        to its lease -- unless the caller is `holding` one already (handed over for another idle
        worker: that worker gets the caller's registration, as it is still waiting)."""
        args: list[Any] = [entry, 0]
        if holding is not None:
            # Registrations are "worker|lease seconds|expiry"; a claim token is "worker:number".
            other, terms = holding.token.rpartition(":")[0], entry.rsplit("|", 2)[1:]
            args = [entry, 1, "|".join([other, *terms])]
        item = await self._hot("UNIDLE", sid, args)
        return _handed(item) if item else None

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
        by_claim: dict[str, list[Outcome]] = {}
        for o in outcomes:
            by_claim.setdefault(o.token, []).append(o)
        groups = list(by_claim.items()) or [("", [])]
        lease, ttl = _whole(lease_seconds), _whole(idle_ttl)
        applied = stale = 0
        for n, (claim, group) in enumerate(groups):
            last = n == len(groups) - 1
            ok = [o for o in group if o.outcome == "ok"]
            args: list[Any] = [time.time(), next_count if last else 0, worker, lease, ttl if last else 0, claim,
                               len(ok)]
            for o in ok:
                args += (o.index, "" if o.started is None else o.started, o.payload)
            if len(ok) < len(group):
                for o in group:
                    if o.outcome != "ok":
                        args += (o.index, o.outcome, o.payload, "" if o.started is None else o.started)
            reply = await self._hot("COMPLETE", sid, args)
            applied += int(reply[0])
            stale += int(reply[1])
        return applied, stale, reply[2].decode() if reply[2] else None, _claimed(reply, 3)

    async def heartbeat(self, sid: str, held: Iterable[tuple[int, str]], lease_seconds: float) -> list[int]:
        """Extend the leases of the claims we hold; returns the tasks we no longer own (their claim
        was cancelled, or reclaimed after its lease lapsed)."""
        pairs = list(held)
        claims = sorted({token for _, token in pairs})
        if not claims:
            return []
        lost = {c.decode() for c in await self._scripts["HEARTBEAT"](
            keys=self.keys(sid), args=[time.time() + lease_seconds, *claims])}
        return [index for index, token in pairs if token in lost]

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
        for key in self.keys(sid):
            pipe.expire(key, seconds)
        await pipe.execute()

    async def done(self, sid: str) -> bool:
        """Whether every task declared is terminal (or the batch was cancelled); False before any
        task, and while a streamed submission is still open."""
        meta, counts, _ = await self.snapshot(sid)
        return _finished(meta, counts)

    async def delete(self, sid: str) -> int:
        """Remove every key of the batch."""
        return int(await self.redis.delete(*self.keys(sid)))

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
        raw_meta, raw_counts = await self._scripts["SNAPSHOT"](keys=self.keys(sid), args=[])
        meta = {raw_meta[k].decode(): raw_meta[k + 1].decode() for k in range(0, len(raw_meta), 2)}
        counts = {raw_counts[k]: raw_counts[k + 1] for k in range(0, len(raw_counts), 2)}
        return meta, _counts(counts), _counts(counts, errors=True)

    async def counts(self, sid: str) -> dict[str, int]:
        """Tasks per state."""
        return _counts(await self.redis.hgetall(self.key(sid, "n")))

    async def error_counts(self, sid: str) -> dict[str, int]:
        """Failed attempts per error kind (application, timeout, infrastructure)."""
        return _counts(await self.redis.hgetall(self.key(sid, "n")), errors=True)

    async def set_policy(self, sid: str, policy: RetryPolicy) -> None:
        """Make `policy` the batch's, whoever submits its tasks (the operator, from the TaskBatch)."""
        await self.redis.hset(self.key(sid, "meta"), mapping={**policy.meta_fields(), "policy_source": "taskbatch"})

    async def _records(self, sid: str, indices: Sequence[int]
                       ) -> tuple[list[Any], list[Any], dict[str, Any], bool, int, bytes | None]:
        """(records, last errors, live claims -> parsed claim records, cancelled, total, cancelled_at)."""
        recs, errs, live, runs, (cancelled, total, cancelled_at) = await self._scripts["RECORDS"](
            keys=self.keys(sid), args=list(indices))
        claims = {c.decode(): _runs(r) for c, r in zip(live, runs, strict=False) if r}
        return recs, errs, claims, cancelled == b"1", int(total or 0), cancelled_at

    @staticmethod
    def _live_claim(claims: dict[str, Any], index: int) -> str | None:
        for claim, (_, _, runs) in claims.items():
            if any(lo <= index <= hi for lo, hi, *_ in runs):
                return claim
        return None

    async def states(self, sid: str, indices: Sequence[int]) -> list[TaskState | None]:
        if not indices:
            return []
        recs, _, claims, cancelled, total, _ = await self._records(sid, indices)
        states: list[TaskState | None] = []
        for index, rec in zip(indices, recs, strict=False):
            if rec:
                state = _STATE_OF[rec[0]]
                states.append(TaskState.CANCELLED if cancelled and state == TaskState.RETRYING else state)
            elif not 0 <= index < total:
                states.append(None)
            elif cancelled:
                states.append(TaskState.CANCELLED)
            else:
                states.append(TaskState.PROCESSING if self._live_claim(claims, index) else TaskState.PENDING)
        return states

    async def outputs(self, sid: str, indices: Sequence[int]) -> list[bytes | None]:
        """The outputs of finished tasks (None for the others), read in chunks."""
        result: list[bytes | None] = []
        for lo in range(0, len(indices), 10_000):
            for rec in await self.redis.hmget(self.key(sid, "t"), list(indices[lo:lo + 10_000])):
                result.append(rec.split(b"|", 4)[4] if rec and rec[:1] == b"f" else None)
        return result

    async def errors(self, sid: str, indices: Sequence[int]) -> list[tuple[str | None, str | None]]:
        """(error message, error kind) of each task's last failed attempt."""
        result: list[tuple[str | None, str | None]] = []
        for lo in range(0, len(indices), 10_000):
            for raw in await self.redis.hmget(self.key(sid, "err"), list(indices[lo:lo + 10_000])):
                if raw:
                    kind, _, message = raw.partition(b"\x00")
                    result.append((message.decode(errors="replace"), kind.decode()))
                else:
                    result.append((None, None))
        return result

    async def record(self, sid: str, index: int) -> TaskRecord | None:
        (rec,), (error,), claims, cancelled, total, cancelled_at = await self._records(sid, [index])
        if not 0 <= index < total:
            return None
        pipe = self.redis.pipeline(transaction=False)
        pipe.lindex(self.key(sid, "in"), index)
        pipe.hget(self.key(sid, "fa"), index)
        pipe.hget(self.key(sid, "ia"), index)
        payload, app_failures, infra_failures = await pipe.execute()
        failures = int(app_failures or 0) + int(infra_failures or 0)
        timestamps: dict[str, float] = {}
        output = None
        claim: str | None = None
        if rec:
            state = _STATE_OF[rec[0]]
            parts = rec.split(b"|", 4)
            claim = parts[1].decode()
            if parts[2]:
                timestamps["started"] = float(parts[2])
            timestamps["finished"] = float(parts[3])
            if state == TaskState.FINISHED:
                output = decode(parts[4])
            elif state == TaskState.RETRYING:
                del timestamps["finished"]
                if cancelled:
                    state = TaskState.CANCELLED
        else:
            claim = self._live_claim(claims, index)
            state = TaskState.PROCESSING if claim else TaskState.PENDING
            if cancelled:
                state = TaskState.CANCELLED
        attempts = failures + (1 if state in (TaskState.PROCESSING, TaskState.FINISHED) else 0)
        if claim is not None:
            raw = None if claim in claims else await self.redis.hget(self.key(sid, "ch"), claim)
            parsed = claims.get(claim) or (_runs(raw) if raw else None)
            if parsed:
                _, claimed, runs = parsed
                for lo, hi, attempt, sub, queued in runs:
                    if lo <= index <= hi:
                        timestamps.update(submitted=sub, queued=queued, claimed=claimed)
                        attempts = max(attempts, attempt)
        else:
            timestamps.update(await self._queued_at(sid, index))
        if state == TaskState.CANCELLED and cancelled_at:
            timestamps["finished"] = float(cancelled_at)
        kind = message = None
        if error:
            raw_kind, _, raw_message = error.partition(b"\x00")
            kind, message = raw_kind.decode(), raw_message.decode(errors="replace")
        return TaskRecord(
            task_id=task_id(sid, index), state=state, attempts=attempts,
            input=decode(payload) if payload else None, output=output, error=message, error_kind=kind,
            timestamps={stage: timestamps[stage] for stage in STAGES if stage in timestamps},
        )

    async def _queued_at(self, sid: str, index: int) -> dict[str, float]:
        """When a pending task was submitted and queued, from the queue run that holds it."""
        for role in ("q1", "q"):
            for run in await self.redis.lrange(self.key(sid, role), 0, 10_000):
                lo, hi, _, sub, queued = run.split(b":")
                if int(lo) <= index <= int(hi):
                    return {"submitted": float(sub), "queued": float(queued)}
        return {}

    async def events(self, sid: str, after: str = "0-0", block_ms: int | None = None,
                     count: int = 1000) -> tuple[str, list[TerminalEvent]]:
        """Terminal events after stream position `after`: (new position, events)."""
        key = self.keys(sid)[_ROLE["done"]]
        block = () if block_ms is None else ("BLOCK", block_ms)
        taken, reply = await self._lane_read("XREAD", "COUNT", count, *block, "STREAMS", key, after,
                                             blocking=None if block_ms is None else block_ms / 1000)
        if not taken:
            reply = await self.redis.xread({key: after}, count=count, block=block_ms)
        if not reply:
            return after, []
        entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))
        if entries and isinstance(entries[0], list) and isinstance(entries[0][0], list | tuple):
            entries = entries[0]  # (a RESP3 map of streams, as redis-py shapes it)
        events = []
        for _, raw in entries:
            # A raw reply is a list: field, value, field, value...
            fields = dict(zip(raw[::2], raw[1::2], strict=True)) if isinstance(raw, list) else raw
            finished = [int(i) for i in fields[b"f"].split(b",")] if b"f" in fields else []
            outputs = fields[b"o"].split(b",") if b"o" in fields else None
            failed = [int(i) for i in fields[b"x"].split(b",")] if b"x" in fields else []
            events.append(TerminalEvent(finished, outputs, failed, b"c" in fields))
        return entries[-1][0].decode(), events

    # -- worker pools -----------------------------------------------------------------------

    def pool_key(self, pool: str, role: str) -> str:
        return f"{self.prefix}:{{pool:{pool}}}:{role}"

    async def forget_pool(self, pool: str) -> int:
        """Remove what only a live pool uses: its turn counter and its wake list (the sweeper
        lock expires by itself; the sessions, theirs to their clients, stay until they expire)."""
        return int(await self.redis.delete(self.pool_key(pool, "turn"), self.pool_key(pool, "wake")))

    async def pool_join(self, pool: str, sid: str, *, owner: str = "", priority: int = 0) -> None:
        """Put a session in a pool's hands: its workers will find it, wake up, and claim."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.key(sid, "meta"), mapping={"pool": pool, "owner": owner, "priority": priority})
        pipe.zadd(self.pool_key(pool, "sessions"), {sid: time.time()}, nx=True)
        self._pool_ready(pipe, pool, sid, owner, priority)
        await pipe.execute()

    async def pool_ready(self, pool: str, sid: str, *, owner: str = "", priority: int = 0) -> None:
        """Tell the pool a session has (more) queued tasks."""
        pipe = self.redis.pipeline(transaction=False)
        self._pool_ready(pipe, pool, sid, owner, priority)
        await pipe.execute()

    def _pool_ready(self, pipe: Any, pool: str, sid: str, owner: str, priority: int) -> None:
        """Mark a session ready in its pool and wake one idle worker (the wake list stays short)."""
        pipe.zadd(self.pool_key(pool, "ready"), {f"{owner}/{sid}": priority})
        pipe.lpush(self.pool_key(pool, "wake"), 1)
        pipe.ltrim(self.pool_key(pool, "wake"), 0, 63)

    async def pool_pick(self, pool: str) -> str | None:
        """The session of the pool to claim from next: among the ready sessions of the highest
        priority, the owners (users) take turns, and each owner's sessions take turns. So each user
        gets an equal share of the pool's claims at a priority, whatever the size or number of
        their batches, and a higher priority goes first."""
        ready = self.pool_key(pool, "ready")
        top = await self.redis.zrevrange(ready, 0, 0, withscores=True)
        if not top:
            return None
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrangebyscore(ready, top[0][1], top[0][1], start=0, num=10_000)
        pipe.incr(self.pool_key(pool, "turn"))
        members, turn = await pipe.execute()
        by_owner: dict[bytes, list[bytes]] = {}
        for member in members:
            owner, _, sid = member.rpartition(b"/")
            by_owner.setdefault(owner, []).append(sid)
        if not by_owner:
            return None
        owners = sorted(by_owner)
        sessions = sorted(by_owner[owners[turn % len(owners)]])
        return sessions[(turn // len(owners)) % len(sessions)].decode()

    async def pool_idle(self, pool: str, sid: str) -> None:
        """A claim found nothing: take the session off the ready set, unless tasks arrived meanwhile
        (a submitter adds it back after queueing, so either it or this check sees them)."""
        owner, priority = await self.redis.hmget(self.key(sid, "meta"), ["owner", "priority"])
        member = f"{(owner or b'').decode()}/{sid}"
        await self.redis.zrem(self.pool_key(pool, "ready"), member)
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(self.key(sid, "q"))
        pipe.llen(self.key(sid, "q1"))
        pipe.hmget(self.key(sid, "meta"), ["cancelled", "suspended"])
        queued, queued_alone, (cancelled, suspended) = await pipe.execute()
        if queued + queued_alone and cancelled != b"1" and suspended != b"1":
            await self.redis.zadd(self.pool_key(pool, "ready"), {member: int(float(priority or 0))})

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
            meta, counts, _ = await self.snapshot(sid)
            owner, priority = meta.get("owner", ""), int(float(meta.get("priority") or 0))
            if _finished(meta, counts):
                pipe = self.redis.pipeline(transaction=False)
                pipe.zrem(self.pool_key(pool, "sessions"), sid)
                pipe.zrem(self.pool_key(pool, "ready"), f"{owner}/{sid}")
                await pipe.execute()
                await self.expire(sid, retention)
            elif moved["retried"] or moved["requeued"] or moved["expired"]:
                pipe = self.redis.pipeline(transaction=False)
                self._pool_ready(pipe, pool, sid, owner, priority)
                await pipe.execute()
            elif (counts.get("pending") and meta.get("cancelled") != "1" and meta.get("suspended") != "1"
                  and await self.redis.zadd(self.pool_key(pool, "ready"), {f"{owner}/{sid}": priority}, nx=True)):
                # A session with queued tasks is never left out of the ready set for longer than a
                # sweep, whatever a submitter that died between its write and its ready did.
                await self.redis.lpush(self.pool_key(pool, "wake"), 1)
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


def _finished(meta: dict[str, str], counts: dict[str, int]) -> bool:
    if "total" not in meta:
        return False
    if meta.get("cancelled") == "1":
        return True
    active = counts["pending"] + counts["processing"] + counts["retrying"]
    return meta.get("open") != "1" and meta.get("submitted") == meta.get("total") and active == 0


def _counts(raw: dict[bytes, bytes], *, errors: bool = False) -> dict[str, int]:
    """The `n` hash as tasks per state, or (errors=True) failed attempts per error kind."""
    if errors:
        counts = dict.fromkeys(ERROR_KINDS, 0)
        counts.update({k.decode()[2:]: int(v) for k, v in raw.items() if k.startswith(b"e:")})
    else:
        counts = {s.value: 0 for s in TaskState}
        counts.update({k.decode(): int(v) for k, v in raw.items() if not k.startswith(b"e:")})
    return counts


def encode_task(task: Any, n: int, max_payload_bytes: int) -> bytes:
    """One task, validated and encoded (ValueError names it by its position `n`)."""
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
    return payload


def encode_tasks(tasks_list: Any, max_payload_bytes: int) -> list[bytes]:
    """Validate and encode every task before anything is written (ValueError names the task)."""
    if not isinstance(tasks_list, list | tuple):
        raise ValueError(f"tasks_list must be a list of dicts, got {type(tasks_list).__name__}")
    if not tasks_list:
        raise ValueError("tasks_list is empty")
    return [encode_task(task, n, max_payload_bytes) for n, task in enumerate(tasks_list)]
