"""Per-namespace data-plane credentials: a Redis ACL user per namespace, handed over in a Secret.

Every namespace's batches live under its own key prefix (`gridop:<namespace>:`). The operator,
which holds the admin connection, gives each namespace that runs batches a Redis user limited to
that prefix:

    ACL SETUSER gridop-<ns> reset on >password ~gridop:<ns>:* +@all -@admin -@dangerous -scan -randomkey

and writes its URL into the Secret `gridop-data-plane` (keys `url`, `username`, `password`) in
that namespace. Worker Jobs read the URL from there (`secretKeyRef`), so no password is ever
written into a Job's spec, and a worker of namespace A cannot read or write B's keys (Redis
checks the key pattern on every command, inside scripts too).

Redis keeps ACL users in memory: after a Redis restart the operator defines them again within
`refresh_seconds` (workers retry their authentication meanwhile). A Redis that refuses `ACL
SETUSER` (an old or managed one), or an operator run with `redisAcl: false`, puts the shared URL
in the Secret instead (with a warning in the first case): still no password in any Job.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from ..kube import AlreadyExists, KubeClient, resources

log = logging.getLogger(__name__)

SECRET_NAME = "gridop-data-plane"


def acl_user(namespace: str) -> str:
    return f"gridop-{namespace}"


def acl_rules(namespace: str, password: str) -> list[str]:
    """`ACL SETUSER` arguments: this namespace's key prefix, no admin or dangerous commands, and no
    listing of key names (SCAN is not limited by key patterns, and names carry batch names)."""
    return [acl_user(namespace), "reset", "on", f">{password}", f"~gridop:{namespace}:*", "resetchannels",
            "+@all", "-@admin", "-@dangerous", "-scan", "-randomkey"]


def with_credentials(url: str, username: str, password: str) -> str:
    """`url` with its credentials replaced (host, port, database and options kept)."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _every_node(redis: Any) -> dict[str, Any]:
    """On a Redis Cluster every node keeps its own users: an ACL command goes to all of them."""
    return {"target_nodes": RedisCluster.ALL_NODES} if isinstance(redis, RedisCluster) else {}


async def define_user(redis: Any, namespace: str, password: str) -> bool:
    """Create or refresh the namespace's ACL user; False if this Redis refuses ACL commands."""
    try:
        await redis.execute_command("ACL", "SETUSER", *acl_rules(namespace, password), **_every_node(redis))
    except ResponseError as exc:
        log.warning("Redis refused ACL SETUSER (%s): namespace %s gets the shared data-plane URL", exc, namespace)
        return False
    return True


class DataPlaneCredentials:
    """Keeps each namespace's Secret and ACL user in place; cheap to call on every pass (one
    Secret read per namespace per operator lifetime, one ACL command per `refresh_seconds`)."""

    def __init__(self, client: KubeClient, redis: Any, admin_url: str, *, acl: bool = True,
                 refresh_seconds: float = 10.0):
        self.client = client
        self.acl = acl
        self.redis = redis
        self.admin_url = admin_url
        self.refresh_seconds = refresh_seconds
        self._passwords: dict[str, str] = {}
        self._written: dict[str, dict[str, str] | None] = {}  # what the Secret holds (None: no Secret)
        self._refreshed: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(self, namespace: str) -> str:
        """The name of the namespace's Secret, after making sure it and its ACL user exist (the
        many passes of one namespace's batches wait for one another here, rather than race)."""
        if time.monotonic() - self._refreshed.get(namespace, -1e9) < self.refresh_seconds:
            return SECRET_NAME
        lock = self._locks.setdefault(namespace, asyncio.Lock())
        async with lock:
            if time.monotonic() - self._refreshed.get(namespace, -1e9) < self.refresh_seconds:
                return SECRET_NAME  # refreshed by the pass we waited for
            return await self._ensure(namespace)

    async def _ensure(self, namespace: str) -> str:
        now = time.monotonic()
        password = self._passwords.get(namespace) or await self._read(namespace)
        acl = self.acl and await define_user(self.redis, namespace, password)
        url = with_credentials(self.admin_url, acl_user(namespace), password) if acl else self.admin_url
        data = _data(namespace, url, password)
        written = self._written.get(namespace)
        if written is None:
            try:
                await self.client.create(resources.SECRETS, _secret(namespace, data), namespace)
            except AlreadyExists:
                # Created meanwhile (by an earlier leader): adopt its password on the next pass.
                self._passwords.pop(namespace, None)
                self._written.pop(namespace, None)
                raise
        elif written != data:
            await self.client.patch(resources.SECRETS, SECRET_NAME, {"data": data}, namespace)
        self._passwords[namespace] = password
        self._written[namespace] = data
        self._refreshed[namespace] = now
        return SECRET_NAME

    async def release(self, namespace: str) -> None:
        """The namespace runs no batch or pool any more: its Redis user goes (a new batch or pool
        defines it again, with the password its Secret keeps)."""
        async with self._locks.setdefault(namespace, asyncio.Lock()):
            self._refreshed.pop(namespace, None)
            self._passwords.pop(namespace, None)
            self._written.pop(namespace, None)
            if self.acl:
                try:
                    await self.redis.execute_command("ACL", "DELUSER", acl_user(namespace), **_every_node(self.redis))
                except ResponseError as exc:
                    log.debug("ACL DELUSER %s refused: %s", acl_user(namespace), exc)
                else:
                    log.info("namespace %s runs no batch or pool: its data-plane user %s is removed", namespace,
                             acl_user(namespace))

    async def _read(self, namespace: str) -> str:
        """The password the namespace's Secret already holds (kept across operator restarts), or
        a new one."""
        existing = await self.client.get(resources.SECRETS, SECRET_NAME, namespace)
        if existing is None:
            self._written[namespace] = None
            return secrets.token_urlsafe(32)
        data = dict(existing.get("data") or {})
        self._written[namespace] = data
        if data.get("password"):
            return base64.b64decode(data["password"]).decode()
        return secrets.token_urlsafe(32)


def _data(namespace: str, url: str, password: str) -> dict[str, str]:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {"url": b64(url), "username": b64(acl_user(namespace)), "password": b64(password)}


def _secret(namespace: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": SECRET_NAME,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "gridop", "app.kubernetes.io/component": "data-plane"},
        },
        "type": "Opaque",
        "data": data,
    }
