"""Per-session JWTs signed with ES256.

A keyring holds every signing key by key id (`kid`); exactly one is active and signs new
tokens, the others still verify the tokens they signed. Rotation is: add a key, make it active,
drop the old one once its tokens have expired.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ALGORITHM = "ES256"
ACTIVE_KEY = "active-kid"
KEY_SUFFIX = ".pem"


class SigningKeyError(ValueError):
    """The signing keys cannot be used; the message says which key and why."""


class TokenError(ValueError):
    """A token failed verification; the message says why (expired, wrong audience, unknown key...)."""


def _kid(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode()[:16].replace("_", "x").replace("-", "y")


def generate_signing_key() -> tuple[str, bytes]:
    """A new P-256 key: (kid, PKCS#8 PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return _kid(key.public_key()), pem


@dataclasses.dataclass(frozen=True)
class Keyring:
    keys: Mapping[str, ec.EllipticCurvePrivateKey]
    active_kid: str

    @classmethod
    def generate(cls) -> Keyring:
        kid, pem = generate_signing_key()
        return cls.from_secret_data({f"{kid}{KEY_SUFFIX}": pem, ACTIVE_KEY: kid.encode()})

    @classmethod
    def from_secret_data(cls, data: Mapping[str, bytes]) -> Keyring:
        """Parse `<kid>.pem` entries and `active-kid` (the Secret's decoded data)."""
        keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        for name, value in data.items():
            if not name.endswith(KEY_SUFFIX):
                continue
            kid = name[: -len(KEY_SUFFIX)]
            try:
                key = serialization.load_pem_private_key(value, password=None)
            except (ValueError, TypeError) as exc:
                raise SigningKeyError(f"signing key {name!r} is not a readable PEM private key: {exc}") from exc
            if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
                raise SigningKeyError(f"signing key {name!r} must be an EC P-256 key for {ALGORITHM}")
            keys[kid] = key
        if not keys:
            raise SigningKeyError("no signing keys: expected entries named '<kid>.pem'")
        active = data.get(ACTIVE_KEY, b"").decode().strip() or None
        if active is None:
            if len(keys) > 1:
                raise SigningKeyError(f"several signing keys but no {ACTIVE_KEY!r} entry naming the one to sign with")
            active = next(iter(keys))
        if active not in keys:
            raise SigningKeyError(f"{ACTIVE_KEY!r} is {active!r}, but there is no {active}{KEY_SUFFIX} entry")
        return cls(keys=keys, active_kid=active)

    def to_secret_data(self) -> dict[str, bytes]:
        data = {
            f"{kid}{KEY_SUFFIX}": key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            for kid, key in self.keys.items()
        }
        data[ACTIVE_KEY] = self.active_kid.encode()
        return data

    def public_jwks(self) -> dict[str, Any]:
        """The verification keys as a JWK Set, for components that only verify."""
        result = []
        for kid, key in self.keys.items():
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
            result.append({**jwk, "kid": kid, "alg": ALGORITHM, "use": "sig"})
        return {"keys": result}


def issue_session_token(
    keyring: Keyring,
    *,
    issuer: str,
    audience: str,
    user: str,
    session: str,
    tenant: str | None,
    lifetime: datetime.timedelta,
    now: datetime.datetime,
    namespace: str | None = None,
) -> str:
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": user,
        "sid": session,
        "tenant": tenant,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int((now + lifetime).timestamp()),
        "jti": uuid.uuid4().hex,
    }
    if namespace is not None:
        claims["ns"] = namespace  # binds the token to one session object, not to a name in any namespace
    return jwt.encode(
        claims, keyring.keys[keyring.active_kid], algorithm=ALGORITHM, headers={"kid": keyring.active_kid}
    )


def token_expiry(token: str) -> datetime.datetime | None:
    """When a token expires, read without verification (to decide when to renew our own tokens)."""
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return None
    return datetime.datetime.fromtimestamp(exp, tz=datetime.UTC) if exp else None


VerificationKeys = Mapping[str, ec.EllipticCurvePublicKey]


def public_keys_from_jwks(jwks: Mapping[str, Any]) -> dict[str, ec.EllipticCurvePublicKey]:
    """kid -> public key from a JWK Set; entries that are not ES256 P-256 keys are refused."""
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for entry in jwks.get("keys") or []:
        kid = entry.get("kid") if isinstance(entry, Mapping) else None
        if not kid or entry.get("kty") != "EC" or entry.get("crv") != "P-256" or entry.get("alg", ALGORITHM) != ALGORITHM:
            raise SigningKeyError(f"JWK {kid!r} is not an {ALGORITHM} P-256 key")
        try:
            key = jwt.algorithms.ECAlgorithm.from_jwk(dict(entry))
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise SigningKeyError(f"JWK {kid!r} is unreadable: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise SigningKeyError(f"JWK {kid!r} must hold a public key only")
        keys[kid] = key
    return keys


def verify_token(
    keys: Keyring | VerificationKeys, token: str, *, audience: str, issuer: str, leeway: float = 5.0
) -> dict[str, Any]:
    """The verified claims; TokenError otherwise.

    The algorithm is pinned (ES256: `alg: none` and HMAC signed with the public key fail), the key
    is chosen by `kid` among the known ones, and exp/iss/aud/sub/sid are required.
    """
    public = {kid: key.public_key() for kid, key in keys.keys.items()} if isinstance(keys, Keyring) else keys
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenError(f"malformed token: {exc}") from exc
    if header.get("alg") != ALGORITHM:
        raise TokenError(f"token algorithm {header.get('alg')!r} is not accepted (only {ALGORITHM})")
    kid = header.get("kid")
    key = public.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise TokenError(f"token signed with unknown key id {kid!r}")
    try:
        return jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options={"require": ["exp", "iss", "aud", "sub", "sid"]},
        )
    except jwt.PyJWTError as exc:
        raise TokenError(str(exc)) from exc


def unverified_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT read without verification (only to route it to the right verifier)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    return claims if isinstance(claims, dict) else None
