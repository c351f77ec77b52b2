"""Types shared by every gridop kind: the base model and the KEP-1623 Condition."""

from __future__ import annotations

import datetime
import enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

GROUP = "gridop.io"
VERSION = "v1beta1"
#: The operator's finalizer: on TaskBatches and TaskPools (their data-plane keys go first); a
#: GridSession carries it only if an earlier version put it there, and loses it.
FINALIZER = f"{GROUP}/finalizer"
API_VERSION = f"{GROUP}/{VERSION}"


class KubeModel(BaseModel):
    """Python names in snake_case, Kubernetes names in camelCase, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
    )

    def to_kube(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, no unset optionals."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ConditionStatus(str, enum.Enum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(KubeModel):
    """metav1.Condition: one aspect of the object's state, with a machine-readable reason."""

    type: str = Field(
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        max_length=316,
    )
    status: ConditionStatus
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", min_length=1, max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: datetime.datetime
    observed_generation: int | None = Field(default=None, ge=0)


#: A list of conditions is a map keyed by type (as metav1.Condition lists are), so server-side
#: apply merges each condition by its type instead of replacing the whole list.
CONDITIONS_LIST: dict[str, Any] = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}

#: A Kubernetes resource quantity ("100m", "1Gi", 2), as resource.Quantity's schema checks it.
QUANTITY_PATTERN = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
                    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
Quantity = Annotated[int | Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN)], "quantity"]


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC).replace(microsecond=0)


def set_condition(
    conditions: list[Condition],
    *,
    type: str,
    status: ConditionStatus | bool,
    reason: str,
    message: str = "",
    now: datetime.datetime,
    generation: int | None = None,
) -> list[Condition]:
    """Return the conditions with `type` set; lastTransitionTime moves only when status flips."""
    if isinstance(status, bool):
        status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    status_value = ConditionStatus(status)
    result: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.type != type:
            result.append(cond)
            continue
        found = True
        changed = cond.status != status_value
        result.append(
            Condition(
                type=type,
                status=status_value,
                reason=reason,
                message=message,
                last_transition_time=now if changed else cond.last_transition_time,
                observed_generation=generation,
            )
        )
    if not found:
        result.append(
            Condition(
                type=type,
                status=status_value,
                reason=reason,
                message=message,
                last_transition_time=now,
                observed_generation=generation,
            )
        )
    return result


def find_condition(conditions: list[Condition], type: str) -> Condition | None:
    return next((c for c in conditions if c.type == type), None)


def set_progress(
    conditions: list[Condition],
    *,
    reconciling: tuple[str, str] | None,
    stalled: tuple[str, str] | None,
    now: datetime.datetime,
    generation: int | None,
) -> list[Condition]:
    """The kstatus pair: `Reconciling` while the operator works toward the spec, `Stalled` when it
    cannot make progress without help; (reason, message) when True, None when False. Flux, Argo CD
    and `kubectl wait` read these (with Ready and observedGeneration) to tell Current from
    InProgress from Failed. Ready stays first, as kubectl and humans read it."""
    for type_, value in (("Reconciling", reconciling), ("Stalled", stalled)):
        ok, (reason, message) = value is not None, value or ("AsExpected", "")
        conditions = set_condition(conditions, type=type_, status=ok, reason=reason, message=message, now=now,
                                   generation=generation)
    return sorted(conditions, key=lambda c: c.type != "Ready")
