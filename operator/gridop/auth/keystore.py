"""The operator's signing keys, kept in a Secret and created on first start."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Mapping

from ..kube import AlreadyExists, KubeClient, resources
from .tokens import Keyring, SigningKeyError

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


class KeyringSource:
    """The current keyring, re-read periodically so a rotated or repaired Secret is picked up."""

    def __init__(self, client: KubeClient, namespace: str, name: str, *, refresh_seconds: float = 60.0):
        self._client = client
        self._namespace = namespace
        self._name = name
        self._refresh = refresh_seconds
        self._keyring: Keyring | None = None
        self._error: Exception | None = None
        self._loaded_at = float("-inf")

    async def get(self) -> Keyring:
        """The keyring, or SigningKeyError saying why it cannot be used."""
        now = asyncio.get_running_loop().time()
        if now - self._loaded_at >= self._refresh or (self._error is not None and now - self._loaded_at >= 5):
            try:
                self._keyring, self._error = await load_or_create_keyring(self._client, self._namespace, self._name), None
            except SigningKeyError as exc:
                self._keyring, self._error = None, exc
            self._loaded_at = now
        if self._keyring is None:
            assert self._error is not None
            raise self._error
        return self._keyring
