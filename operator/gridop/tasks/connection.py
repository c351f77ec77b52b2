"""Connections to the data plane that ride out Redis restarts and failovers.

Every command goes through redis-py's retry hook with `RideOut`: on a connection error, a
timeout, a server still loading its dataset after a restart, or a read-only replica during a
failover, it reconnects and tries again with exponential backoff and jitter (50 ms doubling to 2 s)
until Redis answers or the outage budget is spent (`None`: for ever, as workers do). Pooled
connections are health-checked after an idle spell, so the first command after a restart does
not fail on a dead socket.

Retrying a command whose reply was lost is safe here because every write is a script or
transaction that checks what it changes (claim tokens, owners, the submission cursor): a replay
finds its work done and changes nothing.

One line is logged when an outage has lasted a second and one when it ends, per Redis address,
however many connections and commands wait through it.

A Redis Cluster is named by its scheme, `redis+cluster://host:port` (`rediss+cluster://` with
TLS): any node will do, the client discovers the others and routes each batch's commands to the
shard that holds its slot. Commands are packed by hiredis, in C, where redis-py's asyncio client
would pack them in Python (most of a large submission's client time).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import socket
import ssl as ssl_module
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ConnectionError,
    MasterDownError,
    ReadOnlyError,
    ResponseError,
    TimeoutError,
)

from . import redis_internals as internals

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRIABLE = (ConnectionError, TimeoutError, BusyLoadingError, ReadOnlyError)
HEALTH_CHECK_SECONDS = 15
SOCKET_TIMEOUT_SECONDS = 60.0  # a half-open connection is given up on after this (blocking reads wait ≤ 5 s)
# A client whose Redis has never answered gives up after this, whatever its outage budget: the
# budget rides out a server that was there, not a wrong address or a Redis that is not running.
FIRST_CONTACT_SECONDS = 3.0


class DataPlaneUnavailable(ConnectionError):
    """Redis stayed unreachable for longer than the caller's outage budget."""


class _Outages:
    """Which Redis addresses are down, and since when (shared by every connection in the process).

    An outage is announced once it has lasted `ANNOUNCE_AFTER` seconds, so the dead pooled
    connections a restart leaves behind (each fails once, then reconnects) make no noise; its end
    is logged only if its start was.
    """

    ANNOUNCE_AFTER = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: dict[str, float] = {}
        self._announced: set[str] = set()

    def failed(self, address: str, error: Exception) -> float:
        """Note a failure; returns how long the address has been failing."""
        with self._lock:
            now = time.monotonic()
            since = self._since.setdefault(address, now)
            if now - since >= self.ANNOUNCE_AFTER and address not in self._announced:
                self._announced.add(address)
                log.warning("Redis at %s unreachable for %.1fs (%s: %s); retrying with backoff", address,
                            now - since, type(error).__name__, error)
            return now - since

    def recovered(self, address: str) -> None:
        if address not in self._since:  # the common case: no lock on the hot path
            return
        with self._lock:
            since = self._since.pop(address, None)
            announced = address in self._announced
            self._announced.discard(address)
        if since is not None and announced:
            log.warning("Redis at %s is back after %.1fs", address, time.monotonic() - since)


OUTAGES = _Outages()


class RideOut(Retry):
    """redis-py's retry policy, bounded by time rather than by a count, with outage logging."""

    def __init__(self, address: str, budget_seconds: float | None, *, retry_auth: bool = False, cap: float = 2.0,
                 base: float = 0.05):
        super().__init__(ExponentialWithJitterBackoff(cap=cap, base=base), retries=-1, supported_errors=RETRIABLE)
        self.address = address
        self.budget_seconds = budget_seconds
        # A refused password is a mistake to report at once, except for workers: after a Redis
        # restart their per-namespace user exists again only once the operator re-creates it.
        self.retry_auth = retry_auth
        self.answered = False  # has this client's Redis ever answered?

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        failures = 0
        while True:
            try:
                result = await do()
            except self._supported_errors as error:
                if is_retryable and not is_retryable(error):
                    raise
                if isinstance(error, AuthenticationError) and not self.retry_auth:
                    raise
                failures += 1
                await (fail(error, failures) if with_failure_count else fail(error))
                down_for = OUTAGES.failed(self.address, error)
                if self.budget_seconds is not None and not self.answered and down_for > min(
                        self.budget_seconds, FIRST_CONTACT_SECONDS):
                    raise DataPlaneUnavailable(
                        f"nothing answers at Redis {self.address} ({type(error).__name__}: {error}); check the "
                        "data plane's URL (redis_url, GRIDOP_REDIS_URL or --redis-url) and that Redis runs"
                    ) from error
                if self.budget_seconds is not None and down_for > self.budget_seconds:
                    raise DataPlaneUnavailable(
                        f"Redis at {self.address} unreachable for {down_for:.0f}s ({type(error).__name__}: {error})"
                    ) from error
                await asyncio.sleep(self._backoff.compute(min(failures, 16)))
            else:
                self.answered = True
                OUTAGES.recovered(self.address)
                return result


