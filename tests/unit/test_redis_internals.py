"""redis-py's internals that gridop's data plane relies on are still there, and still behave.

A redis-py release that moves one of them fails here, by name, rather than the data plane at run
time; `GRIDOP_FAST_LANE=false` is the way to run without them meanwhile (see the last test).
"""

from __future__ import annotations

import inspect

import pytest
import redis.asyncio as aioredis
from redis.asyncio import connection as aioconnection
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, ReadOnlyError, ResponseError

from gridop.tasks import redis_internals as internals
from gridop.tasks.connection import FastLane, connect


def test_error_replies_map_to_redis_py_exceptions() -> None:
    assert type(internals.error_of("ERR unknown command")) is ResponseError
    assert isinstance(internals.error_of("NOSCRIPT No matching script"), NoScriptError)
    assert isinstance(internals.error_of("READONLY You can't write against a read only replica."), ReadOnlyError)


def test_a_pool_exposes_its_connection_settings_and_class() -> None:
    client = aioredis.Redis.from_url("redis://:secret@127.0.0.1:6390/3", socket_connect_timeout=2)
    settings = internals.pool_settings(client.connection_pool)
    assert (settings["host"], settings["port"], settings["db"], settings["password"]) == ("127.0.0.1", 6390, 3, "secret")
    assert settings["socket_connect_timeout"] == 2
    assert internals.pool_ssl_context(client.connection_pool) is None
    assert issubclass(internals.connection_class(client), aioconnection.Connection)
    tls = aioredis.Redis.from_url("rediss://127.0.0.1:6390/0", ssl_cert_reqs="none")
    assert internals.pool_ssl_context(tls.connection_pool) is not None


def test_the_connection_class_can_be_swapped_and_packs_through_the_named_methods() -> None:
    for method in internals.PACKING_METHODS:
        assert callable(getattr(aioconnection.Connection, method)), method
    params = list(inspect.signature(aioconnection.Connection.pack_command).parameters)
    assert params[:2] == ["self", "args"]
    client = aioredis.Redis.from_url("redis://127.0.0.1:6390/0")

    class Marked(aioconnection.Connection):
        pass

    internals.use_connection_class(client, Marked)
    assert isinstance(client.connection_pool.make_connection(), Marked)


def test_a_cluster_client_exposes_its_nodes_and_connection_class() -> None:
    cluster = RedisCluster(host="127.0.0.1", port=7000)
    assert internals.cluster_startup_nodes(cluster) == [("127.0.0.1", 7000)]
    assert issubclass(internals.connection_class(cluster), aioconnection.Connection)
    internals.use_connection_class(cluster, aioconnection.Connection)
    assert cluster.nodes_manager.connection_kwargs["connection_class"] is aioconnection.Connection


@pytest.mark.parametrize("value, enabled", [("false", False), ("0", False), ("true", True)])
def test_the_fast_paths_have_an_off_switch(monkeypatch: pytest.MonkeyPatch, value: str, enabled: bool) -> None:
    monkeypatch.setenv("GRIDOP_FAST_LANE", value)
    assert internals.fast_lane_enabled() is enabled
    client = connect("redis://127.0.0.1:6390/0", outage_budget=1.0)
    packed = internals.connection_class(client).__name__.startswith("Hiredis")
    assert packed is enabled
    assert FastLane(client, enabled=internals.fast_lane_enabled()).enabled is enabled
