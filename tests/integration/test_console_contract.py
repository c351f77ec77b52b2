"""The operator's half of the console contract, through the real operator and the API emulator."""

from __future__ import annotations

import base64
import json

import kmock
import pytest

from gridop.kube import KubeClient, resources
from gridop.settings import Settings

from .conftest import NAMESPACE, Kubelet, eventually, gridsession, node, seed
from .test_session_lifecycle import phase_is


@pytest.fixture
def nodes(emulator: kmock.KubernetesEmulator) -> None:
    seed(emulator, "v1/nodes", node("worker-1", "172.18.0.3", {"gridop.io/resource-node": "true"}))


@pytest.fixture
def settings() -> Settings:
    return Settings(operator_namespace="gridop-system", resync_seconds=5.0, log_format="text", gateway_url="wss://grid.example/console")


async def test_the_console_contract_public_keys_verify_the_session_token_and_urls_name_the_namespace(
    emulator: kmock.KubernetesEmulator, nodes: None, operator, api: KubeClient, auto_kubelet: Kubelet
) -> None:
    """What the gateway relies on: the operator publishes the public keys, and the token names its session."""
    from gridop.auth.keystore import JWKS_KEY
    from gridop.auth.tokens import public_keys_from_jwks, verify_token

    seed(emulator, "gridop.io/v1beta1/gridsessions", gridsession("consoled", node="worker-1", tenant="acme"))
    gs = await eventually(lambda: phase_is(api, "consoled", "Running"), what="the session runs")
    assert gs["status"]["console"] == {
        "interact": f"wss://grid.example/console/interact/{NAMESPACE}/consoled",
        "tail": f"wss://grid.example/console/tail/{NAMESPACE}/consoled",
    }
    public = await api.get(resources.CONFIGMAPS, "gridop-signing-keys-public", "gridop-system")
    assert public is not None, "the operator did not publish its public keys"
    keys = public_keys_from_jwks(json.loads(public["data"][JWKS_KEY]))
    assert not any("d" in k for k in json.loads(public["data"][JWKS_KEY])["keys"]), "a private key was published"
    secret = await api.get(resources.SECRETS, "consoled-token", NAMESPACE)
    token = base64.b64decode(secret["data"]["token"]).decode()
    claims = verify_token(keys, token, audience="gridop", issuer="gridop")
    assert (claims["ns"], claims["sid"], claims["sub"], claims["tenant"]) == (NAMESPACE, "consoled", "alice", "acme")