class ClusterRideOut(Retry):
    """The cluster client's retry policy: it counts attempts (and re-discovers the cluster's
    topology between them), so the outage budget becomes a number of backed-off attempts."""

    def __init__(self, budget_seconds: float | None, cap: float = 2.0, base: float = 0.05):
        attempts = 100_000 if budget_seconds is None else max(3, int(budget_seconds / cap) + 6)
        super().__init__(ExponentialWithJitterBackoff(cap=cap, base=base), retries=attempts,
                         supported_errors=RETRIABLE)


_PACKERS: dict[type[Any], type[Any]] = {}
# What `connect` returns: a client of a plain Redis, or of a Redis Cluster.
DataPlaneClient = aioredis.Redis | RedisCluster


def _hiredis_packing(cls: type[Any]) -> type[Any]:
    """`cls` (a redis.asyncio Connection class) with commands packed by hiredis."""
    if cls not in _PACKERS:

        def pack_command(self: Any, *args: Any) -> list[bytes]:
            if isinstance(args[0], str) and " " in args[0]:
                args = (*args[0].split(), *args[1:])
            try:
                return [hiredis.pack_command(args)]
            except TypeError:  # a type hiredis does not pack (e.g. a memoryview): redis-py's own way
                return cls.pack_command(self, *args)

        def pack_commands(self: Any, commands: Any) -> list[bytes]:
            return [b"".join(pack_command(self, *command)[0] for command in commands)]

        _PACKERS[cls] = type(f"Hiredis{cls.__name__}", (cls,), {"pack_command": pack_command,
                                                                 "pack_commands": pack_commands})
    return _PACKERS[cls]


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in ("redis+cluster", "rediss+cluster")


def node_url(url: str) -> str:
    """A plain URL of the (first) node a URL names: what a reachability probe pings."""
    return url.replace("+cluster://", "://", 1) if is_cluster_url(url) else url


