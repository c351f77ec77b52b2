"""The workers a batch or a pool runs: a work-queue Job for a TaskBatch, a Deployment for a TaskPool.

Pure functions from (object metadata, spec, settings) to object bodies.
"""

from __future__ import annotations

from typing import Any

from ..api.v1beta1 import taskbatch, taskpool
from ..api.v1beta1.taskbatch import OnError, TaskBatchSpec
from ..api.v1beta1.taskpool import TaskPoolSpec
from ..kube.meta import TEMPLATE_HASH, owner_reference, template_hash
from ..settings import Settings
from ..tasks.store import key_prefix

BATCH_LABEL = "gridop.io/taskbatch"
POOL_LABEL = "gridop.io/taskpool"
WORKER_METRICS_PORT = 9100
# Prometheus's conventional scrape annotations (the chart's PodMonitor selects worker pods by label too).
WORKER_SCRAPE = {"prometheus.io/scrape": "true", "prometheus.io/port": str(WORKER_METRICS_PORT),
                 "prometheus.io/path": "/metrics"}


def job_name(name: str) -> str:
    return f"{name}-workers"


def deployment_name(name: str) -> str:
    return f"{name}-pool"


def worker_pod_spec(spec: TaskBatchSpec | TaskPoolSpec, settings: Settings, namespace: str, redis_secret: str,
                    target: list[dict[str, Any]], on_error: OnError, restart_policy: str) -> dict[str, Any]:
    """The pod of a batch's or a pool's workers. `target` says what they serve (GRIDOP_SESSION_ID
    or GRIDOP_POOL). The data-plane URL comes from `redis_secret` in the namespace (the operator
    keeps it, with credentials limited to this namespace's keys), so no password appears here."""
    env = [
        *target,
        {"name": "GRIDOP_KEY_PREFIX", "value": key_prefix(namespace)},
        {"name": "GRIDOP_HANDLER", "value": spec.handler},
        {"name": "GRIDOP_BATCH_SIZE", "value": str(spec.batch_size)},
        {"name": "GRIDOP_HEARTBEAT_SECONDS", "value": str(spec.heartbeat_seconds)},
        {"name": "GRIDOP_LEASE_SECONDS", "value": str(spec.lease_seconds)},
        {"name": "GRIDOP_RETRY_ON_ERROR", "value": "true" if on_error == OnError.RETRY else "false"},
        {"name": "GRIDOP_LOG_FORMAT", "value": "json"},
        {"name": "GRIDOP_METRICS_PORT", "value": str(WORKER_METRICS_PORT)},
        *({"name": e.name, "value": e.value} for e in spec.workers.env),
    ]
    if spec.task_timeout_seconds:
        env.append({"name": "GRIDOP_TASK_TIMEOUT_SECONDS", "value": str(spec.task_timeout_seconds)})
    env.append({"name": "GRIDOP_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": redis_secret, "key": "url"}}})
    container: dict[str, Any] = {
        "name": "worker",
        "image": spec.image or settings.image,
        "args": ["worker"],
        "env": env,
        "ports": [{"name": "metrics", "containerPort": WORKER_METRICS_PORT, "protocol": "TCP"}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if spec.workers.resources:
        container["resources"] = spec.workers.resources.to_kube()
    pod_spec: dict[str, Any] = {
        "restartPolicy": restart_policy,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # Workers drain on SIGTERM: they finish the claim in hand before exiting.
        "terminationGracePeriodSeconds": max(30, (spec.task_timeout_seconds or 0) + 10),
        "containers": [container],
    }
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    return pod_spec


def _labels(label: str, name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "gridop-worker", "app.kubernetes.io/managed-by": "gridop", label: name}


def worker_job(meta: dict[str, Any], spec: TaskBatchSpec, settings: Settings, parallelism: int,
               redis_secret: str) -> dict[str, Any]:
    """The work-queue Job of a batch."""
    name = meta["name"]
    labels = _labels(BATCH_LABEL, name)
    pod_spec = worker_pod_spec(spec, settings, meta["namespace"], redis_secret,
                               [{"name": "GRIDOP_SESSION_ID", "value": name}], spec.on_error, "OnFailure")
    return {
        "metadata": {"name": job_name(name), "namespace": meta["namespace"], "labels": labels,
                     "ownerReferences": [owner_reference(taskbatch.KIND, meta)]},
        "spec": {
            # Work-queue Job: pods pull until the queue is empty, then exit 0; parallelism scales.
            "parallelism": parallelism,
            "backoffLimit": 1000,
            "suspend": spec.suspend,
            "template": {"metadata": {"labels": labels, "annotations": WORKER_SCRAPE}, "spec": pod_spec},
        },
    }


def pool_deployment(meta: dict[str, Any], spec: TaskPoolSpec, settings: Settings, replicas: int,
                    redis_secret: str) -> dict[str, Any]:
    """The worker Deployment of a pool, its template's hash in an annotation (a changed spec shows
    as a changed hash, and the template is patched)."""
    name = meta["name"]
    labels = _labels(POOL_LABEL, name)
    target = [{"name": "GRIDOP_POOL", "value": name},
              {"name": "GRIDOP_RESULT_RETENTION_SECONDS", "value": str(spec.result_retention_seconds)}]
    pod_spec = worker_pod_spec(spec, settings, meta["namespace"], redis_secret, target, spec.on_error, "Always")
    template = {"metadata": {"labels": labels, "annotations": WORKER_SCRAPE}, "spec": pod_spec}
    return {
        "metadata": {"name": deployment_name(name), "namespace": meta["namespace"], "labels": labels,
                     "annotations": {TEMPLATE_HASH: template_hash(template)},
                     "ownerReferences": [owner_reference(taskpool.KIND, meta)]},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {POOL_LABEL: name}},
            # Scaling in stops workers with SIGTERM: they finish the claim in hand (about 0.1 s of work).
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": template,
        },
    }
