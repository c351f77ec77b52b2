"""Session sharing with the NI session-management semantics (initialization behaviours).

    async with await manager.open_session("sim-1", "node0", "session.json",
                                          SessionInitializationBehavior.AUTO) as shared:
        print(shared.new_session_initialized)

| behaviour | session open | session absent | on exit |
|---|---|---|---|
| AUTO | attach | create | close if we created it and nobody else is attached, else detach |
| INITIALIZE_SERVER_SESSION | SessionAlreadyExistsError | create | as AUTO |
| ATTACH_TO_SERVER_SESSION | attach | SessionNotFoundError | detach |
| INITIALIZE_SESSION_THEN_DETACH | SessionAlreadyExistsError | create | detach (leave it running) |
| ATTACH_TO_SESSION_THEN_CLOSE | attach | SessionNotFoundError | close (stop the session) |

While open, the client holds an attachment lease it renews in the background; a crashed client
stops renewing and its lease lapses, so it never pins a session.

Races are decided by the API server: exactly one of many clients creating the same session gets
its create through (`new_session_initialized=True`); the others see 409 AlreadyExists and attach
(AUTO) or raise SessionAlreadyExistsError (INITIALIZE_*). Attachments are one annotation per
client written by merge patch, so clients attaching, renewing and detaching at once never
conflict; only attaching to an Exclusive session carries a resourceVersion precondition (two
clients must not both see it free).

A session left over in Stopped or Failed is replaced by AUTO and INITIALIZE_* (deleted, then
created anew); a session being deleted is refused with SessionStartError naming its state.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import logging
import random
import uuid
from typing import Any, Protocol

from ..api.v1beta1 import Phase
from ..api.v1beta1.gridsession import Sharing
from ..kube import Conflict, KubeClient, NotFound, resources
from ..sessions import attachments


class CreateResult(Protocol):
    @property
    def created(self) -> bool:
        """Whether this call created the session (False: it existed already)."""
        ...


class SessionStarter(Protocol):
    """What sharing needs of a session manager (GridSessionManager is one): who the user is, where
    sessions live, the API client, and how a session is created and awaited."""

    user_id: str
    namespace: str | None

    async def _kube(self) -> KubeClient: ...

    async def create_session(self, session_id: str, resource: str, session_config_file_path: str) -> CreateResult: ...

    async def wait_started(self, session_id: str) -> bool: ...

log = logging.getLogger(__name__)


class SessionInitializationBehavior(enum.IntEnum):
    AUTO = 0
    INITIALIZE_SERVER_SESSION = 1
    ATTACH_TO_SERVER_SESSION = 2
    INITIALIZE_SESSION_THEN_DETACH = 3
    ATTACH_TO_SESSION_THEN_CLOSE = 4


class SessionSharingError(RuntimeError):
    code = "UNKNOWN"


class SessionAlreadyExistsError(SessionSharingError):
    """INITIALIZE_* asked for a new session, but one is open (gRPC ALREADY_EXISTS)."""

    code = "ALREADY_EXISTS"


class SessionNotFoundError(SessionSharingError):
    """ATTACH_* asked for an open session, but there is none (gRPC NOT_FOUND)."""

    code = "NOT_FOUND"


class SessionBusyError(SessionSharingError):
    """The session is Exclusive and another client holds it (gRPC FAILED_PRECONDITION)."""

    code = "FAILED_PRECONDITION"


class SessionStartError(SessionSharingError):
    """A new session did not reach Running (its Ready reason is in the message)."""

    code = "UNAVAILABLE"


CREATES = {
    SessionInitializationBehavior.AUTO,
    SessionInitializationBehavior.INITIALIZE_SERVER_SESSION,
    SessionInitializationBehavior.INITIALIZE_SESSION_THEN_DETACH,
}
MAY_ATTACH = {
    SessionInitializationBehavior.AUTO,
    SessionInitializationBehavior.ATTACH_TO_SERVER_SESSION,
    SessionInitializationBehavior.ATTACH_TO_SESSION_THEN_CLOSE,
}


def is_open(gs: dict[str, Any] | None) -> bool:
    return gs is not None and not gs["metadata"].get("deletionTimestamp") and (
        (gs.get("status") or {}).get("phase", Phase.PENDING.value)
        in (Phase.PENDING.value, Phase.STARTING.value, Phase.RUNNING.value)
    )


class SharedSession:
    """An attachment to a session; use as `async with`, or call `close()` / `detach()`."""

    def __init__(
        self,
        manager: SessionStarter,
        kube: KubeClient,
        session_id: str,
        namespace: str,
        *,
        new_session_initialized: bool,
        behavior: SessionInitializationBehavior,
        client_id: str,
        lease_seconds: float,
    ):
        self.manager = manager
        self._kube = kube
        self.session_id = session_id
        self.namespace = namespace
        self.new_session_initialized = new_session_initialized
        self.behavior = behavior
        self.client_id = client_id
        self.lease_seconds = lease_seconds
        self._renewer: asyncio.Task[None] | None = None
        self._done = False

    async def _write_lease(self, expires: datetime.datetime | None) -> None:
        """Set (or, with None, remove) our attachment: a merge patch of our own annotation only, so
        it never conflicts with other clients' attachments."""
        key = attachments.annotation_key(self.client_id)
        value = attachments.lease_value("interactive", expires) if expires else None
        try:
            await self._kube.patch(resources.GRIDSESSIONS, self.session_id, {"metadata": {"annotations": {key: value}}},
                                   self.namespace)
        except NotFound:
            if expires is not None:
                raise SessionNotFoundError(f"session {self.session_id!r} is gone") from None

    async def _attach_exclusive(self, expires: datetime.datetime) -> None:
        """Take an Exclusive session: read who holds it, and write our attachment only if nobody
        changed it since (resourceVersion precondition); a conflict means someone else moved
        first, so look again."""
        key = attachments.annotation_key(self.client_id)
        for attempt in range(20):
            gs = await self._kube.get(resources.GRIDSESSIONS, self.session_id, self.namespace)
            if gs is None:
                raise SessionNotFoundError(f"session {self.session_id!r} is gone")
            now = datetime.datetime.now(tz=datetime.UTC)
            others = [a for a in attachments.live(attachments.parse(gs["metadata"].get("annotations")), now)
                      if a.client != self.client_id]
            if others:
                raise SessionBusyError(
                    f"session {self.session_id!r} is Exclusive and attached to {', '.join(a.client for a in others)}"
                )
            patch = {"metadata": {"resourceVersion": gs["metadata"]["resourceVersion"],
                                  "annotations": {key: attachments.lease_value("interactive", expires)}}}
            try:
                await self._kube.patch(resources.GRIDSESSIONS, self.session_id, patch, self.namespace)
                return
            except Conflict:
                await asyncio.sleep(random.uniform(0, min(1.0, 0.02 * 2**attempt)))
        raise SessionBusyError(f"session {self.session_id!r}: could not take it amid concurrent changes; try again")

    async def attach(self, *, exclusive: bool) -> None:
        if exclusive:
            await self._attach_exclusive(self._expiry())
        else:
            await self._write_lease(self._expiry())
        self._renewer = asyncio.create_task(self._renew())

    def _expiry(self) -> datetime.datetime:
        return datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(seconds=self.lease_seconds)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self._write_lease(self._expiry())
            except SessionNotFoundError:
                return
            except Exception as exc:  # keep trying; the lease outlives a few failed renewals
                log.warning("renewing the attachment to %s failed: %s", self.session_id, exc)

    async def _stop_renewing(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None

    async def detach(self) -> None:
        """Release our attachment and leave the session running."""
        if self._done:
            return
        self._done = True
        await self._stop_renewing()
        await self._write_lease(None)

    async def close(self) -> None:
        """Release our attachment and stop the session."""
        if self._done:
            return
        self._done = True
        await self._stop_renewing()
        with contextlib.suppress(NotFound):
            await self._kube.delete(resources.GRIDSESSIONS, self.session_id, self.namespace)

    async def _others_attached(self) -> bool:
        gs = await self._kube.get(resources.GRIDSESSIONS, self.session_id, self.namespace)
        now = datetime.datetime.now(tz=datetime.UTC)
        annotations = (gs or {}).get("metadata", {}).get("annotations")
        return any(a.client != self.client_id for a in attachments.live(attachments.parse(annotations), now))

    async def __aenter__(self) -> SharedSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        b = self.behavior
        if b == SessionInitializationBehavior.ATTACH_TO_SESSION_THEN_CLOSE:
            await self.close()
        elif b == SessionInitializationBehavior.INITIALIZE_SESSION_THEN_DETACH or not self.new_session_initialized:
            await self.detach()
        elif await self._others_attached():
            # We created it, but others joined: closing would pull it from under them.
            await self.detach()
        else:
            await self.close()


async def open_session(
    manager: SessionStarter,
    session_id: str,
    resource: str,
    session_config_file_path: str,
    behavior: SessionInitializationBehavior,
    *,
    client_id: str | None,
    lease_seconds: float,
) -> SharedSession:
    behavior = SessionInitializationBehavior(behavior)
    client_id = client_id or f"{manager.user_id[:40]}-{uuid.uuid4().hex[:8]}"
    client_id = "".join(c if c.isalnum() or c in "-_." else "-" for c in client_id).strip("-_.")
    attachments.annotation_key(client_id)  # validate early
    kube = await manager._kube()
    namespace = manager.namespace
    assert namespace is not None
    gs = await kube.get(resources.GRIDSESSIONS, session_id, namespace)
    new = False
    if is_open(gs):
        if behavior not in MAY_ATTACH:
            raise SessionAlreadyExistsError(f"session {session_id!r} is already open (behavior {behavior.name})")
    elif behavior not in CREATES:
        raise SessionNotFoundError(f"no open session {session_id!r} to attach to (behavior {behavior.name})")
    else:
        outcome = await manager.create_session(session_id, resource, session_config_file_path)
        if outcome.created:
            new = True
        elif behavior != SessionInitializationBehavior.AUTO:
            # Another client's create won the race: it initialized the session, not us.
            raise SessionAlreadyExistsError(f"session {session_id!r} was just created by another client "
                                            f"(behavior {behavior.name})")
        if not await manager.wait_started(session_id):
            gs = await kube.get(resources.GRIDSESSIONS, session_id, namespace)
            ready: dict[str, Any] = next((c for c in (gs or {}).get("status", {}).get("conditions") or [] if c.get("type") == "Ready"), {})
            raise SessionStartError(f"session {session_id!r} did not start: {ready.get('reason')}: {ready.get('message')}")
        gs = await kube.get(resources.GRIDSESSIONS, session_id, namespace)
    exclusive = (gs or {}).get("spec", {}).get("sharing") == Sharing.EXCLUSIVE.value
    shared = SharedSession(
        manager, kube, session_id, namespace,
        new_session_initialized=new, behavior=behavior, client_id=client_id, lease_seconds=lease_seconds,
    )
    await shared.attach(exclusive=exclusive)
    return shared
