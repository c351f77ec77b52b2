"""A small async REST client for the Kubernetes API, built on aiohttp.

It does exactly what gridop needs (get, list, create, patch, delete, by name) and nothing
clever: no discovery, no caching, no retries hidden from the caller. Errors are typed so that
callers can treat "already gone" and "already there" as the normal cases they are.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from .access import ClusterAccess


class KubeError(RuntimeError):
    def __init__(self, status: int, message: str, reason: str = "", body: Mapping[str, Any] | None = None):
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.api_message = message
        self.body = dict(body or {})


class NotFound(KubeError):
    pass


class AlreadyExists(KubeError):
    pass


class Conflict(KubeError):
    pass


class Invalid(KubeError):
    pass


def _error_for(status: int, body: Mapping[str, Any]) -> KubeError:
    message = str(body.get("message", "")) if isinstance(body, Mapping) else str(body)
    reason = str(body.get("reason", "")) if isinstance(body, Mapping) else ""
    if status == 404:
        return NotFound(status, message, reason, body)
    if status == 409 and reason == "AlreadyExists":
        return AlreadyExists(status, message, reason, body)
    if status == 409:
        return Conflict(status, message, reason, body)
    if status == 422:
        return Invalid(status, message, reason, body)
    return KubeError(status, message, reason, body)


@dataclasses.dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
            if subresource:
                base += f"/{subresource}"
        return base


def merge_patch(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """A top-level JSON merge patch turning `before` into `after`: changed keys, and null for removed ones."""
    patch: dict[str, Any] = {k: v for k, v in after.items() if before.get(k) != v}
    patch.update({k: None for k in before if k not in after})
    return patch


PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}


class KubeClient:
    """One shared HTTP session per process; build it with `await KubeClient.connect(access)`."""

    def __init__(self, access: ClusterAccess, session: aiohttp.ClientSession, ssl_ctx: Any = False):
        self.access = access
        self._session = session
        self._ssl = ssl_ctx
        self._streams: aiohttp.ClientSession | None = None

    @classmethod
    async def connect(cls, access: ClusterAccess, *, timeout: float = 30.0) -> KubeClient:
        ssl_ctx = await asyncio.to_thread(access.ssl_context)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=50),
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers={"User-Agent": "gridop", "Accept": "application/json"},
        )
        return cls(access, session, ssl_ctx)

    @property
    def namespace(self) -> str:
        return self.access.namespace

    async def close(self) -> None:
        await self._session.close()
        if self._streams is not None:
            await self._streams.close()

    async def _auth_headers(self) -> dict[str, str]:
        token = await self.access.bearer_token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _stream_session(self) -> aiohttp.ClientSession:
        """A second session for long-lived streams: no total timeout, no connection cap."""
        if self._streams is None:
            self._streams = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                headers={"User-Agent": "gridop"},
            )
        return self._streams

    async def open_stream(self, path: str, params: Mapping[str, str] | None = None) -> aiohttp.ClientResponse:
        """A streaming GET (pod logs, watches); the caller reads and releases the response."""
        resp = await self._stream_session().get(
            self.access.server + path, params=params, headers=await self._auth_headers()
        )
        if resp.status >= 400:
            text = await resp.text()
            resp.release()
            try:
                payload = json.loads(text) if text else {}
            except json.JSONDecodeError:
                payload = {"message": text[:500]}
            raise _error_for(resp.status, payload if isinstance(payload, dict) else {"message": str(payload)})
        return resp

    async def websocket(
        self, path: str, params: Any, protocols: tuple[str, ...], *, heartbeat: float | None = 30.0,
    ) -> aiohttp.ClientWebSocketResponse:
        """A websocket to the API server (pod attach/exec), offering `protocols` in order."""
        url = self.access.server.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + path
        try:
            return await self._stream_session().ws_connect(
                url, params=params, protocols=protocols, headers=await self._auth_headers(),
                heartbeat=heartbeat, max_msg_size=0, autoping=True,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise _error_for(exc.status, {"message": exc.message or "websocket upgrade refused"}) from exc

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = await self._auth_headers()
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        async with self._session.request(method, self.access.server + path, params=params, data=data, headers=headers) as resp:
            text = await resp.text()
            try:
                payload = json.loads(text) if text else {}
            except json.JSONDecodeError:
                payload = {"message": text[:500]}
            if resp.status >= 400:
                raise _error_for(resp.status, payload)
            return payload

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await self.request("GET", res.path(namespace, name))
        except NotFound:
            return None

    async def list(
        self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        payload = await self.request("GET", res.path(namespace), params=params)
        return list(payload.get("items") or [])

    async def create(self, res: Resource, body: Mapping[str, Any], namespace: str | None = None) -> dict[str, Any]:
        body = {"apiVersion": res.api_version, "kind": res.kind, **body}
        if res.namespaced and namespace:
            body["metadata"] = {**body.get("metadata", {}), "namespace": namespace}
        return await self.request("POST", res.path(namespace), body=body)

    async def patch(
        self,
        res: Resource,
        name: str,
        body: Any,
        namespace: str | None = None,
        *,
        subresource: str | None = None,
        patch_type: str = "merge",
    ) -> dict[str, Any]:
        return await self.request(
            "PATCH", res.path(namespace, name, subresource), body=body, content_type=PATCH_TYPES[patch_type]
        )

    async def apply(
        self, res: Resource, body: Mapping[str, Any], namespace: str | None = None, *, field_manager: str = "gridop"
    ) -> dict[str, Any]:
        """Server-side apply (create or update to exactly these fields, owned by `field_manager`)."""
        body = {"apiVersion": res.api_version, "kind": res.kind, **body}
        name = body["metadata"]["name"]
        return await self.request(
            "PATCH",
            res.path(namespace, name),
            params={"fieldManager": field_manager, "force": "true"},
            body=body,
            content_type="application/apply-patch+yaml",
        )

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        grace_period_seconds: int | None = None,
        propagation: str | None = "Background",
        uid: str | None = None,
    ) -> bool:
        """Delete; False when it was already gone (the normal case for idempotent cleanup). With
        `uid`, only that incarnation of the object (409 Conflict if it was replaced meanwhile)."""
        options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        if propagation:
            options["propagationPolicy"] = propagation
        try:
            await self.request("DELETE", res.path(namespace, name), body=options)
        except NotFound:
            return False
        return True