def address_of(url: str) -> str:
    """host:port of a Redis URL, never its credentials (for messages and logs)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def connect(url: str, *, outage_budget: float | None, retry_auth: bool = False, fast_lane: bool | None = None,
            **kwargs: Any) -> DataPlaneClient:
    """A client for `url` that rides out outages of up to `outage_budget` seconds (None: any); its
    commands packed by hiredis unless the fast paths are off (`fast_lane`, GRIDOP_FAST_LANE)."""
    options: dict[str, Any] = {
        "retry": RideOut(address_of(url), outage_budget, retry_auth=retry_auth),
        "health_check_interval": HEALTH_CHECK_SECONDS,
        "socket_connect_timeout": 5.0,
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "socket_keepalive": True,
    }
    options.update(kwargs)
    if is_cluster_url(url):
        options["retry"] = ClusterRideOut(outage_budget)
        cluster = RedisCluster.from_url(node_url(url), **options)
        if internals.fast_lane_enabled(fast_lane):
            internals.use_connection_class(cluster, _hiredis_packing(internals.connection_class(cluster)))
        cluster.gridop_connect = (url, {"outage_budget": outage_budget, "retry_auth": retry_auth,  # type: ignore[attr-defined]
                                        "fast_lane": fast_lane, **kwargs})
        return cluster
    client = aioredis.Redis.from_url(url, **options)
    if internals.fast_lane_enabled(fast_lane):
        internals.use_connection_class(client, _hiredis_packing(internals.connection_class(client)))
    return client


def clone_client(client: Any) -> Any:
    """A client with its own connections to the same Redis or Redis Cluster (for another thread's loop)."""
    if isinstance(client, RedisCluster):
        again = getattr(client, "gridop_connect", None)
        if again is not None:
            url, kwargs = again
            return connect(url, **kwargs)
        nodes = [ClusterNode(host, port) for host, port in internals.cluster_startup_nodes(client)]
        return RedisCluster(startup_nodes=nodes, retry=client.retry)
    kwargs = internals.pool_settings(client.connection_pool)
    pool = aioredis.ConnectionPool(connection_class=internals.connection_class(client), **kwargs)
    return aioredis.Redis(connection_pool=pool)


class FastLane:
    """Single commands on connections of the lane's own, for the few calls a task's round trip
    waits on (submit, hand-off, report, the result stream).

    A round trip passes through the client library four times, and on a small machine redis-py's
    per-command machinery (pool checkout and release, the retry wrapper, instrumentation, its
    stream reader) costs more CPU than Redis spends on the command. The lane is a bare asyncio
    protocol: a command is packed by hiredis and written, its reply parsed by hiredis straight from
    the bytes received. Commands that return at once share one pipelined connection (concurrent
    calls need no pool); a blocking read (BLPOP, XREAD BLOCK) takes a connection to itself.

    The lane gives up at the first sign of trouble -- a refused or lost connection, no reply within
    `SOCKET_TIMEOUT_SECONDS` (plus the read's own wait), a server still loading or read-only, a
    refused password -- by raising `LaneClosed`; the caller then takes the regular path, which
    rides out the outage or reports the mistake (every hot command is a replay-safe script or a
    read). Plain Redis only (over TCP, TLS or a Unix socket): a Redis Cluster client routes by
    slot and is used as it is.
    """

    MAX_SPARE = 4  # idle connections kept for blocking reads
    PAUSE_SECONDS = 1.0  # after a failed connection attempt, calls take the regular path this long

    def __init__(self, client: Any, *, enabled: bool = True):
        self._target = (None if not enabled or isinstance(client, RedisCluster)
                        else _LaneTarget.of(client.connection_pool))
        self._shared: _LaneConnection | None = None
        self._opening: asyncio.Future[_LaneConnection] | None = None
        self._spare: list[_LaneConnection] = []
        self._paused_until = 0.0

    @property
    def enabled(self) -> bool:
        return self._target is not None

    async def call(self, *args: Any, blocking: float | None = None, head: Head | None = None) -> Any:
        """The raw reply to one command (`head`'s arguments, then `args`); `blocking`: how long the
        command may wait in Redis (s)."""
        try:
            packed = hiredis.pack_command(args) if head is None else head.pack(args)
        except TypeError as exc:  # an argument hiredis cannot pack: the regular path can
            raise LaneClosed(str(exc)) from exc
        if blocking is None:
            conn = self._shared
            if conn is None or not conn.usable():
                conn = await self._open_shared()
            return await conn.send(packed, SOCKET_TIMEOUT_SECONDS)
        conn = self._spare.pop() if self._spare else None
        while conn is not None and not conn.usable():
            conn.close()
            conn = self._spare.pop() if self._spare else None
        if conn is None:
            conn = await self._open()
        try:
            reply = await conn.send(packed, SOCKET_TIMEOUT_SECONDS + blocking)
        except (LaneClosed, asyncio.CancelledError):
            conn.close()  # lost, or cut mid-wait: its reply would only come when the wait ends
            raise
        except BaseException:
            self._keep(conn)  # an error reply: the connection is in step
            raise
        self._keep(conn)
        return reply

    def _keep(self, conn: _LaneConnection) -> None:
        if len(self._spare) < self.MAX_SPARE and conn.usable():
            self._spare.append(conn)
        else:
            conn.close()

    async def _open_shared(self) -> _LaneConnection:
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
        opening = self._opening
        try:
            conn = await asyncio.shield(opening)
        finally:
            if self._opening is opening and opening.done():
                self._opening = None
        if self._shared is not conn:
            if self._shared is not None:
                self._shared.close()
            self._shared = conn
        return conn

    async def _open(self) -> _LaneConnection:
        """A new connection; while Redis refuses them, not more than one attempt per pause."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._paused_until:
            raise LaneClosed("no connection to Redis a moment ago")
        try:
            return await self._target.open()  # type: ignore[union-attr]
        except LaneClosed:
            self._paused_until = loop.time() + self.PAUSE_SECONDS
            raise

    async def aclose(self) -> None:
        conns = [*self._spare, *([self._shared] if self._shared is not None else [])]
        self._spare, self._shared = [], None
        if self._opening is not None:
            self._opening.cancel()
            self._opening = None
        for conn in conns:
            conn.close()


class LaneClosed(Exception):
    """The fast lane could not complete a command: take the regular path."""


class Head:
    """The first arguments of a command sent again and again, packed once: a hot script's EVALSHA,
    SHA1 and the batch's 18 keys are most of its bytes, and most of the time hiredis spends
    packing it on every call."""

    __slots__ = ("_count", "_packed", "args")

    def __init__(self, *args: Any):
        self.args = args
        packed = hiredis.pack_command(args)
        self._count = len(args)
        self._packed = packed[packed.index(b"\r\n") + 2:]  # without the array's length

    def pack(self, rest: tuple[Any, ...]) -> bytes:
        """The whole command, these arguments after the head's."""
        if not rest:
            return b"*%d\r\n%b" % (self._count, self._packed)
        tail = hiredis.pack_command(rest)
        return b"*%d\r\n%b%b" % (self._count + len(rest), self._packed, tail[tail.index(b"\r\n") + 2:])


# Error replies that mean "not now" (the regular path rides them out), not "wrong command".
_LANE_TROUBLE = (*RETRIABLE, AuthenticationError, MasterDownError)


@dataclasses.dataclass(frozen=True)
class _LaneTarget:
    """Where and how the lane connects: the address, TLS and credentials of a redis-py pool."""

    host: str
    port: int
    path: str | None
    ssl: ssl_module.SSLContext | None
    handshake: bytes  # AUTH and SELECT, packed
    replies: int  # how many replies the handshake expects
    connect_timeout: float

    @classmethod
    def of(cls, pool: Any) -> _LaneTarget | None:
        kwargs = internals.pool_settings(pool)
        if kwargs.get("credential_provider") is not None:
            return None  # credentials that change over time: the regular path asks for them
        context = internals.pool_ssl_context(pool)
        commands: list[tuple[Any, ...]] = []
        if kwargs.get("password") is not None:
            user = kwargs.get("username")
            commands.append(("AUTH", user, kwargs["password"]) if user else ("AUTH", kwargs["password"]))
        if kwargs.get("db"):
            commands.append(("SELECT", kwargs["db"]))
        return cls(
            host=kwargs.get("host", "localhost"), port=int(kwargs.get("port", 6379)), path=kwargs.get("path"),
            ssl=context, handshake=b"".join(hiredis.pack_command(c) for c in commands), replies=len(commands),
            connect_timeout=float(kwargs.get("socket_connect_timeout") or 5.0),
        )

    async def open(self) -> _LaneConnection:
        loop = asyncio.get_running_loop()
        conn: _LaneConnection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.path is not None:
                    _, conn = await loop.create_unix_connection(_LaneConnection, self.path)
                else:
                    _, conn = await loop.create_connection(
                        _LaneConnection, self.host, self.port, ssl=self.ssl,
                        server_hostname=self.host if self.ssl is not None else None)
            if self.replies:
                conn.write(self.handshake)
                await asyncio.gather(*(conn.expect(self.connect_timeout) for _ in range(self.replies)))
        # (asyncio's TimeoutError: the name TimeoutError is redis's in this module)
        except (OSError, asyncio.TimeoutError, ssl_module.SSLError, LaneClosed, ResponseError,  # noqa: UP041
                AuthenticationError) as exc:
            if conn is not None:
                conn.close()
            raise LaneClosed(f"{type(exc).__name__}: {exc}") from exc
        return conn


class _LaneConnection(asyncio.Protocol):
    """One connection of the lane: commands written as they come, replies matched in order.

    A reply owed past its deadline fails the connection. One watchdog timer per connection checks
    the deadlines, rather than a timer per command (set and cancelled on every round trip)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader()
        # (caller's future, deadline by the loop's clock, the wait it was given), in the order sent
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float, float]] = collections.deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def usable(self) -> bool:
        return not self._lost and self._loop is asyncio.get_running_loop()

    def write(self, packed: bytes) -> None:
        if self._transport is not None and not self._lost:
            self._transport.write(packed)

    def expect(self, timeout: float) -> asyncio.Future[Any]:
        """A future for the reply to the next command written."""
        future = self._loop.create_future()
        if self._lost:
            future.set_exception(LaneClosed("connection closed"))
        else:
            deadline = self._loop.time() + timeout
            self._waiting.append((future, deadline, timeout))
            # (a connection's commands may wait for different times: a blocking read's wait is its own)
            if self._watchdog is None or deadline < self._watchdog.when():
                if self._watchdog is not None:
                    self._watchdog.cancel()
                self._watchdog = self._loop.call_at(deadline, self._watch)
        return future

    def send(self, packed: bytes, timeout: float) -> asyncio.Future[Any]:
        future = self.expect(timeout)
        self.write(packed)
        return future

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(LaneClosed(f"garbled reply: {exc}"))
                return
            if reply is False:
                return
            future = self._waiting.popleft()[0]
            if future.done():  # its caller gave up waiting
                continue
            if isinstance(reply, hiredis.ReplyError):
                error = internals.error_of(str(reply))
                future.set_exception(LaneClosed(str(error)) if isinstance(error, _LANE_TROUBLE) else error)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(LaneClosed(f"connection lost ({exc})" if exc else "connection closed"))

    def _watch(self) -> None:
        self._watchdog = None
        if not self._waiting or self._lost:
            return
        _, deadline, timeout = min(self._waiting, key=lambda waiting: waiting[1])
        now = self._loop.time()
        if deadline <= now:
            self._fail(LaneClosed(f"no reply within {timeout:.0f}s"))
        else:
            self._watchdog = self._loop.call_later(deadline - now, self._watch)

    def _fail(self, error: Exception) -> None:
        self._lost = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._transport is not None:
            self._transport.abort()
        while self._waiting:
            future = self._waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        self._fail(LaneClosed("closed"))
