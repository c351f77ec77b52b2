"""The cache-driven session pass: own writes, their echoes, stale views and missing children.

The caches are real informers fed watch events by hand (as the watch stream would); the API is a
small recording double that answers writes with new resourceVersions, so every request a pass
makes is visible.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from gridop.auth import Keyring
from gridop.kube import AlreadyExists
from gridop.kube.events import EventRecorder
from gridop.kube.workqueue import WorkQueue
from gridop.sessions.cache import SessionCache
from gridop.sessions.reconciler import SessionReconciler
from gridop.settings import Settings

from .sessions import NOW

NS = "grid"


class Api:
    """A recording stand-in for KubeClient: objects by (plural, namespace, name)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self._rv = itertools.count(100)

    def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj.setdefault("metadata", {})["resourceVersion"] = str(next(self._rv))
        return copy.deepcopy(obj)

    async def get(self, res: Any, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        self.calls.append(("get", res.plural))
        obj = self.objects.get((res.plural, namespace, name))
        return copy.deepcopy(obj) if obj else None

    async def create(self, res: Any, body: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        self.calls.append(("create", res.plural))
        key = (res.plural, namespace, body["metadata"]["name"])
        if key in self.objects:
            raise AlreadyExists(409, "already exists", "AlreadyExists")
        obj = copy.deepcopy(body)
        obj["metadata"] = {**obj["metadata"], "namespace": namespace, "uid": f"uid-{key[2]}"}
        self.objects[key] = obj
        return self._stamp(obj)

    async def patch(self, res: Any, name: str, body: dict[str, Any], namespace: str | None = None, *,
                    subresource: str | None = None, **_: Any) -> dict[str, Any]:
        self.calls.append(("patch", res.plural + (f"/{subresource}" if subresource else "")))
        obj = self.objects[(res.plural, namespace, name)]
        for field, value in body.items():
            if isinstance(value, dict):
                obj.setdefault(field, {}).update({k: v for k, v in value.items() if v is not None})
            else:
                obj[field] = value
        return self._stamp(obj)

    async def delete_object(self, res: Any, name: str, namespace: str | None = None, **_: Any) -> dict[str, Any] | None:
        self.calls.append(("delete", res.plural))
        return self.objects.pop((res.plural, namespace, name), None)

    def writes(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0] != "get" and c[1] != "events"]


class Keys:
    def __init__(self) -> None:
        self.keyring = Keyring.generate()

    async def get(self) -> Keyring:
        return self.keyring


@pytest.fixture
def api() -> Api:
    return Api()


@pytest.fixture
def world(api: Api) -> tuple[SessionReconciler, SessionCache, list[str]]:
    cache = SessionCache(api, [NS])  # type: ignore[arg-type]
    woken: list[str] = []
    for informer in cache.all:
        informer.add_listener(lambda kind, obj, woken=woken: woken.append(f"{kind} {obj['metadata']['name']}"))
    node = {"metadata": {"name": "w1", "resourceVersion": "1"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    cache.nodes.deliver("ADDED", node)
    reconciler = SessionReconciler(api, Settings(operator_namespace="gridop-system"), Keys(), EventRecorder(api),  # type: ignore[arg-type]
                                   cache, clock=lambda: NOW)
    return reconciler, cache, woken


def new_session(api: Api, cache: SessionCache) -> dict[str, Any]:
    body = {"apiVersion": "gridop.io/v1beta1", "kind": "GridSession",
            "metadata": {"name": "s1", "namespace": NS, "uid": "uid-s1", "generation": 1, "resourceVersion": "10"},
            "spec": {"user": "alice", "node": "w1", "config": {"airgen": {}, "grid": {}}}}
    api.objects[("gridsessions", NS, "s1")] = copy.deepcopy(body)
    cache.sessions.deliver("ADDED", body)
    return body


async def test_a_new_session_is_started_from_the_caches_without_reading_the_api(world, api: Api) -> None:
    reconciler, cache, _ = world
    new_session(api, cache)
    await reconciler.reconcile(NS, "s1", due=False)
    assert sorted(api.writes()) == [("create", "configmaps"), ("create", "pods"), ("create", "secrets"),
                                    ("patch", "gridsessions/status")]
    assert not [c for c in api.calls if c[0] == "get"]
    # The Secret is cached as metadata only: the token never sits in the operator's memory.
    secret = cache.secrets.get(NS, "s1-token")
    assert secret is not None and "data" not in secret


async def test_own_writes_are_seen_before_their_echo_and_their_echo_wakes_nobody(world, api: Api) -> None:
    reconciler, cache, woken = world
    new_session(api, cache)
    await reconciler.reconcile(NS, "s1", due=False)
    api.calls.clear()
    woken.clear()

    # A deadline pass before any echo: the cache already holds the pod, config and token it
    # created, so nothing is created twice (no create storm from a lagging watch).
    await reconciler.reconcile(NS, "s1", due=True)
    assert api.writes() == []

    # The echoes arrive: they change nothing the pass saw, wake no listener, and an event-driven
    # pass is skipped outright.
    for informer, plural, name in ((cache.pods, "pods", "s1"), (cache.config_maps, "configmaps", "s1-config"),
                                   (cache.secrets, "secrets", "s1-token"), (cache.sessions, "gridsessions", "s1")):
        obj = copy.deepcopy(api.objects[(plural, NS, name)])
        obj["metadata"]["resourceVersion"] = informer.get(NS, name)["metadata"]["resourceVersion"]
        informer.deliver("MODIFIED" if informer is cache.sessions else "ADDED", obj)
    assert woken == []
    skipped = reconciler.skipped
    await reconciler.reconcile(NS, "s1", due=False)
    assert reconciler.skipped == skipped + 1 and api.calls == []


async def test_a_change_that_lands_mid_pass_still_gets_its_own_pass(world, api: Api) -> None:
    reconciler, cache, _ = world
    new_session(api, cache)
    await reconciler.reconcile(NS, "s1", due=False)
    # The watch delivers the pod as created, then the kubelet's update (in that order, always).
    created = cache.pods.get(NS, "s1")
    cache.pods.deliver("ADDED", copy.deepcopy(created))
    pod = copy.deepcopy(created)
    pod["metadata"]["resourceVersion"] = "900"
    pod["spec"]["nodeName"] = "w1"
    pod["status"] = {"phase": "Running", "hostIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
    cache.pods.deliver("MODIFIED", pod)
    api.calls.clear()
    await reconciler.reconcile(NS, "s1", due=False)
    assert api.writes() == [("patch", "gridsessions/status")]
    assert cache.sessions.get(NS, "s1")["status"]["phase"] == "Running"


async def test_a_stale_overlay_never_hides_a_newer_watch_version(world, api: Api) -> None:
    _, cache, _ = world
    body = new_session(api, cache)
    # The watch delivered versions 11 and 12 before the answer to our write (version 11) came back.
    for rv in ("11", "12"):
        cache.sessions.deliver("MODIFIED", {**body, "metadata": {**body["metadata"], "resourceVersion": rv}})
    cache.sessions.remember({**body, "metadata": {**body["metadata"], "resourceVersion": "11"}})
    assert cache.sessions.get(NS, "s1")["metadata"]["resourceVersion"] == "12"


async def test_a_child_someone_else_holds_is_read_once_not_created_in_a_loop(world, api: Api) -> None:
    reconciler, cache, _ = world
    api.objects[("pods", NS, "s1")] = {"metadata": {"name": "s1", "namespace": NS, "uid": "foreign",
                                                      "resourceVersion": "5"}, "spec": {}}
    new_session(api, cache)
    await reconciler.reconcile(NS, "s1", due=False)
    assert api.calls.count(("create", "pods")) == 1 and api.calls.count(("get", "pods")) == 1
    api.calls.clear()
    await reconciler.reconcile(NS, "s1", due=True)
    assert ("create", "pods") not in api.calls
    assert cache.sessions.get(NS, "s1")["status"]["conditions"][0]["reason"] == "NameConflict"


async def test_node_heartbeats_are_absorbed(world) -> None:
    _, cache, woken = world
    woken.clear()
    beat = {"metadata": {"name": "w1", "resourceVersion": "2"},
            "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-11-01T12:00:10Z"}],
                       "images": [{"names": ["big"]}]}}
    cache.nodes.deliver("MODIFIED", beat)
    assert woken == []
    cache.nodes.deliver("MODIFIED", {**beat, "metadata": {"name": "w1", "resourceVersion": "3"},
                                     "status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    assert woken == ["MODIFIED w1"]


async def test_the_work_queue_coalesces_and_never_runs_a_key_twice_at_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for _ in range(10):
        queue.add("a")
    queue.add("b")
    assert len(queue) == 2
    key, due = await queue.get()
    assert (key, due) == ("a", False)
    queue.add("a")  # an event while "a" is being worked on
    assert await queue.get() == ("b", False)  # "a" is not handed out again meanwhile
    queue.done("b")
    assert len(queue) == 0
    queue.done("a")  # ...but once its pass ends, it runs again
    assert await queue.get() == ("a", False)
    queue.done("a")
    queue.requeue_after("a", 0.0)
    assert await queue.get() == ("a", True)  # a deadline, not an event
