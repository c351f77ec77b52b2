"""The gateway's authorization matrix: every kind of token and permission, pinned to its status and message."""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Mapping
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from gridop.api import console as wire
from gridop.auth.tokens import Keyring, issue_session_token, public_keys_from_jwks
from gridop.gateway.authz import Authorizer, Denied, Principal, Unavailable
from gridop.gateway.requests import ConsoleRequest

NOW = datetime.datetime.now(tz=datetime.UTC)
KEYRING = Keyring.generate()
PUBLIC = public_keys_from_jwks(KEYRING.public_jwks())
STRANGER = Keyring.generate()
SESSION = {"metadata": {"name": "sim", "namespace": "grid"}, "spec": {"user": "alice", "tenant": "acme"}}
INTERACT = ConsoleRequest("interact", "grid", "sim", tenant="acme")


class Reviewer:
    """The Kubernetes reviews, answered from tables (or failing, like an unreachable API)."""

    def __init__(self) -> None:
        self.users = {"k8s-alice": {"username": "alice", "groups": ["devs"], "uid": "1"}}
        self.allowed = {("alice", "create", "grid", "sim"), ("alice", "get", "grid", "sim")}
        self.down = False
        self.calls = 0

    async def token_review(self, token: str, audiences: list[str]) -> Mapping[str, Any]:
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("connection refused")
        user = self.users.get(token)
        return {"authenticated": True, "user": user, "audiences": audiences} if user else {"authenticated": False, "error": "invalid bearer token"}

    async def access_review(self, principal: Principal, verb: str, namespace: str, name: str) -> Mapping[str, Any]:
        if self.down:
            raise ConnectionRefusedError("connection refused")
        return {"allowed": (principal.user, verb, namespace, name) in self.allowed}


def authorizer(reviewer: Reviewer | None = None, keys_fail: bool = False) -> Authorizer:
    async def keys(kid: str | None) -> Any:
        if keys_fail:
            raise ConnectionRefusedError("API unreachable")
        return PUBLIC

    return Authorizer(keys=keys, reviewer=reviewer or Reviewer(), issuer="gridop", audience="gridop")


def session_token(**overrides: Any) -> str:
    args: dict[str, Any] = {"issuer": "gridop", "audience": "gridop", "user": "alice", "session": "sim", "tenant": "acme",
                                "lifetime": datetime.timedelta(hours=1), "now": NOW, "namespace": "grid"}
    args.update(overrides)
    return issue_session_token(KEYRING, **args)


def claims(**overrides: Any) -> dict[str, Any]:
    base = {"iss": "gridop", "aud": "gridop", "sub": "alice", "sid": "sim", "ns": "grid", "tenant": "acme",
            "exp": int((NOW + datetime.timedelta(hours=1)).timestamp())}
    return {**base, **overrides}


def public_pem() -> bytes:
    key = KEYRING.keys[KEYRING.active_kid].public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


async def decide(token: str | None, request: ConsoleRequest = INTERACT, session: Mapping[str, Any] | None = SESSION,
                 reviewer: Reviewer | None = None, keys_fail: bool = False) -> tuple[int, str]:
    """The gateway's order: authenticate, may_reach (before lookup), then the session's own checks."""
    authz = authorizer(reviewer, keys_fail)
    try:
        principal = await authz.authenticate(token)
        await authz.may_reach(principal, request.namespace or "grid", request.target, request)
        if session is None:
            return 404, "not found"
        authz.check_session(principal, session, request)
    except Denied as exc:
        return exc.status, exc.message
    except Unavailable as exc:
        return 503, str(exc)
    return 200, "ok"


MATRIX = [
    ("no token", None, 401, "missing bearer token"),
    ("garbage", "not-a-token", 401, "invalid token: invalid bearer token"),
    ("expired", session_token(now=NOW - datetime.timedelta(hours=2)), 401, "invalid session token: Signature has expired"),
    ("wrong aud", session_token(audience="someone-else"), 401, "invalid session token: Audience doesn't match"),
    ("wrong iss", session_token(issuer="evil"), 401, "invalid token: invalid bearer token"),  # not ours: TokenReview says no
    ("alg none", jwt.encode(claims(), key="", algorithm="none", headers={"kid": KEYRING.active_kid}), 401,
     "invalid session token: token algorithm 'none' is not accepted"),
    ("unknown kid", jwt.encode(claims(), STRANGER.keys[STRANGER.active_kid], algorithm="ES256",
                               headers={"kid": "nosuchkey"}), 401, "invalid session token: token signed with unknown key id 'nosuchkey'"),
    ("token for another session", session_token(session="other"), 403, "this session token is for session grid/other, not grid/sim"),
    ("token for the same name elsewhere", session_token(namespace="lab"), 403, "this session token is for session lab/sim, not grid/sim"),
    ("token without a namespace", session_token(namespace=None), 403, "session token is not bound to a namespace"),
    ("other user's session", session_token(user="bob"), 403, "this session token belongs to user 'bob'"),
    ("other tenant's token", session_token(tenant="globex"), 403, "this session token is for tenant 'globex'"),
    ("valid session token", session_token(), 200, "ok"),
    ("valid kubernetes token", "k8s-alice", 200, "ok"),
]


