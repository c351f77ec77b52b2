"""GridSession: a session pinned to a resource node (the GRID Enterprise session).

The spec is the user's intent; the status is what the operator observed. These models generate
`crds/gridsessions.gridop.io.yaml` (see `gridop.api.crdgen`), so a field added here is a field of the API.
"""

from __future__ import annotations

import datetime
import enum
from typing import Any

from pydantic import Field
from pydantic.json_schema import JsonDict

from .common import API_VERSION, CONDITIONS_LIST, Condition, KubeModel, Quantity

KIND = "GridSession"
PLURAL = "gridsessions"
SINGULAR = "gridsession"
SHORT_NAMES = ["gs"]
CATEGORIES = ["grid"]

# A session's name becomes its Pod and Service names (DNS-1035 labels) and a prefix of
# `<name>-config` / `<name>-token`, so it must stay well inside 63 characters.
MAX_NAME_LENGTH = 56
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

PRESERVE: JsonDict = {"x-kubernetes-preserve-unknown-fields": True}


class Phase(str, enum.Enum):
    PENDING = "Pending"
    STARTING = "Starting"
    RUNNING = "Running"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    FAILED = "Failed"

    @property
    def is_terminal(self) -> bool:
        return self in (Phase.STOPPED, Phase.FAILED)


class Sharing(str, enum.Enum):
    SHARED = "Shared"
    EXCLUSIVE = "Exclusive"


class PodLossPolicy(str, enum.Enum):
    RECREATE = "Recreate"
    FAIL = "Fail"


class SessionConfig(KubeModel):
    """The GRID session configuration: `airgen` and `grid` settings, free-form inside."""

    airgen: dict[str, Any] = Field(json_schema_extra=PRESERVE, description="AirGen settings, passed through.")
    grid: dict[str, Any] = Field(json_schema_extra=PRESERVE, description="GRID settings, passed through.")


class EnvVar(KubeModel):
    name: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str = ""


class Protocol(str, enum.Enum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


class WorkloadPort(KubeModel):
    name: str = Field(min_length=1, max_length=15, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    container_port: int = Field(ge=1, le=65535)
    protocol: Protocol = Protocol.TCP


class ResourceRequirements(KubeModel):
    requests: dict[str, Quantity] | None = None
    limits: dict[str, Quantity] | None = None


class PullPolicy(str, enum.Enum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class Workload(KubeModel):
    """The session's container. Without an image, the operator's default session image runs."""

    image: str | None = Field(default=None, min_length=1, description="Container image; defaults to the operator's session image.")
    image_pull_policy: PullPolicy | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    env: list[EnvVar] = Field(default_factory=list, max_length=128)
    resources: ResourceRequirements | None = None
    ports: list[WorkloadPort] = Field(
        default_factory=list, max_length=32,
        # keyed by name: a second port of the same name is refused at admission, as a Pod's would be
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    console_port: int | None = Field(
        default=None, ge=1, le=65535, description="A port the console listens on, exposed on the Service as `console`."
    )


class GridSessionSpec(KubeModel):
    user: str = Field(min_length=1, max_length=253, description="The user the session belongs to (JWT `sub`).")
    tenant: str | None = Field(default=None, min_length=1, max_length=63, description="Tenant (JWT `tenant`); the console checks it.")
    node: str | None = Field(default=None, min_length=1, max_length=253, description="Run on this resource node.")
    node_selector: dict[str, str] | None = Field(
        default=None, min_length=1, description="Run on any resource node with these labels."
    )
    config: SessionConfig
    workload: Workload = Field(default_factory=Workload)
    idle_timeout_seconds: int | None = Field(
        default=None, ge=1, description="Stop the session when nobody was active for this long."
    )
    max_lifetime_seconds: int | None = Field(default=None, ge=1, description="Stop the session this long after it started.")
    sharing: Sharing = Field(default=Sharing.SHARED, description="Shared: many clients may attach; Exclusive: one at a time.")
    close_when_unused: bool = Field(
        default=False,
        description="Stop the session when its last attached client detaches or its lease lapses "
                    "(a session nobody has attached to yet keeps running).",
    )
    pod_loss_policy: PodLossPolicy = Field(
        default=PodLossPolicy.RECREATE,
        description="When the pod is deleted, evicted or its node is gone: recreate it, or fail the session.",
    )
    max_recoveries: int = Field(default=3, ge=0, le=100, description="How many times a lost pod is recreated before the session fails.")
    ttl_seconds_after_stopped: int | None = Field(
        default=None, ge=0, description="Delete the GridSession this long after it stopped or failed."
    )


class Attachment(KubeModel):
    client: str
    mode: str
    expires: datetime.datetime


class ConsoleURLs(KubeModel):
    interact: str
    tail: str


class GridSessionStatus(KubeModel):
    phase: Phase = Phase.PENDING
    node_name: str | None = Field(default=None, alias="nodeName")
    node_ip: str | None = Field(default=None, alias="nodeIP")
    pod_name: str | None = None
    pod_uid: str | None = Field(default=None, alias="podUID")
    service_name: str | None = None
    config_map_name: str | None = None
    token_secret_name: str | None = None
    console: ConsoleURLs | None = None
    start_time: datetime.datetime | None = None
    last_active_time: datetime.datetime | None = None
    stop_time: datetime.datetime | None = None
    attached_clients: list[Attachment] = Field(default_factory=list)
    recoveries: int = Field(default=0, ge=0)
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST)
    observed_generation: int | None = Field(default=None, ge=0)


class GridSession(KubeModel):
    """The whole object, as read from the API; metadata stays a plain dict."""

    model_config = KubeModel.model_config | {"extra": "ignore"}

    api_version: str = API_VERSION
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: GridSessionSpec
    status: GridSessionStatus = Field(default_factory=GridSessionStatus)


# What only the CRD can say (the generator adds these to the schemas above).
SPEC_RULES = [
    {
        "rule": "has(self.node) != has(self.nodeSelector)",
        "message": "exactly one of spec.node or spec.nodeSelector must be set",
        "fieldPath": ".node",
        "reason": "FieldValueInvalid",
    },
]
FIELD_RULES = {
    "user": [{"rule": "self == oldSelf", "message": "spec.user is immutable; create a new GridSession"}],
}
ROOT_RULES = [
    {
        "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH} && self.metadata.name.matches('{NAME_PATTERN}')",
        "message": f"metadata.name must be a DNS-1035 label of at most {MAX_NAME_LENGTH} characters "
        "(lowercase letters, digits and '-', starting with a letter)",
    },
]
PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "User", "type": "string", "jsonPath": ".spec.user"},
    {"name": "Node", "type": "string", "jsonPath": ".status.nodeName"},
    {"name": "Node-IP", "type": "string", "jsonPath": ".status.nodeIP"},
    {"name": "Last-Active", "type": "date", "jsonPath": ".status.lastActiveTime"},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Message", "type": "string", "priority": 1, "jsonPath": '.status.conditions[?(@.type=="Ready")].message'},
]
