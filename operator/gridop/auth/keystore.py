"""The operator's signing keys, kept in a Secret and created on first start."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Mapping
from typing import Any

from ..kube import AlreadyExists, KubeClient, KubeError, resources
from .tokens import Keyring, SigningKeyError, VerificationKeys, public_keys_from_jwks

JWKS_KEY = "jwks.json"

log = logging.getLogger(__name__)


def _decode(data: Mapping[str, str] | None) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (data or {}).items()}


async def load_or_create_keyring(client: KubeClient, namespace: str, name: str) -> Keyring:
    """Read the keyring Secret; generate and store one when absent, so a fresh install just works.

    Raises SigningKeyError when the Secret exists but cannot be used: the operator never
    overwrites keys an administrator put there.
    """
    secret = await client.get(resources.SECRETS, name, namespace)
    if secret is not None:
        return Keyring.from_secret_data(_decode(secret.get("data")))
    keyring = Keyring.generate()
    body = {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "gridop", "app.kubernetes.io/component": "signing-keys"},
        },
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in keyring.to_secret_data().items()},
    }
    try:
        await client.create(resources.SECRETS, body, namespace)
        log.info("created signing key secret %s/%s with key id %s", namespace, name, keyring.active_kid)
        return keyring
    except AlreadyExists:  # another replica won the race: use theirs
        secret = await client.get(resources.SECRETS, name, namespace)
        return Keyring.from_secret_data(_decode((secret or {}).get("data")))


def public_config_map_name(secret_name: str) -> str:
    """The ConfigMap with the public half of the signing keys (what verifiers such as the gateway read)."""
    return f"{secret_name}-public"


def _jwks_text(keyring: Keyring) -> str:
    return json.dumps(keyring.public_jwks(), sort_keys=True, indent=1)


async def publish_public_keys(client: KubeClient, namespace: str, secret_name: str, keyring: Keyring) -> None:
    """Create or update the public JWK Set ConfigMap; verifiers never need the private keys."""
    name = public_config_map_name(secret_name)
    body: dict[str, Any] = {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "gridop", "app.kubernetes.io/component": "signing-keys"},
        },
        "data": {JWKS_KEY: _jwks_text(keyring)},
    }
    try:
        await client.create(resources.CONFIGMAPS, body, namespace)
        log.info("published the public signing keys in configmap %s/%s", namespace, name)
    except AlreadyExists:
        await client.patch(resources.CONFIGMAPS, name, {"data": body["data"]}, namespace)


class KeyringSource:
    """The current keyring, re-read periodically so a rotated or repaired Secret is picked up.

    Each new set of keys is published as a public JWK Set (see `publish_public_keys`).
    """

    def __init__(self, client: KubeClient, namespace: str, name: str, *, refresh_seconds: float = 60.0):
        self._client = client
        self._namespace = namespace
        self._name = name
        self._refresh = refresh_seconds
        self._keyring: Keyring | None = None
        self._error: Exception | None = None
        self._loaded_at = float("-inf")
        self._published: str | None = None

    async def get(self) -> Keyring:
        """The keyring, or SigningKeyError saying why it cannot be used."""
        now = asyncio.get_running_loop().time()
        if now - self._loaded_at >= self._refresh or (self._error is not None and now - self._loaded_at >= 5):
            try:
                self._keyring, self._error = await load_or_create_keyring(self._client, self._namespace, self._name), None
            except SigningKeyError as exc:
                self._keyring, self._error = None, exc
            self._loaded_at = now
            if self._keyring is not None and _jwks_text(self._keyring) != self._published:
                try:
                    await publish_public_keys(self._client, self._namespace, self._name, self._keyring)
                    self._published = _jwks_text(self._keyring)
                except KubeError as exc:  # verifiers keep the last published keys; retried next refresh
                    log.warning("could not publish the public signing keys: %s", exc)
        if self._keyring is None:
            assert self._error is not None
            raise self._error
        return self._keyring


class PublicKeySource:
    """The verification keys, read from the public JWK Set ConfigMap the operator publishes.

    Re-read every `refresh_seconds`, and sooner (at most every `min_refresh_seconds`) when a token
    names a key id not seen yet, so a rotation reaches verifiers within seconds.
    """

    def __init__(
        self, client: KubeClient, namespace: str, secret_name: str, *,
        refresh_seconds: float = 60.0, min_refresh_seconds: float = 5.0,
    ):
        self._client = client
        self._namespace = namespace
        self._name = public_config_map_name(secret_name)
        self._refresh = refresh_seconds
        self._min_refresh = min_refresh_seconds
        self._keys: dict[str, Any] | None = None
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def get(self, kid: str | None = None) -> VerificationKeys:
        """The known keys; raises KubeError/OSError when they were never readable (callers answer 503)."""
        async with self._lock:
            now = asyncio.get_running_loop().time()
            age = now - self._loaded_at
            if self._keys is None or age >= self._refresh or (kid is not None and kid not in self._keys and age >= self._min_refresh):
                try:
                    self._keys = await self._load()
                    self._loaded_at = now
                except (TimeoutError, KubeError, OSError, SigningKeyError):
                    if self._keys is None:
                        raise
                    log.warning("could not refresh the public signing keys; using the last ones read", exc_info=True)
            return dict(self._keys)

    async def _load(self) -> dict[str, Any]:
        cm = await self._client.get(resources.CONFIGMAPS, self._name, self._namespace)
        if cm is None:
            raise SigningKeyError(f"configmap {self._namespace}/{self._name} with the public signing keys does not exist yet")
        text = (cm.get("data") or {}).get(JWKS_KEY)
        if not text:
            raise SigningKeyError(f"configmap {self._namespace}/{self._name} has no {JWKS_KEY}")
        try:
            return public_keys_from_jwks(json.loads(text))
        except ValueError as exc:
            raise SigningKeyError(f"configmap {self._namespace}/{self._name}: {exc}") from exc
