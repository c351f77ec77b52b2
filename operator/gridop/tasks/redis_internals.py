"""Every use gridop makes of redis-py beyond its documented API, in one place.

The data plane's fast paths lean on a few redis-py internals: a connection class whose command
packing is swapped for hiredis's, a pool's connection settings (to open the fast lane's own
connections with the same address, TLS and credentials), a Redis Cluster client's node manager,
and redis-py's mapping of error replies to exception classes. They were written against the
redis-py versions pyproject.toml allows; `tests/unit/test_redis_internals.py` checks each hook is
still there and still behaves, so a redis-py release that moves one fails that test by name
rather than the data plane at run time.

`GRIDOP_FAST_LANE=false` (or `fast_lane: false` in a client's configuration) turns all of it off:
commands are then packed by redis-py and go through its pools only.
"""

from __future__ import annotations

from typing import Any

from redis._parsers.base import BaseParser
from redis.asyncio import connection as aioconnection
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from ..settings import DataPlaneSettings


def fast_lane_enabled(configured: bool | None = None) -> bool:
    """Whether the fast paths are on: `configured` when given, else GRIDOP_FAST_LANE (default on)."""
    return DataPlaneSettings().fast_lane if configured is None else configured


def error_of(reply_text: str) -> RedisError:
    """The exception redis-py raises for an error reply (ResponseError, NoScriptError, ...)."""
    return BaseParser.parse_error(reply_text)


def pool_settings(pool: Any) -> dict[str, Any]:
    """A connection pool's connection settings (host, port, path, password, db, timeouts ...)."""
    return dict(pool.connection_kwargs)


def pool_ssl_context(pool: Any) -> Any | None:
    """The SSL context a pool's connections use, or None for plain TCP or a Unix socket."""
    if not issubclass(pool.connection_class, aioconnection.SSLConnection):
        return None
    return pool.make_connection().ssl_context.get()


def connection_class(client: Any) -> type[Any]:
    """The connection class a client (plain or cluster) makes its connections from."""
    if isinstance(client, RedisCluster):
        return client.nodes_manager.connection_kwargs.get("connection_class", aioconnection.Connection)
    return client.connection_pool.connection_class


def use_connection_class(client: Any, cls: type[Any]) -> None:
    """Make a client's future connections from `cls` (a subclass of its own connection class)."""
    if isinstance(client, RedisCluster):
        client.nodes_manager.connection_kwargs["connection_class"] = cls
    else:
        client.connection_pool.connection_class = cls


def cluster_startup_nodes(client: RedisCluster) -> list[tuple[str, int]]:
    """The (host, port) of the nodes a cluster client was started from."""
    return [(str(n.host), int(n.port)) for n in client.nodes_manager.startup_nodes.values()]


# The methods of redis-py's connection class that `packed_by_hiredis` overrides.
PACKING_METHODS = ("pack_command", "pack_commands")