@pytest.mark.parametrize(("row", "token", "status", "message"), MATRIX, ids=[row[0] for row in MATRIX])
async def test_authorization_matrix(row: str, token: str | None, status: int, message: str) -> None:
    got_status, got_message = await decide(token)
    assert (got_status, got_message[: len(message)]) == (status, message)


async def test_hmac_signed_with_the_public_key_is_refused() -> None:
    # The classic key-confusion attack: HS256 keyed with the (public) verification key.
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": KEYRING.active_kid}).encode()).rstrip(b"=")
    payload = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    import hashlib
    import hmac

    signature = base64.urlsafe_b64encode(hmac.new(public_pem(), header + b"." + payload, hashlib.sha256).digest()).rstrip(b"=")
    forged = (header + b"." + payload + b"." + signature).decode()
    assert await decide(forged) == (401, "invalid session token: token algorithm 'HS256' is not accepted (only ES256)")


async def test_tenant_header_rules() -> None:
    token = session_token()
    untenanted = {"metadata": {"name": "sim"}, "spec": {"user": "alice"}}
    assert await decide(token, ConsoleRequest("interact", "grid", "sim")) == (403, f"session 'sim' belongs to a tenant: send the {wire.TENANT_HEADER} header")
    assert (await decide(token, ConsoleRequest("interact", "grid", "sim", tenant="globex")))[0] == 403
    assert (await decide("k8s-alice", ConsoleRequest("interact", "grid", "sim", tenant="acme"), untenanted)) == (403, "tenant 'acme' does not own session 'sim'")
    assert await decide("k8s-alice", ConsoleRequest("interact", "grid", "sim"), untenanted) == (200, "ok")


async def test_kubernetes_permissions_decide_before_the_session_is_looked_up() -> None:
    reviewer = Reviewer()
    reviewer.users["k8s-eve"] = {"username": "eve", "groups": []}
    # A caller without permission gets 403 whether or not the session exists: existence is not revealed.
    assert (await decide("k8s-eve", reviewer=reviewer))[0] == 403
    assert (await decide("k8s-eve", reviewer=reviewer, session=None))[0] == 403
    assert (await decide("k8s-alice", reviewer=reviewer, session=None))[0] == 404
    # Monitoring needs `get`, typing needs `create`.
    reviewer.allowed.discard(("alice", "create", "grid", "sim"))
    assert await decide("k8s-alice", reviewer=reviewer) == (403, "user 'alice' may not create gridsessions/console 'sim' in namespace 'grid'")
    monitor = ConsoleRequest("interact", "grid", "sim", mode=wire.MODE_MONITOR, tenant="acme")
    assert await decide("k8s-alice", monitor, reviewer=reviewer) == (200, "ok")


async def test_an_unreachable_api_fails_closed() -> None:
    reviewer = Reviewer()
    reviewer.down = True
    status, message = await decide("k8s-alice", reviewer=reviewer)
    assert status == 503 and message.startswith("cannot review the token (TokenReview failed")
    status, message = await decide(session_token(), keys_fail=True)
    assert status == 503 and message.startswith("cannot verify session tokens right now")


async def test_sar_outage_after_a_successful_review_fails_closed() -> None:
    reviewer = Reviewer()
    authz = authorizer(reviewer)
    principal = await authz.authenticate("k8s-alice")
    reviewer.down = True
    with pytest.raises(Unavailable, match="SubjectAccessReview failed"):
        await authz.may_reach(principal, "grid", "sim", INTERACT)


async def test_reviews_are_cached_briefly() -> None:
    reviewer = Reviewer()
    authz = authorizer(reviewer)
    for _ in range(5):
        await authz.authenticate("k8s-alice")
    assert reviewer.calls == 1


async def test_token_audiences_are_enforced() -> None:
    reviewer = Reviewer()

    async def keys(kid: str | None) -> Any:
        return PUBLIC

    authz = Authorizer(keys=keys, reviewer=reviewer, issuer="gridop", audience="gridop", token_audiences=["gridop-gateway"])
    principal = await authz.authenticate("k8s-alice")  # the reviewer echoes the requested audience
    assert principal.user == "alice"

    async def wrong_audience(token: str, audiences: list[str]) -> Mapping[str, Any]:
        return {"authenticated": True, "user": {"username": "alice"}, "audiences": ["https://kubernetes.default.svc"]}

    reviewer.token_review = wrong_audience  # type: ignore[method-assign]
    with pytest.raises(Denied, match="not issued for audience"):
        await authz.authenticate("k8s-other")


async def test_a_burst_with_one_token_reviews_it_once() -> None:
    import asyncio

    reviewer = Reviewer()
    slow_review = reviewer.token_review

    async def slow(token: str, audiences: list[str]) -> Mapping[str, Any]:
        await asyncio.sleep(0.05)
        return await slow_review(token, audiences)

    reviewer.token_review = slow  # type: ignore[method-assign]
    authz = authorizer(reviewer)
    principals = await asyncio.gather(*(authz.authenticate("k8s-alice") for _ in range(50)))
    assert {p.user for p in principals} == {"alice"} and reviewer.calls == 1
