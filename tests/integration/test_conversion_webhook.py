"""The conversion webhook as the API server meets it: served over TLS by the real operator, trusted
through the caBundle the operator injected, called by the emulator for every TaskBatch read or
written at a version other than the one it holds; and the stored objects moved to v1beta1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography import x509

from bench.localredis import free_port
from gridop.client.tasks import AsyncGridConnector
from gridop.kube import ClusterAccess, KubeClient, KubeError, resources
from gridop.kube.client import Resource
from gridop.operator_main import run_operator
from gridop.settings import Settings
from gridop.webhook import ConversionWebhook, WebhookError
from gridop.webhook.certs import Material, issue_ca, issue_serving
from tests.emulator import ApiServer, as_before_v1beta1, register_crds
from tests.integration.conftest import NAMESPACE, eventually

ALPHA_BATCHES = Resource("gridop.io", "v1alpha1", "taskbatches", "TaskBatch")
ALPHA_SESSIONS = Resource("gridop.io", "v1alpha1", "gridsessions", "GridSession")
CRD = "taskbatches.gridop.io"


@contextlib.asynccontextmanager
async def operator_with_webhook(emulator: ApiServer, redis_url: str, **extra: Any) -> AsyncIterator[Settings]:
    port = free_port()
    settings = Settings(operator_namespace="gridop-system", log_format="text", redis_url=redis_url, webhook=True,
                        webhook_port=port, webhook_check_seconds=0.5, **extra)
    emulator.webhook_endpoint = f"127.0.0.1:{port}"  # the cluster's Service -> the operator's pod
    stop, ready = asyncio.Event(), asyncio.Event()
    access = ClusterAccess(server=str(emulator.url).rstrip("/"), namespace=NAMESPACE)
    task = asyncio.create_task(run_operator(settings, access, stop_flag=stop, ready_flag=ready, serve_metrics=False))
    done, _ = await asyncio.wait([task, asyncio.create_task(ready.wait())], timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    try:
        yield settings
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=20)


def secret_material(secret: dict[str, Any]) -> Material:
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    return Material(data["tls.crt"], data["tls.key"], data["ca.crt"])


async def served_certificate(port: int, ca: bytes) -> x509.Certificate:
    """The certificate the webhook presents, verified against `ca` for the Service's DNS name."""
    context = ssl.create_default_context(cadata=ca.decode())
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                              server_hostname="gridop-webhook.gridop-system.svc")
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der)


def alpha_batch(name: str, retry: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "gridop.io/v1alpha1", "kind": "TaskBatch", "metadata": {"name": name},
            "spec": {"handler": "gridop.tasks.examples:square", "workers": {"min": 1}, "retry": retry}}


async def test_the_operator_issues_its_certificate_injects_its_ca_and_converts_over_tls(
        emulator: ApiServer, api: KubeClient, redis_url: str) -> None:
    async with operator_with_webhook(emulator, redis_url) as settings:
        secret = await eventually(lambda: api.get(resources.SECRETS, "gridop-webhook-tls", "gridop-system"))
        material = secret_material(secret)
        bundle = await eventually(lambda: emulator.crd_object(CRD)["spec"]["conversion"]["webhook"]["clientConfig"].get("caBundle"))
        assert base64.b64decode(bundle) == material.ca
        assert (await served_certificate(settings.webhook_port, material.ca)).serial_number == material.serial()

        # A user's v1alpha1 manifest, with a delay v1beta1 cannot hold exactly (0.4 ms).
        retry = {"maxRetries": 1, "backoffSeconds": 0.0004, "backoffMultiplier": 1.5, "onError": "Fail"}
        await api.create(ALPHA_BATCHES, alpha_batch("converted", retry), NAMESPACE)
        # The operator reads it at v1beta1 (the emulator converted it through the webhook) and acts on
        # what it means: no retries of a raising handler.
        async with AsyncGridConnector({"redis_url": redis_url, "namespace": NAMESPACE}) as c:
            await c.send([{"x": 1}], session_id="converted")
            job = await eventually(lambda: api.get(resources.JOBS, "converted-workers", NAMESPACE))
        env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["GRIDOP_RETRY_ON_ERROR"] == "false"
        beta = await api.get(resources.TASKBATCHES, "converted", NAMESPACE)
        assert beta["spec"]["onError"] == "Fail"
        assert {k: beta["spec"]["retry"][k] for k in ("maxRetries", "backoffMilliseconds", "backoffMultiplier")} == \
            {"maxRetries": 1, "backoffMilliseconds": 0, "backoffMultiplier": "1.5"}
        # Read back at v1alpha1 it is exactly what was applied (kubectl apply's diff stays empty).
        alpha = await api.get(ALPHA_BATCHES, "converted", NAMESPACE)
        assert {k: alpha["spec"]["retry"][k] for k in retry} == retry
        assert "gridop.io/v1alpha1-spec" not in (alpha["metadata"].get("annotations") or {})
        assert emulator.conversions >= 2


