"""Kubernetes Events about gridop's objects (core/v1, so `kubectl describe` shows them)."""

from __future__ import annotations

import datetime
import logging
import os
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp

from .client import KubeClient, KubeError
from .resources import EVENTS

log = logging.getLogger(__name__)


class EventRecorder:
    def __init__(self, client: KubeClient, component: str = "gridop-operator"):
        self._client = client
        self._component = component
        self._instance = os.environ.get("HOSTNAME", "gridop")

    async def record(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Post an event; failures are logged, never raised (events are best effort)."""
        meta = obj.get("metadata", {})
        namespace = meta.get("namespace") or "default"
        now = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "metadata": {"name": f"{meta.get('name')}.{uuid.uuid4().hex[:12]}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": self._component},
            "reportingComponent": f"gridop.io/{self._component}",
            "reportingInstance": self._instance,
        }
        try:
            await self._client.create(EVENTS, body, namespace)
        except KubeError as exc:
            if exc.being_terminated:
                return  # the namespace is being deleted: nothing new can be created there, events included
            log.warning("could not post event %s on %s/%s: %s", reason, namespace, meta.get("name"), exc)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("could not post event %s on %s/%s: %s", reason, namespace, meta.get("name"), exc)
