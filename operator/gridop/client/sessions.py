"""GridSessionManager: the GRID Enterprise session API, backed by GridSession objects.

Method names, arguments, return values and errors follow the GRID reference: `create_config`
raises ValueError without `airgen`/`grid`; `start_session` returns True (running), False (failed
or timed out) or None (unknown resource, or a request error); `stop_session` returns a bool;
`list_sessions` returns dicts with the session id, node IP and last active time.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import aiohttp

from ..api.v1alpha1 import API_VERSION, GridSessionSpec, Phase
from ..api.v1alpha1.gridsession import KIND, MAX_NAME_LENGTH, NAME_PATTERN
from ..kube import ClusterAccess, KubeClient, KubeError, load_cluster_access, resources
from ..sessions.config import build_session_config, read_session_config_file
from ..sessions.plan import LAST_ACTIVE_ANNOTATION
from .sharing import SessionInitializationBehavior, SharedSession, open_session

log = logging.getLogger(__name__)

ACTIVE = (Phase.PENDING.value, Phase.STARTING.value, Phase.RUNNING.value)


def validate_session_id(session_id: Any) -> str:
    if not isinstance(session_id, str) or not session_id:
        raise ValueError(f"session_id must be a non-empty string, got {session_id!r}")
    if len(session_id) > MAX_NAME_LENGTH or not re.match(NAME_PATTERN, session_id):
        raise ValueError(
            f"session_id {session_id!r} is not a valid session name: at most {MAX_NAME_LENGTH} lowercase "
            "letters, digits and '-', starting with a letter"
        )
    return session_id


def _placement(name: str, entry: Any) -> dict[str, Any]:
    """A `resources` entry: a node name, or an object with `node` or `nodeSelector` (+ spec defaults)."""
    if isinstance(entry, str) and entry:
        return {"node": entry}
    if isinstance(entry, Mapping) and (bool(entry.get("node")) != bool(entry.get("nodeSelector"))):
        return dict(entry)
    raise ValueError(
        f"resources[{name!r}] must be a node name or an object with exactly one of 'node' or 'nodeSelector'"
    )


class GridSessionManager:
    def __init__(
        self,
        user_id: str,
        resource_config_file_path: str,
        *,
        access: ClusterAccess | None = None,
        start_timeout: float = 300.0,
    ) -> None:
        if not isinstance(user_id, str) or not user_id.strip():
            raise ValueError(f"user_id must be a non-empty string, got {user_id!r}")
        try:
            config = json.loads(pathlib.Path(resource_config_file_path).read_text())
        except FileNotFoundError as exc:
            raise ValueError(f"resource_config_file_path: no such file {resource_config_file_path!r}") from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"resource_config_file_path: {resource_config_file_path!r} is not valid JSON: {exc}") from exc
        if not isinstance(config, dict):
            raise ValueError("resource_config_file_path: the resource configuration must be a JSON object")
        for key in ("tokens", "resources"):
            if key not in config:
                raise ValueError(f"resource configuration {resource_config_file_path!r} does not contain {key!r}")
        if not isinstance(config["resources"], Mapping):
            raise ValueError("resource configuration 'resources' must map resource names to nodes")
        self.user_id = user_id
        self.tokens: dict[str, Any] = dict(config["tokens"] or {})
        self.resources: dict[str, dict[str, Any]] = {k: _placement(k, v) for k, v in config["resources"].items()}
        self.namespace: str | None = config.get("namespace")
        self.session_defaults: dict[str, Any] = dict(config.get("session") or {})
        self.start_timeout = start_timeout
        self._access = access
        self._client: KubeClient | None = None

    async def _kube(self) -> KubeClient:
        if self._client is None:
            access = self._access or await asyncio.to_thread(load_cluster_access)
            self._client = await KubeClient.connect(access)
            self.namespace = self.namespace or access.namespace
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __aenter__(self) -> GridSessionManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def create_config(self, session_config_file_path: str, session_id: str) -> dict[str, Any]:
        """The combined session configuration (GRID `create_config`)."""
        return build_session_config(read_session_config_file(session_config_file_path), session_id)

    def session_body(self, session_id: str, resource: str, config: Mapping[str, Any]) -> dict[str, Any]:
        placement = dict(self.resources[resource])
        spec: dict[str, Any] = {**self.session_defaults, **placement}
        spec.update(user=self.user_id, config={"airgen": config["airgen"], "grid": config["grid"]})
        GridSessionSpec.model_validate(spec)  # refuse locally what the API server would refuse
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": session_id,
                "labels": {"gridop.io/resource": re.sub(r"[^A-Za-z0-9_.-]", "-", resource)[:63].strip("-_.")},
            },
            "spec": spec,
        }

    async def start_session(self, session_id: str, resource: str, session_config_file_path: str) -> bool | None:
        validate_session_id(session_id)
        if resource not in self.resources:
            log.warning("resource %r is not in the resource configuration (have: %s)", resource, sorted(self.resources))
            return None
        config = self.create_config(session_config_file_path, session_id)
        body = self.session_body(session_id, resource, config)
        try:
            kube = await self._kube()
            namespace = self.namespace
            existing = await kube.get(resources.GRIDSESSIONS, session_id, namespace)
            if existing is None:
                await kube.create(resources.GRIDSESSIONS, body, namespace)
            elif existing["spec"].get("user") != self.user_id:
                log.warning("session %r exists and belongs to another user", session_id)
                return False
            return await self._wait_started(kube, session_id, namespace)
        except (KubeError, aiohttp.ClientError, OSError) as exc:
            log.warning("start_session(%r) failed: %s", session_id, exc)
            return None

    async def _wait_started(self, kube: KubeClient, session_id: str, namespace: str | None) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while loop.time() < deadline:
            gs = await kube.get(resources.GRIDSESSIONS, session_id, namespace)
            phase = (gs or {}).get("status", {}).get("phase")
            if phase == Phase.RUNNING.value:
                return True
            if gs is None or phase in (Phase.FAILED.value, Phase.STOPPED.value, Phase.STOPPING.value):
                return False
            await asyncio.sleep(0.5)
        log.warning("session %r did not start within %ss", session_id, self.start_timeout)
        return False

    async def stop_session(self, session_id: str) -> bool:
        validate_session_id(session_id)
        try:
            kube = await self._kube()
            gs = await self._find(kube, session_id)
            if gs is None or gs["spec"].get("user") != self.user_id:
                return False
            return await kube.delete(resources.GRIDSESSIONS, session_id, gs["metadata"]["namespace"])
        except (KubeError, aiohttp.ClientError, OSError) as exc:
            log.warning("stop_session(%r) failed: %s", session_id, exc)
            return False

    async def touch(self, session_id: str) -> bool:
        """Mark the session as in use now, postponing its idle timeout."""
        validate_session_id(session_id)
        kube = await self._kube()
        gs = await self._find(kube, session_id)
        if gs is None:
            return False
        now = datetime.datetime.now(tz=datetime.UTC).replace(microsecond=0).isoformat()
        patch = {"metadata": {"annotations": {LAST_ACTIVE_ANNOTATION: now}}}
        await kube.patch(resources.GRIDSESSIONS, session_id, patch, gs["metadata"]["namespace"])
        return True

    async def list_sessions(self) -> list[dict[str, Any]]:
        try:
            kube = await self._kube()
            items = await kube.list(resources.GRIDSESSIONS, self.namespace)
        except (KubeError, aiohttp.ClientError, OSError) as exc:
            log.warning("list_sessions failed: %s", exc)
            return []
        result = []
        for gs in items:
            status = gs.get("status") or {}
            if gs.get("spec", {}).get("user") != self.user_id or status.get("phase", "Pending") not in ACTIVE:
                continue
            result.append(
                {
                    "session_id": gs["metadata"]["name"],
                    "node_ip": status.get("nodeIP"),
                    "last_active_time": status.get("lastActiveTime"),
                    "node": status.get("nodeName"),
                    "phase": status.get("phase", "Pending"),
                    "resource": gs["metadata"].get("labels", {}).get("gridop.io/resource"),
                }
            )
        return sorted(result, key=lambda s: s["session_id"])

    async def open_session(
        self,
        session_id: str,
        resource: str,
        session_config_file_path: str,
        initialization_behavior: SessionInitializationBehavior = SessionInitializationBehavior.AUTO,
        *,
        client_id: str | None = None,
        lease_seconds: float = 60.0,
    ) -> SharedSession:
        """Create or attach to a shared session (see `gridop.client.sharing`)."""
        validate_session_id(session_id)
        if lease_seconds < 3:
            raise ValueError(f"lease_seconds must be at least 3, got {lease_seconds}")
        return await open_session(
            self, session_id, resource, session_config_file_path, initialization_behavior,
            client_id=client_id, lease_seconds=lease_seconds,
        )

    async def _find(self, kube: KubeClient, session_id: str) -> dict[str, Any] | None:
        return await kube.get(resources.GRIDSESSIONS, session_id, self.namespace)
