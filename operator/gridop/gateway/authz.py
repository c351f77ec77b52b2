"""Who is calling, and may they reach this session's console? Decided before any upgrade.

Two kinds of bearer token are accepted:

* a **gridop session token** (the JWT the operator mints into `<session>-token`), verified with the
  public keys the operator publishes: ES256 only, `kid` chooses among rotated keys, `exp`, `iss`,
  `aud`, `sub`, `sid` required. It opens exactly one session: `ns`/`sid` name it, `sub` must be
  its user and `tenant` its tenant.
* a **Kubernetes token**, checked with a TokenReview, then a SubjectAccessReview on the
  `gridsessions/console` subresource of that session (`get` to tail or monitor, `create` to
  interact), so cluster RBAC decides, as it does for `pods/attach`.

Every failure is an HTTP status with a one-line message; every error of a dependency the decision
needs is 503, never an allow.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import jwt

from ..api import console as wire
from ..api.v1beta1 import GROUP
from ..api.v1beta1.gridsession import PLURAL
from ..auth.tokens import TokenError, VerificationKeys, unverified_claims, verify_token
from ..kube import resources
from .requests import ConsoleRequest

CONSOLE_SUBRESOURCE = "console"


class Denied(Exception):
    """The request is refused: `status` is the HTTP status, `message` the body's message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Unavailable(Exception):
    """A dependency of the decision (API server, keys) could not answer: the gateway says 503."""


@dataclasses.dataclass(frozen=True)
class Principal:
    kind: str  # "session-token" | "kubernetes"
    user: str
    groups: tuple[str, ...] = ()
    uid: str | None = None
    extra: Mapping[str, list[str]] = dataclasses.field(default_factory=dict)
    tenant: str | None = None  # session tokens: the `tenant` claim
    session: str | None = None  # session tokens: `sid`
    namespace: str | None = None  # session tokens: `ns`
    expires: datetime.datetime | None = None


class Reviewer(Protocol):
    """The Kubernetes reviews the decision needs (TokenReview, SubjectAccessReview)."""

    async def token_review(self, token: str, audiences: list[str]) -> Mapping[str, Any]: ...

    async def access_review(self, principal: Principal, verb: str, namespace: str, name: str) -> Mapping[str, Any]: ...


KeyGetter = Callable[[str | None], Awaitable[VerificationKeys]]


def _expiry(claims: Mapping[str, Any] | None) -> datetime.datetime | None:
    exp = (claims or {}).get("exp")
    if isinstance(exp, (int, float)):
        return datetime.datetime.fromtimestamp(exp, tz=datetime.UTC)
    return None


class _TTLCache:
    """A small cache of review answers (kube-rbac-proxy caches them too): bounded, time-limited."""

    def __init__(self, ttl: float, limit: int = 10_000):
        self._ttl = ttl
        self._limit = limit
        self._items: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> Any:
        item = self._items.get(key)
        if item is None or item[0] < time.monotonic():
            self._items.pop(key, None)
            return None
        return item[1]

    def put(self, key: Any, value: Any, ttl: float | None = None) -> None:
        if self._ttl <= 0:
            return
        if len(self._items) >= self._limit:
            now = time.monotonic()
            self._items = {k: v for k, v in self._items.items() if v[0] >= now}
            if len(self._items) >= self._limit:
                self._items.clear()
        self._items[key] = (time.monotonic() + (self._ttl if ttl is None else ttl), value)


