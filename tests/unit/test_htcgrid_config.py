"""HTC-Grid's client configuration read by gridop's connector (no Redis needed: nothing connects yet)."""

from __future__ import annotations

import logging

import pytest

from gridop.client.tasks import AsyncGridConnector, default_namespace, redis_url_of


@pytest.mark.parametrize(("config", "url"), [
    ({"redis_url": "redis://:pw@r:6379/2"}, "redis://:pw@r:6379/2"),
    ({"redis_url": "my-cache.example"}, "redis://my-cache.example:6379/0"),
    ({"redis_url": "my-cache.example", "redis_port": "6380"}, "redis://my-cache.example:6380/0"),
    ({"redis_url": "my-cache.example:7000", "redis_port": "6380"}, "redis://my-cache.example:7000/0"),
    ({"redis_url": "h", "redis_password": "p@ss/w", "redis_with_ssl": "true"}, "rediss://:p%40ss%2Fw@h:6379/0"),
    ({"redis_endpoint_url": "10.0.0.7", "redis_port": 6379, "redis_with_ssl": "false"}, "redis://10.0.0.7:6379/0"),
])
def test_redis_as_htc_grid_writes_it(config: dict, url: str) -> None:
    assert redis_url_of(config) == url


def test_a_bad_redis_address_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRIDOP_REDIS_URL", raising=False)
    with pytest.raises(ValueError, match="neither a redis:// URL nor host"):
        redis_url_of({"redis_url": "host:port"})
    with pytest.raises(ValueError, match="redis_url'\\] is required"):
        redis_url_of({})
    monkeypatch.setenv("GRIDOP_REDIS_URL", "redis://from-secret:6379/0")
    assert redis_url_of({}) == "redis://from-secret:6379/0"


def test_htc_grid_keys_are_ignored_once_and_unknown_ones_warned(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gridop.client.tasks")
    config = {"redis_url": "h", "region": "eu-west-1", "sqs_queue": "q", "user_pool_id": "mock",
              "grid_storage_service": "S3+REDIS", "colour": "blue"}
    for _ in range(3):
        AsyncGridConnector().init(config, username="alice", password="secret")
    text = caplog.text
    assert text.count("gridop has no use for these HTC-Grid settings, ignored: region, sqs_queue, user_pool_id") == 1
    assert text.count("unknown configuration keys, ignored: colour") == 1
    assert text.count("grid_storage_service S3+REDIS: gridop keeps task payloads in its Redis data plane") == 1
    assert "secret" not in text


def test_the_namespace_comes_from_the_config_the_environment_or_the_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDOP_NAMESPACE", "team-a")
    assert default_namespace() == "team-a"
    assert AsyncGridConnector({"redis_url": "h", "namespace": "team-b"}).namespace == "team-b"
    assert AsyncGridConnector({"redis_url": "h"}).namespace == "team-a"
    monkeypatch.delenv("GRIDOP_NAMESPACE")
    monkeypatch.setattr("gridop.client.tasks.SERVICE_ACCOUNT_NAMESPACE", "/nonexistent/namespace")
    assert default_namespace() == "default"
