"""GridSessionManager: the GRID Enterprise session API, backed by GridSession objects.

Method names, arguments, return values and errors follow the GRID reference: `create_config`
raises ValueError without `airgen`/`grid`; `start_session` returns True (running), False (failed
or timed out) or None (unknown resource, or a request error); `stop_session` returns a bool;
`list_sessions` returns dicts with the session id, node IP and last active time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import pathlib
import re
import threading
from collections.abc import Mapping
from typing import Any

import aiohttp

from ..api.v1beta1 import API_VERSION, GridSessionSpec, Phase
from ..api.v1beta1.gridsession import KIND, MAX_NAME_LENGTH, NAME_PATTERN
from ..kube import AlreadyExists, ClusterAccess, Conflict, KubeClient, KubeError, load_cluster_access, resources
from ..sessions.config import build_session_config, read_session_config_file
from ..sessions.plan import LAST_ACTIVE_ANNOTATION
from .sharing import (
    SessionInitializationBehavior,
    SessionNotFoundError,
    SessionStartError,
    SharedSession,
    open_session,
)

log = logging.getLogger(__name__)

ACTIVE = (Phase.PENDING.value, Phase.STARTING.value, Phase.RUNNING.value)
FINISHED = (Phase.STOPPED.value, Phase.FAILED.value)
REPLACE_TIMEOUT = 60.0  # how long replacing a leftover Stopped/Failed session may wait for it to go


@dataclasses.dataclass(frozen=True)
class CreateOutcome:
    created: bool  # True: this call created the session; False: it existed (ours, open)


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


def start_verdict(gs: dict[str, Any] | None) -> tuple[bool | None, str]:
    """Has a starting session reached a verdict? (True, where) once it runs; (False, why) when it
    cannot run without someone acting: deleted, Failed, Stopped or Stopping, or Stalled (an unknown
    node, a pod the API server refuses); (None, phase and reason) while it is still on its way."""
    if gs is None:
        return False, "it was deleted"
    status = gs.get("status") or {}
    phase = status.get("phase") or Phase.PENDING.value
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = conditions.get("Ready", {})
    if phase == Phase.RUNNING.value:
        return True, f"running on {status.get('nodeName')} ({status.get('nodeIP')})"
    if phase in (Phase.FAILED.value, Phase.STOPPED.value, Phase.STOPPING.value):
        return False, f"{phase}: {ready.get('reason')}: {ready.get('message')}"
    stalled = conditions.get("Stalled", {})
    current = status.get("observedGeneration") == gs.get("metadata", {}).get("generation")
    if stalled.get("status") == "True" and current:
        return False, f"Stalled: {stalled.get('reason')}: {stalled.get('message')}"
    return None, f"{phase} {ready.get('reason') or ''}".rstrip()


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
            access = self._access if self._access is not None else await asyncio.to_thread(load_cluster_access)
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
        """True once the session runs; False if it cannot (the reason is logged); None for an
        unknown resource or a failed request. A leftover Stopped or Failed session of the same
        name and user is replaced; one being deleted is refused."""
        validate_session_id(session_id)
        try:
            await self.create_session(session_id, resource, session_config_file_path)
            return await self.wait_started(session_id)
        except SessionNotFoundError as exc:
            log.warning("%s", exc)
            return None
        except SessionStartError as exc:
            log.warning("%s", exc)
            return False
        except (KubeError, aiohttp.ClientError, OSError) as exc:
            log.warning("start_session(%r) failed: %s", session_id, exc)
            return None

    async def create_session(self, session_id: str, resource: str, session_config_file_path: str) -> CreateOutcome:
        """Create the session, letting the API server decide races: of many callers, exactly one
        gets `created=True`; the others find it and get `created=False`.

        Raises SessionNotFoundError (unknown resource) or SessionStartError (the session belongs
        to another user, or is being deleted).
        """
        validate_session_id(session_id)
        if resource not in self.resources:
            raise SessionNotFoundError(
                f"resource {resource!r} is not in the resource configuration (have: {', '.join(sorted(self.resources))})"
            )
        body = self.session_body(session_id, resource, self.create_config(session_config_file_path, session_id))
        kube = await self._kube()
        namespace = self.namespace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REPLACE_TIMEOUT
        while loop.time() < deadline:
            try:
                await kube.create(resources.GRIDSESSIONS, body, namespace)
                return CreateOutcome(created=True)
            except AlreadyExists:
                pass
            gs = await kube.get(resources.GRIDSESSIONS, session_id, namespace)
            if gs is None:
                continue  # deleted between our create and our read: create again
            if gs["spec"].get("user") != self.user_id:
                raise SessionStartError(f"session {session_id!r} exists and belongs to another user")
            phase = (gs.get("status") or {}).get("phase", Phase.PENDING.value)
            if gs["metadata"].get("deletionTimestamp"):
                raise SessionStartError(
                    f"session {session_id!r} is being deleted (phase {phase}); start it again once it is gone"
                )
            if phase not in FINISHED:
                return CreateOutcome(created=False)
            # A leftover of an earlier run: replace it. The uid precondition makes sure we delete
            # that incarnation only, not a new one another client created meanwhile.
            log.info("replacing session %r left over in phase %s", session_id, phase)
            try:
                await kube.delete(resources.GRIDSESSIONS, session_id, namespace, uid=gs["metadata"]["uid"])
            except Conflict:
                continue
            while loop.time() < deadline and (await kube.get(resources.GRIDSESSIONS, session_id, namespace)) is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.25)  # polling the API server: there is no event to wait on here
        raise SessionStartError(f"session {session_id!r}: the leftover session was not removed within {REPLACE_TIMEOUT:.0f}s")

    async def wait_started(self, session_id: str) -> bool:
        """Wait until the session runs (True), or fails, stops, is stalled or does not start in time (False)."""
        kube = await self._kube()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while loop.time() < deadline:
            started, why = start_verdict(await kube.get(resources.GRIDSESSIONS, session_id, self.namespace))
            if started is not None:
                if not started:
                    log.warning("session %r did not start: %s", session_id, why)
                return started
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
            if gs["metadata"].get("deletionTimestamp"):
                continue  # being deleted: no longer a session to work with
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


class SyncSharedSession:
    """A SharedSession for synchronous code: `with manager.open_session(...) as session:`."""

    def __init__(self, manager: SyncGridSessionManager, shared: SharedSession):
        self._manager = manager
        self._shared = shared

    @property
    def session_id(self) -> str:
        return self._shared.session_id

    @property
    def new_session_initialized(self) -> bool:
        return self._shared.new_session_initialized

    @property
    def client_id(self) -> str:
        return self._shared.client_id

    def detach(self) -> None:
        self._manager._run(self._shared.detach())

    def close(self) -> None:
        self._manager._run(self._shared.close())

    def __enter__(self) -> SyncSharedSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self._manager._run(self._shared.__aexit__(*exc))


class SyncGridSessionManager:
    """GridSessionManager for synchronous code (scripts, notebooks, measurement plug-ins).

        with SyncGridSessionManager("alice", "resource_config.json") as manager:
            with manager.open_session("sim-1", "node0", "session.json") as session:
                ...

    The same methods, blocking. Its event loop runs in a thread of its own, so an open session's
    attachment keeps being renewed while your code runs.
    """

    def __init__(self, user_id: str, resource_config_file_path: str, **kwargs: Any):
        self._async = GridSessionManager(user_id, resource_config_file_path, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gridop-sessions", daemon=True)
        self._thread.start()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def create_config(self, session_config_file_path: str, session_id: str) -> dict[str, Any]:
        return self._async.create_config(session_config_file_path, session_id)

    def start_session(self, session_id: str, resource: str, session_config_file_path: str) -> bool | None:
        return self._run(self._async.start_session(session_id, resource, session_config_file_path))

    def stop_session(self, session_id: str) -> bool:
        return self._run(self._async.stop_session(session_id))

    def touch(self, session_id: str) -> bool:
        return self._run(self._async.touch(session_id))

    def list_sessions(self) -> list[dict[str, Any]]:
        return self._run(self._async.list_sessions())

    def open_session(self, session_id: str, resource: str, session_config_file_path: str,
                     initialization_behavior: SessionInitializationBehavior = SessionInitializationBehavior.AUTO,
                     **kwargs: Any) -> SyncSharedSession:
        shared = self._run(self._async.open_session(session_id, resource, session_config_file_path,
                                                    initialization_behavior, **kwargs))
        return SyncSharedSession(self, shared)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> SyncGridSessionManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
