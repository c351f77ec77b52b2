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
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import hiredis
import redis.asyncio as aioredis
from redis.asyncio import connection as aioconnection
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    AuthenticationError, BusyLoadingError, ConnectionError, ReadOnlyError, ResponseError, TimeoutError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRIABLE = (ConnectionError, TimeoutError, BusyLoadingError, ReadOnlyError)
HEALTH_CHECK_SECONDS = 15
SOCKET_TIMEOUT_SECONDS = 60.0  # a half-open connection is given up on after this (blocking reads wait ≤ 5 s)


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
                if self.budget_seconds is not None and down_for > self.budget_seconds:
                    raise DataPlaneUnavailable(
                        f"Redis at {self.address} unreachable for {down_for:.0f}s ({type(error).__name__}: {error})"
                    ) from error
                await asyncio.sleep(self._backoff.compute(min(failures, 16)))
            else:
                OUTAGES.recovered(self.address)
                return result


class ClusterRideOut(Retry):
    """The cluster client's retry policy: it counts attempts (and re-discovers the cluster's
    topology between them), so the outage budget becomes a number of backed-off attempts."""

    def __init__(self, budget_seconds: float | None, cap: float = 2.0, base: float = 0.05):
        attempts = 100_000 if budget_seconds is None else max(3, int(budget_seconds / cap) + 6)
        super().__init__(ExponentialWithJitterBackoff(cap=cap, base=base), retries=attempts,
                         supported_errors=RETRIABLE)


_PACKERS: dict[type, type] = {}


def _hiredis_packing(cls: type) -> type:
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


def connect(url: str, *, outage_budget: float | None, retry_auth: bool = False, **kwargs: Any) -> aioredis.Redis:
    """A client for `url` that rides out outages of up to `outage_budget` seconds (None: any)."""
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
        client = RedisCluster.from_url(url.replace("+cluster://", "://", 1), **options)
        client.nodes_manager.connection_kwargs["connection_class"] = _hiredis_packing(
            client.nodes_manager.connection_kwargs.get("connection_class", aioconnection.Connection))
        client.gridop_connect = (url, {"outage_budget": outage_budget, "retry_auth": retry_auth, **kwargs})
        return client
    client = aioredis.Redis.from_url(url, **options)
    client.connection_pool.connection_class = _hiredis_packing(client.connection_pool.connection_class)
    return client


def clone_client(client: Any) -> Any:
    """A client with its own connections to the same Redis or Redis Cluster (for another thread's loop)."""
    if isinstance(client, RedisCluster):
        again = getattr(client, "gridop_connect", None)
        if again is not None:
            url, kwargs = again
            return connect(url, **kwargs)
        nodes = [ClusterNode(n.host, n.port) for n in client.nodes_manager.startup_nodes.values()]
        return RedisCluster(startup_nodes=nodes, retry=client.retry)
    kwargs = dict(client.connection_pool.connection_kwargs)
    pool = aioredis.ConnectionPool(connection_class=client.connection_pool.connection_class, **kwargs)
    return aioredis.Redis(connection_pool=pool)


class FastLane:
    """Single commands on connections of the lane's own, for the few calls a task's round trip
    waits on (submit, hand-off, report, the result stream).

    The client's per-command machinery (pool checkout and release, the retry wrapper, command
    instrumentation) costs more CPU than the command itself on a small machine, and a round trip
    passes through it four times. The lane sends packed commands straight on a connection and
    reads the raw reply. It gives up at the first sign of trouble -- a refused connection, a
    broken or timed-out read -- by raising `LaneClosed`: the caller then takes the regular path,
    which rides out the outage (every hot command is a replay-safe script or a read). Plain Redis
    only: a Redis Cluster client routes by slot and is used as it is.
    """

    def __init__(self, client: Any):
        self._pool = None if isinstance(client, RedisCluster) else client.connection_pool
        self._free: list[Any] = []

    @property
    def enabled(self) -> bool:
        return self._pool is not None

    async def call(self, *args: Any) -> Any:
        assert self._pool is not None
        conn = self._free.pop() if self._free else self._pool.make_connection()
        try:
            await conn.send_packed_command(conn.pack_command(*args), check_health=False)
            reply = await conn.read_response()
        except ResponseError:
            self._free.append(conn)  # an error reply: the connection is in step
            raise
        except BaseException as exc:  # cancelled mid-read, or the connection broke: drop it
            await asyncio.shield(_drop(conn))
            if isinstance(exc, ConnectionError | TimeoutError | OSError | asyncio.TimeoutError):
                raise LaneClosed(str(exc)) from exc
            raise
        self._free.append(conn)
        return reply

    async def aclose(self) -> None:
        free, self._free = self._free, []
        for conn in free:
            await _drop(conn)


class LaneClosed(Exception):
    """The fast lane could not complete a command: take the regular path."""


async def _drop(conn: Any) -> None:
    try:
        await conn.disconnect(nowait=True)
    except Exception:  # noqa: S110 - already broken; nothing to tell
        pass
