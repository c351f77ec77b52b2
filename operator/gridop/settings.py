"""The one settings object: every knob of every gridop process, from GRIDOP_* environment variables."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _list(value: Any) -> Any:
    """A list setting from the environment: JSON (`["a","b"]`, as the chart writes it) or a plain
    comma-separated list (`a,b`, as people type it); empty means none."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON list ({exc.msg}); write a,b or [\"a\",\"b\"]") from None
    return [item.strip() for item in text.split(",") if item.strip()]


StrList = Annotated[list[str], NoDecode, BeforeValidator(_list)]


def describe_error(exc: ValidationError) -> str:
    """One line naming the environment variable at fault, its value and what it must be."""
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "?"
    value = first.get("input")
    shown = f"={value!r}" if isinstance(value, str | int | float) else ""
    return f"GRIDOP_{field.upper()}{shown}: {first['msg']} (fix or unset the environment variable)"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDOP_", env_nested_delimiter="__", extra="ignore")

    operator_namespace: str = Field(
        default="gridop-system", description="Where gridop keeps its own objects (signing keys, leases): the namespace it is installed in.")
    watch_namespaces: StrList = Field(default_factory=list, description="Namespaces to watch; empty means cluster-wide.")

    signing_secret: str = Field(default="gridop-signing-keys", description="Secret with the JWT signing keys.")
    token_issuer: str = "gridop"
    token_audience: str = "gridop"
    token_lifetime_seconds: int = Field(default=86400, ge=60)

    default_session_image: str = Field(default="busybox:1.36", description="Image for sessions that name none.")
    resource_node_label: str = Field(default="gridop.io/resource-node", description="Label (and taint key) of resource nodes.")
    gateway_url: str | None = Field(default=None, description="External URL of the console gateway, for status.console.")

    redis_url: str | None = Field(default=None, description="The task data plane (redis://[:password@]host:port/db).")
    redis_acl: bool = Field(default=True, description="Give each namespace a Redis ACL user limited to its own keys.")
    image: str = Field(default="ghcr.io/gridop/gridop:0.1.0", description="gridop's own image: default for TaskBatch workers.")
    batch_status_interval_seconds: float = Field(default=1.0, ge=0.1, description="At most one status write per batch per interval.")

    resync_seconds: float = Field(default=30.0, gt=0, description="Re-check every session at least this often.")
    status_min_interval_seconds: float = Field(
        default=1.0, ge=0, description="A session's progress within a phase is written at most this often (a phase change at once).")

    leader_election: bool = Field(default=False, description="Hold a Lease before acting; extra replicas stand by.")
    lease_name: str = "gridop-operator"
    pod_name: str = Field(default_factory=lambda: __import__("socket").gethostname(), description="Identity in the Lease.")

    # The console gateway (`gridop gateway`).
    gateway_host: str = Field(default="", description="Address the gateway listens on; empty: every address.")
    gateway_port: int = Field(default=8000, ge=1, le=65535, description="Where the gateway serves websockets.")
    gateway_default_namespace: str = Field(default="default", description="Namespace of the single-segment paths /interact/{session}.")
    gateway_allowed_origins: StrList = Field(
        default_factory=list, description="Browser origins allowed besides the gateway's own; '*' allows any."
    )
    gateway_token_audiences: StrList = Field(
        default_factory=list, description="Audiences a Kubernetes token must carry (TokenReview); empty: the API server's."
    )
    gateway_console_container: str = Field(default="session", description="The session pod's container to attach to.")
    gateway_console_command: list[str] = Field(
        default_factory=list, description="Exec this command for the console instead of attaching to the container."
    )
    gateway_max_connections: int = Field(default=10000, ge=1, description="Open connections per gateway process.")
    gateway_max_connections_per_user: int = Field(default=32, ge=1, description="Open connections per user (429 beyond).")
    gateway_buffer_bytes: int = Field(default=256 * 1024, ge=4096, description="Output a viewer may have waiting before it is dropped.")
    gateway_idle_timeout_seconds: float = Field(default=3600.0, ge=0, description="Close a connection without traffic this long; 0: never.")
    gateway_ping_seconds: float = Field(default=30.0, gt=0, description="Websocket ping interval on both legs.")
    gateway_activity_interval_seconds: float = Field(
        default=30.0, ge=1, description="At most one lastActive write per session per interval.")
    gateway_writer_lease_seconds: float = Field(
        default=15.0, ge=3, description="A console writer's lock across replicas lapses this long after its replica stops renewing it.")
    gateway_auth_cache_seconds: float = Field(
        default=10.0, ge=0, description="How long TokenReview/SubjectAccessReview answers are reused.")
    gateway_recording_dir: str | None = Field(default=None, description="Record interactive consoles as asciicast v2 files here.")
    gateway_recording_required: bool = Field(default=True, description="Refuse (or end) a console whose recording fails.")

    # The CRDs' conversion webhook, served by every operator replica.
    webhook: bool = Field(default=True, description="Serve the conversion webhook (the API server calls it to convert TaskBatches).")
    webhook_port: int = Field(default=9443, ge=1, le=65535, description="Where the webhook serves HTTPS.")
    webhook_service: str = Field(default="gridop-webhook", description="The webhook's Service (its certificate names it).")
    webhook_secret: str = Field(default="gridop-webhook-tls", description="The Secret the operator keeps its webhook certificate in.")
    webhook_cert_dir: str | None = Field(
        default=None, description="Serve tls.crt/tls.key from here (cert-manager) instead of a certificate the operator issues.")
    webhook_cert_validity_seconds: float = Field(
        default=365 * 86400.0, ge=60, description="Lifetime of a certificate the operator issues; renewed in its last third.")
    webhook_check_seconds: float = Field(default=600.0, gt=0, description="How often the certificate is looked at.")
    migrate_storage: bool = Field(
        default=True, description="Rewrite objects stored at an older version once, then trim the CRD's storedVersions.")

    metrics_port: int = 8080
    log_format: str = Field(default="json", pattern="^(json|text)$")
    log_level: str = "INFO"


