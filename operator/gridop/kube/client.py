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

from .. import metrics
from .access import ClusterAccess


class KubeError(RuntimeError):
    def __init__(self, status: int, message: str, reason: str = "", body: Mapping[str, Any] | None = None):
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.api_message = message
        self.body = dict(body or {})

    @property
    def being_terminated(self) -> bool:
        """The API server's answer to a create in a namespace that is being deleted (403)."""
        return self.status == 403 and "being terminated" in (self.api_message or str(self))


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


_VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def _count(method: str, path: str, *, watch: bool = False) -> None:
    """Count one API request by verb and resource (gridop_kube_requests_total): the request
    budget of a session start is read from here."""
    parts = path.strip("/").split("/")
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]
    if not rest:
        return
    resource = rest[0] + (f"/{rest[2]}" if len(rest) >= 3 else "")
    if method == "GET":
        verb = "watch" if watch else ("get" if len(rest) >= 2 else "list")
    else:
        verb = _VERBS.get(method, method.lower())
    metrics.KUBE_REQUESTS.labels(verb, resource).inc()


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
        self._user_agent = "gridop"

    @classmethod
    async def connect(cls, access: ClusterAccess, *, timeout: float = 30.0, user_agent: str = "gridop") -> KubeClient:
        ssl_ctx = await asyncio.to_thread(access.ssl_context)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=50),
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers={"User-Agent": user_agent, "Accept": "application/json"},
        )
        client = cls(access, session, ssl_ctx)
        client._user_agent = user_agent
        return client

    @property
    def namespace(self) -> str:
        return self.access.namespace

    async def close(self) -> None:
        await self._session.close()
        if self._streams is not None:
            await self._streams.close()

    def _route(self) -> dict[str, Any]:
        """Per-request connection options from the kubeconfig: a proxy, the certificate's name."""
        route: dict[str, Any] = {}
        if self.access.proxy_url:
            route["proxy"] = self.access.proxy_url
        if self.access.tls_server_name and self.access.server.startswith("https"):
            route["server_hostname"] = self.access.tls_server_name
        return route

    async def _auth_headers(self) -> dict[str, str]:
        token = await self.access.bearer_token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _stream_session(self) -> aiohttp.ClientSession:
        """A second session for long-lived streams: no total timeout, no connection cap."""
        if self._streams is None:
            self._streams = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                headers={"User-Agent": self._user_agent},
            )
        return self._streams

    async def open_stream(
        self, path: str, params: Mapping[str, str] | None = None, *, accept: str | None = None
    ) -> aiohttp.ClientResponse:
        """A streaming GET (pod logs, watches); the caller reads and releases the response."""
        headers = await self._auth_headers()
        if accept:
            headers["Accept"] = accept
        _count("GET", path, watch=bool(params and params.get("watch")))
        resp = await self._stream_session().get(self.access.server + path, params=params, headers=headers,
                                               **self._route())
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
                heartbeat=heartbeat, max_msg_size=0, autoping=True, **self._route(),
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
        accept: str | None = None,
    ) -> Any:
        headers = await self._auth_headers()
        if accept:
            headers["Accept"] = accept
        _count(method, path)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        async with self._session.request(method, self.access.server + path, params=params, data=data, headers=headers,
                                         **self._route()) as resp:
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
        answer = await self.delete_object(res, name, namespace, grace_period_seconds=grace_period_seconds,
                                          propagation=propagation, uid=uid)
        return answer is not None

    async def delete_object(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        grace_period_seconds: int | None = None,
        propagation: str | None = "Background",
        uid: str | None = None,
    ) -> dict[str, Any] | None:
        """Delete and return the API's answer (the object, with a deletionTimestamp while it is
        still terminating), or None when it was already gone."""
        options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        if propagation:
            options["propagationPolicy"] = propagation
        try:
            answer = await self.request("DELETE", res.path(namespace, name), body=options)
        except NotFound:
            return None
        return answer if isinstance(answer, dict) else {}
