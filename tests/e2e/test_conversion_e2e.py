"""Conversion on a real API server, through the webhook of the operator installed in the cluster (the
chart: its Service, its certificate, the caBundle it injected). Needs GRIDOP_E2E_EXTERNAL_OPERATOR=1
(e.g. after `make up`): an operator this suite runs on its own machine is out of the API server's
reach (tests/e2e/test_upgrade_e2e.py shows how to reach one anyway)."""

from __future__ import annotations

import base64
import os
import subprocess

import pytest

from gridop.kube import KubeClient, resources
from gridop.kube.client import Resource
from tests.k8s_tools import tool

from .conftest import eventually

ALPHA = Resource("gridop.io", "v1alpha1", "taskbatches", "TaskBatch")


@pytest.fixture
def installed() -> None:
    if not os.environ.get("GRIDOP_E2E_EXTERNAL_OPERATOR"):
        pytest.skip("e2e conversion: needs the operator installed in the cluster (GRIDOP_E2E_EXTERNAL_OPERATOR=1 after `make up`)")


async def test_a_v1alpha1_taskbatch_converts_through_the_installed_webhook_and_reads_back_exactly(
    installed: None, kube: KubeClient, namespace: str,
) -> None:
    crd = await eventually(lambda: kube.get(resources.CRDS, "taskbatches.gridop.io"), timeout=30, what="the CRD")
    assert crd["spec"]["conversion"]["strategy"] == "Webhook"
    bundle = await eventually(lambda: _ca_bundle(kube), timeout=120, what="the operator's CA in the CRD")
    assert b"BEGIN CERTIFICATE" in base64.b64decode(bundle)

    retry = {"maxRetries": 1, "backoffSeconds": 0.0004, "backoffMultiplier": 1.5, "onError": "Fail"}
    await kube.create(ALPHA, {"apiVersion": "gridop.io/v1alpha1", "kind": "TaskBatch", "metadata": {"name": "converted"},
                              "spec": {"handler": "gridop.tasks.examples:square", "retry": retry}}, namespace)
    beta = await kube.get(resources.TASKBATCHES, "converted", namespace)  # stored at v1beta1, through the webhook
    assert beta["spec"]["onError"] == "Fail"
    assert (beta["spec"]["retry"]["backoffMilliseconds"], beta["spec"]["retry"]["backoffMultiplier"]) == (0, "1.5")
    alpha = await kube.get(ALPHA, "converted", namespace)  # back through the webhook: exactly as applied
    assert {k: alpha["spec"]["retry"][k] for k in retry} == retry
    # The operator reads it at v1beta1 and takes it on (its finalizer).
    await eventually(lambda: _finalized(kube, namespace), timeout=60, what="the operator took the batch on")

    kubectl = tool("kubectl")
    if kubectl is not None:  # the deprecation warning a user sees
        shown = subprocess.run([str(kubectl), "get", "taskbatches.v1alpha1.gridop.io", "-n", namespace],
                               capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert "gridop.io/v1alpha1 is deprecated" in shown.stderr and "gridop.io/v1beta1" in shown.stderr
    await kube.delete(resources.TASKBATCHES, "converted", namespace)


async def _ca_bundle(kube: KubeClient) -> str | None:
    crd = await kube.get(resources.CRDS, "taskbatches.gridop.io")
    return ((crd or {}).get("spec", {}).get("conversion", {}).get("webhook") or {}).get("clientConfig", {}).get("caBundle")


async def _finalized(kube: KubeClient, namespace: str) -> bool:
    tb = await kube.get(resources.TASKBATCHES, "converted", namespace)
    return "gridop.io/finalizer" in ((tb or {}).get("metadata", {}).get("finalizers") or [])