class WorkerSettings(BaseSettings):
    """`gridop worker`'s settings: the GRIDOP_* variables the operator gives a worker pod, read the
    same way as every other gridop setting. A command-line flag overrides its variable."""

    model_config = SettingsConfigDict(env_prefix="GRIDOP_", extra="ignore")

    redis_url: str | None = Field(default=None, description="The data plane.")
    session_id: str | None = Field(default=None, description="The batch (a TaskBatch's session id) to run.")
    pool: str | None = Field(default=None, description="The TaskPool whose sessions to serve.")
    handler: str | None = Field(default=None, description="The task handler, module:function.")
    batch_size: int = Field(default=1024, ge=1)
    claim_seconds: float = Field(default=0.1, ge=0)
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    lease_seconds: float = Field(default=30.0, gt=0)
    task_timeout_seconds: float = Field(default=0.0, ge=0, description="0: none.")
    handler_isolation: Literal["process", "thread"] = "process"
    retry_on_error: bool = True
    key_prefix: str = "gridop:default"
    result_retention_seconds: int = Field(default=86400, ge=1)
    processes: int = Field(default=1, ge=1)
    metrics_port: int = Field(default=0, ge=0, le=65535, description="0: metrics not served.")
    log_format: Literal["json", "text"] = "json"
    log_level: str = Field(default="INFO", pattern="(?i)^(debug|info|warning|error)$")


class DataPlaneSettings(BaseSettings):
    """What every data-plane client (worker, SDK, operator) reads from the environment."""

    model_config = SettingsConfigDict(env_prefix="GRIDOP_", extra="ignore")

    fast_lane: bool = Field(default=True, description="The fast paths beyond redis-py's documented API; false: redis-py's own.")