async def test_a_certificate_near_its_end_is_renewed_from_the_same_ca(
        emulator: ApiServer, api: KubeClient, redis_url: str) -> None:
    async with operator_with_webhook(emulator, redis_url) as settings:
        secret = await eventually(lambda: api.get(resources.SECRETS, "gridop-webhook-tls", "gridop-system"))
        first = secret_material(secret)
        ca_key = base64.b64decode(secret["data"]["ca.key"])
        # Replace it with one that ends in a minute: in the last third of its life.
        now = datetime.datetime.now(tz=datetime.UTC)
        short = issue_serving(first.ca, ca_key, ["gridop-webhook", "gridop-webhook.gridop-system",
                                                  "gridop-webhook.gridop-system.svc",
                                                  "gridop-webhook.gridop-system.svc.cluster.local"],
                              now, datetime.timedelta(minutes=1))
        patched = copy.deepcopy(secret)
        patched["data"]["tls.crt"] = base64.b64encode(short.cert).decode()
        patched["data"]["tls.key"] = base64.b64encode(short.key).decode()
        await api.patch(resources.SECRETS, "gridop-webhook-tls", {"data": patched["data"]}, "gridop-system")

        async def renewed() -> Material | None:
            current = secret_material(await api.get(resources.SECRETS, "gridop-webhook-tls", "gridop-system"))
            return current if current.serial() not in (first.serial(), short.serial()) else None

        latest = await eventually(renewed, timeout=15)
        assert latest.ca == first.ca and latest.not_after() - now > datetime.timedelta(days=300)
        served = await eventually(lambda: _serial_is(settings.webhook_port, first.ca, latest.serial()), timeout=10)
        assert served
        bundle = emulator.crd_object(CRD)["spec"]["conversion"]["webhook"]["clientConfig"]["caBundle"]
        assert base64.b64decode(bundle) == first.ca  # the CA did not change: nothing to inject again


async def _serial_is(port: int, ca: bytes, serial: int) -> bool:
    return (await served_certificate(port, ca)).serial_number == serial


@pytest.fixture
def emulator_at_v1alpha1(emulator: ApiServer) -> ApiServer:
    as_before_v1beta1(emulator)
    return emulator


async def test_objects_stored_at_v1alpha1_are_rewritten_once_and_stored_versions_trimmed(
        emulator_at_v1alpha1: ApiServer, api: KubeClient, redis_url: str) -> None:
    emulator = emulator_at_v1alpha1
    for i in range(3):
        await api.create(ALPHA_BATCHES, alpha_batch(f"old-{i}", {"backoffSeconds": 2, "onError": "Retry"}), NAMESPACE)
        await api.create(ALPHA_SESSIONS, {"apiVersion": "gridop.io/v1alpha1", "kind": "GridSession", "metadata": {"name": f"s{i}"},
                                          "spec": {"user": "alice", "node": "worker-1", "config": {"airgen": {}, "grid": {}}}},
                         NAMESPACE)
    assert {v for (g, p, _, _), v in emulator.encoded.items() if g == "gridop.io"} == {"v1alpha1"}
    register_crds(emulator)  # the upgrade: v1beta1 served and stored
    assert emulator.crd_object(CRD)["status"]["storedVersions"] == ["v1alpha1", "v1beta1"]

    async with operator_with_webhook(emulator, redis_url):
        def trimmed() -> bool:
            return all(emulator.crd_object(f"{p}.gridop.io")["status"]["storedVersions"] == ["v1beta1"]
                       for p in ("gridsessions", "taskbatches", "taskpools"))
        await eventually(trimmed, timeout=30, what="storedVersions trimmed to v1beta1")
        assert {k[3]: v for k, v in emulator.encoded.items() if k[0] == "gridop.io"} == \
            {**{f"old-{i}": "v1beta1" for i in range(3)}, **{f"s{i}": "v1beta1" for i in range(3)}}
        migrated = emulator.count("gridop-operator", "UPDATE", "taskbatches")
        batch = await api.get(resources.TASKBATCHES, "old-0", NAMESPACE)
        assert batch["spec"]["retry"]["backoffMilliseconds"] == 2000

    # A restart finds nothing to do: one read of each CRD, no object written for the migration.
    before = emulator.count("gridop-operator", "UPDATE", "taskbatches")
    async with operator_with_webhook(emulator, redis_url):
        await asyncio.sleep(2)
    assert migrated >= 3
    assert emulator.count("gridop-operator", "UPDATE", "taskbatches") - before <= 3  # status writes only, if any


async def test_the_webhook_rides_out_an_api_server_outage_at_start() -> None:
    """The certificate's Secret unreadable for a while (the API server restarting): the webhook waits
    with backoff and then serves, rather than ending the operator."""
    now = datetime.datetime.now(tz=datetime.UTC)
    ca_cert, ca_key = issue_ca("test-ca", now)
    material = issue_serving(ca_cert, ca_key, ["gridop-webhook.gridop-system.svc"], now, datetime.timedelta(days=1))

    class Unavailable:
        calls = 0

        async def current(self) -> Material:
            self.calls += 1
            if self.calls < 3:
                raise KubeError(503, "the server is currently unable to handle the request")
            return material

        async def inject(self, ca: bytes) -> None:
            return None

    source, port = Unavailable(), free_port()
    webhook = ConversionWebhook(source, "127.0.0.1", port, check_seconds=60)
    await asyncio.wait_for(webhook.start(), timeout=10)
    try:
        assert source.calls == 3
        assert (await served_certificate(port, ca_cert)).serial_number == material.serial()
    finally:
        await webhook.stop()


async def test_a_secret_without_a_usable_ca_is_named_in_one_line(emulator: ApiServer, api: KubeClient, redis_url: str) -> None:
    """A Secret someone else wrote under the webhook's name: the operator does not start, and says
    which Secret and what to do (and `gridop operator` prints that line and exits 1)."""
    await api.create(resources.SECRETS, {"metadata": {"name": "gridop-webhook-tls"}, "type": "kubernetes.io/tls",
                                         "data": {"tls.crt": base64.b64encode(b"not a certificate").decode()}},
                     "gridop-system")
    with pytest.raises(WebhookError) as refused:
        async with operator_with_webhook(emulator, redis_url):
            pass
    assert "Secret gridop-system/gridop-webhook-tls holds no usable CA" in str(refused.value)
    assert "delete it" in str(refused.value)