class Authorizer:
    def __init__(
        self,
        *,
        keys: KeyGetter,
        reviewer: Reviewer,
        issuer: str,
        audience: str,
        token_audiences: list[str] | None = None,
        cache_seconds: float = 10.0,
    ):
        self._keys = keys
        self._reviewer = reviewer
        self._issuer = issuer
        self._audience = audience
        self._token_audiences = list(token_audiences or [])
        self._reviews = _TTLCache(cache_seconds)
        self._access = _TTLCache(cache_seconds)
        self._inflight: dict[Any, asyncio.Future[Any]] = {}

    async def _single_flight(self, key: Any, call: Callable[[], Awaitable[Any]]) -> Any:
        """One review per key at a time: a burst of connections with one token asks the API once."""
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await call()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here; waiters re-raise it
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[key]

    # -- authentication: 401 ---------------------------------------------------------------
    async def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Denied(401, "missing bearer token: send 'Authorization: Bearer <token>' (a gridop session token or a Kubernetes token)")
        claims = unverified_claims(token)
        if claims is not None and claims.get("iss") == self._issuer:
            return await self._session_token(token)
        return await self._kubernetes_token(token, claims)

    async def _session_token(self, token: str) -> Principal:
        try:
            header_kid = _kid(token)
            keys = await self._keys(header_kid)
        except (TokenError, ValueError) as exc:
            raise Denied(401, f"invalid session token: {exc}") from exc
        except Exception as exc:  # keys unreadable: fail closed
            raise Unavailable(f"cannot verify session tokens right now: {exc}") from exc
        try:
            claims = verify_token(keys, token, audience=self._audience, issuer=self._issuer)
        except TokenError as exc:
            raise Denied(401, f"invalid session token: {exc}") from exc
        return Principal(
            kind="session-token", user=str(claims["sub"]), tenant=claims.get("tenant") or None,
            session=str(claims["sid"]), namespace=claims.get("ns"), expires=_expiry(claims),
        )

    async def _kubernetes_token(self, token: str, claims: Mapping[str, Any] | None) -> Principal:
        key = hashlib.sha256(token.encode()).hexdigest()
        status = self._reviews.get(key)
        if status is None:
            try:
                status = await self._single_flight(("review", key), lambda: self._reviewer.token_review(token, self._token_audiences))
            except Exception as exc:
                raise Unavailable(f"cannot review the token (TokenReview failed: {exc})") from exc
            self._reviews.put(key, status, None if status.get("authenticated") else 2.0)
        if not status.get("authenticated"):
            why = status.get("error") or "the Kubernetes API did not authenticate it"
            raise Denied(401, f"invalid token: {why}")
        if self._token_audiences and not set(status.get("audiences") or []) & set(self._token_audiences):
            raise Denied(401, f"invalid token: not issued for audience(s) {', '.join(self._token_audiences)}")
        user = status.get("user") or {}
        return Principal(
            kind="kubernetes", user=str(user.get("username") or ""), groups=tuple(user.get("groups") or ()),
            uid=user.get("uid"), extra=dict(user.get("extra") or {}), expires=_expiry(claims),
        )

    # -- authorization: 403 / 404 ----------------------------------------------------------
    async def may_reach(self, principal: Principal, namespace: str, name: str, request: ConsoleRequest) -> None:
        """Raise Denied(403) unless the principal may use this console; the session need not exist.

        Runs before the session is looked up, so a caller without permission learns nothing about
        which sessions exist (403 for all of them).
        """
        if principal.kind == "session-token":
            if principal.namespace is None:
                raise Denied(403, "session token is not bound to a namespace; ask the operator for a renewed token")
            if (principal.namespace, principal.session) != (namespace, name):
                raise Denied(403, f"this session token is for session {principal.namespace}/{principal.session}, not {namespace}/{name}")
            return
        verb = "create" if request.endpoint == "interact" and request.mode == wire.MODE_INTERACTIVE else "get"
        key = (principal.user, principal.groups, principal.uid, verb, namespace, name)
        allowed = self._access.get(key)
        if allowed is None:
            try:
                status = await self._single_flight(("access", key), lambda: self._reviewer.access_review(principal, verb, namespace, name))
            except Exception as exc:
                raise Unavailable(f"cannot check permissions (SubjectAccessReview failed: {exc})") from exc
            allowed = bool(status.get("allowed")) and not status.get("denied")
            self._access.put(key, allowed)
        if not allowed:
            raise Denied(
                403,
                f"user {principal.user!r} may not {verb} {PLURAL}/{CONSOLE_SUBRESOURCE} {name!r} in namespace {namespace!r}",
            )

    @staticmethod
    def check_session(principal: Principal, session: Mapping[str, Any], request: ConsoleRequest) -> None:
        """Ownership and tenancy against the session itself (after it was found)."""
        meta, spec = session.get("metadata") or {}, session.get("spec") or {}
        name = meta.get("name")
        owner_tenant = spec.get("tenant") or None
        if principal.kind == "session-token" and principal.user != spec.get("user"):
            raise Denied(403, f"this session token belongs to user {principal.user!r}, not to the owner of session {name!r}")
        if principal.kind == "session-token" and principal.tenant != owner_tenant:
            raise Denied(403, f"this session token is for tenant {principal.tenant!r}, not session {name!r}'s")
        if owner_tenant is not None and request.tenant is None:
            raise Denied(403, f"session {name!r} belongs to a tenant: send the {wire.TENANT_HEADER} header")
        if request.tenant is not None and request.tenant != owner_tenant:
            raise Denied(403, f"tenant {request.tenant!r} does not own session {name!r}")


def _kid(token: str) -> str | None:
    try:
        return jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError as exc:
        raise TokenError(f"malformed token: {exc}") from exc


class KubeReviewer:
    """TokenReview and SubjectAccessReview through the gateway's own Kubernetes client."""

    def __init__(self, client: Any, *, timeout: float = 5.0):
        self._client = client
        self._timeout = timeout

    async def token_review(self, token: str, audiences: list[str]) -> Mapping[str, Any]:
        spec: dict[str, Any] = {"token": token}
        if audiences:
            spec["audiences"] = audiences
        body = {"metadata": {}, "spec": spec}
        result = await asyncio.wait_for(self._client.create(resources.TOKENREVIEWS, body), self._timeout)
        return result.get("status") or {}

    async def access_review(self, principal: Principal, verb: str, namespace: str, name: str) -> Mapping[str, Any]:
        spec: dict[str, Any] = {
            "user": principal.user,
            "groups": list(principal.groups),
            "resourceAttributes": {
                "namespace": namespace, "verb": verb, "group": GROUP, "resource": PLURAL,
                "subresource": CONSOLE_SUBRESOURCE, "name": name,
            },
        }
        if principal.uid:
            spec["uid"] = principal.uid
        if principal.extra:
            spec["extra"] = {k: list(v) for k, v in principal.extra.items()}
        result = await asyncio.wait_for(
            self._client.create(resources.SUBJECTACCESSREVIEWS, {"metadata": {}, "spec": spec}), self._timeout
        )
        return result.get("status") or {}
