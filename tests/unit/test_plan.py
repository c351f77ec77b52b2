"""The launch plan: what a session's pod, service, config and token look like."""

import json

from gridop.sessions import plan

from .sessions import SETTINGS, session


def test_pod_runs_the_workload_with_config_and_token_mounted() -> None:
    s = session(workload={"image": "sim:1", "command": ["run"], "env": [{"name": "A", "value": "1"}],
                          "resources": {"limits": {"cpu": "2", "memory": "1Gi"}}})
    pod = plan.pod(s, SETTINGS)
    c = pod["spec"]["containers"][0]
    assert (c["image"], c["command"]) == ("sim:1", ["run"])
    assert {"name": "A", "value": "1"} in c["env"]
    assert {"name": "GRIDOP_SESSION_ID", "value": "s1"} in c["env"]
    assert c["resources"] == {"limits": {"cpu": "2", "memory": "1Gi"}}
    assert {v["name"] for v in pod["spec"]["volumes"]} == {"session-config", "session-token"}
    assert pod["spec"]["restartPolicy"] == "Never" and pod["spec"]["automountServiceAccountToken"] is False
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["metadata"]["ownerReferences"][0] == {
        "apiVersion": "gridop.io/v1beta1", "kind": "GridSession", "name": "s1", "uid": "u-1",
        "controller": True, "blockOwnerDeletion": True,
    }
    assert pod["metadata"]["labels"][plan.SESSION_LABEL] == "s1"


def test_default_image_when_the_session_names_none() -> None:
    assert plan.pod(session(), SETTINGS)["spec"]["containers"][0]["image"] == SETTINGS.default_session_image


def test_node_pins_through_affinity_and_selector_through_node_selector() -> None:
    pinned = plan.pod(session(node="w7"), SETTINGS)["spec"]
    term = pinned["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchFields"] == [{"key": "metadata.name", "operator": "In", "values": ["w7"]}]
    pooled = plan.pod(session(node=None, nodeSelector={"pool": "a"}), SETTINGS)["spec"]
    assert pooled["nodeSelector"] == {"pool": "a"} and "affinity" not in pooled
    assert pooled["tolerations"][0]["key"] == SETTINGS.resource_node_label


def test_service_exposes_ports_and_console_or_is_absent() -> None:
    assert plan.service(session()) is None
    svc = plan.service(session(workload={"ports": [{"name": "http", "containerPort": 80}], "consolePort": 7000}))
    assert svc["spec"]["selector"] == {plan.SESSION_LABEL: "s1"}
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
        ("http", 80, "http"), ("console", 7000, "console")
    ]


def test_config_map_holds_the_merged_configuration() -> None:
    cm = plan.config_map(session(config={"airgen": {"a": 1}, "grid": {"g": 2}}))
    assert json.loads(cm["data"]["session_config.json"]) == {"session_id": "s1", "airgen": {"a": 1}, "grid": {"g": 2}}
    assert cm["metadata"]["name"] == "s1-config"


def test_template_hash_changes_with_the_workload_only() -> None:
    a = plan.pod(session(), SETTINGS)["metadata"]["annotations"][plan.TEMPLATE_HASH]
    b = plan.pod(session(idleTimeoutSeconds=5), SETTINGS)["metadata"]["annotations"][plan.TEMPLATE_HASH]
    c = plan.pod(session(workload={"image": "x"}), SETTINGS)["metadata"]["annotations"][plan.TEMPLATE_HASH]
    assert a == b != c
