import datetime

import pytest

from gridop.auth import Keyring, SigningKeyError, TokenError, generate_signing_key, issue_session_token, verify_token

NOW = datetime.datetime(2026, 11, 1, 12, 0, tzinfo=datetime.UTC)


def issue(keyring: Keyring, *, now: datetime.datetime = NOW, lifetime: int = 3600, tenant: str | None = "acme") -> str:
    return issue_session_token(
        keyring, issuer="gridop", audience="gridop", user="alice", session="s1", tenant=tenant,
        lifetime=datetime.timedelta(seconds=lifetime), now=now,
    )


def test_issue_then_verify_carries_the_session_claims() -> None:
    keyring = Keyring.generate()
    token = issue(keyring, now=datetime.datetime.now(tz=datetime.UTC))
    claims = verify_token(keyring, token, audience="gridop", issuer="gridop")
    assert (claims["sub"], claims["sid"], claims["tenant"], claims["iss"], claims["aud"]) == ("alice", "s1", "acme", "gridop", "gridop")
    assert claims["exp"] - claims["iat"] == 3600


def test_rotation_old_keys_still_verify_new_tokens_use_the_new_key() -> None:
    old = Keyring.generate()
    token_by_old = issue(old, now=datetime.datetime.now(tz=datetime.UTC))
    kid, pem = generate_signing_key()
    rotated = Keyring.from_secret_data({**old.to_secret_data(), f"{kid}.pem": pem, "active-kid": kid.encode()})
    assert rotated.active_kid == kid != old.active_kid
    assert verify_token(rotated, token_by_old, audience="gridop", issuer="gridop")["sid"] == "s1"
    import jwt

    assert jwt.get_unverified_header(issue(rotated))["kid"] == kid


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda k, t: (k, t[:-4] + "AAAA"), "Signature"),
        (lambda k, t: (Keyring.generate(), t), "unknown key id"),
        (lambda k, t: (k, "not-a-jwt"), "malformed"),
    ],
)
def test_tampered_or_foreign_tokens_are_refused(mutate, message) -> None:
    keyring = Keyring.generate()
    keyring2, token = mutate(keyring, issue(keyring, now=datetime.datetime.now(tz=datetime.UTC)))
    with pytest.raises(TokenError, match=message):
        verify_token(keyring2, token, audience="gridop", issuer="gridop")


def test_expired_and_wrong_audience_tokens_are_refused() -> None:
    keyring = Keyring.generate()
    with pytest.raises(TokenError, match="expired"):
        verify_token(keyring, issue(keyring, now=NOW), audience="gridop", issuer="gridop")
    fresh = issue(keyring, now=datetime.datetime.now(tz=datetime.UTC))
    with pytest.raises(TokenError, match=r"[Aa]udience"):
        verify_token(keyring, fresh, audience="someone-else", issuer="gridop")


@pytest.mark.parametrize(
    "data, message",
    [
        ({}, "no signing keys"),
        ({"k1.pem": b"garbage"}, "'k1.pem' is not a readable PEM"),
        ({"k1.pem": generate_signing_key()[1], "k2.pem": generate_signing_key()[1]}, "no 'active-kid'"),
        ({"k1.pem": generate_signing_key()[1], "active-kid": b"k9"}, "no k9.pem"),
    ],
)
def test_unusable_key_secrets_say_what_is_wrong(data, message) -> None:
    with pytest.raises(SigningKeyError, match=message):
        Keyring.from_secret_data(data)


def test_jwks_publishes_public_keys_only() -> None:
    keyring = Keyring.generate()
    jwks = keyring.public_jwks()
    assert [k["kid"] for k in jwks["keys"]] == [keyring.active_kid]
    assert "d" not in jwks["keys"][0] and jwks["keys"][0]["crv"] == "P-256"
