"""The one settings object: every knob of every gridop process, from GRIDOP_* environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDOP_", env_nested_delimiter="__", extra="ignore")

    namespace: str = Field(default="gridop-system", description="Where the operator keeps its own objects (signing keys, leases).")
    watch_namespaces: list[str] = Field(default_factory=list, description="Namespaces to watch; empty means cluster-wide.")

    signing_secret: str = Field(default="gridop-signing-keys", description="Secret with the JWT signing keys.")
    token_issuer: str = "gridop"
    token_audience: str = "gridop"
    token_lifetime_seconds: int = Field(default=86400, ge=60)

    default_session_image: str = Field(default="busybox:1.36", description="Image for sessions that name none.")
    resource_node_label: str = Field(default="gridop.io/resource-node", description="Label (and taint key) of resource nodes.")
    gateway_url: str | None = Field(default=None, description="External URL of the console gateway, for status.console.")

    redis_url: str | None = Field(default=None, description="The task data plane (redis://[:password@]host:port/db).")
    redis_secret: str | None = Field(default=None, description="Secret (key `url`) workers read the data plane URL from.")
    image: str = Field(default="ghcr.io/gridop/gridop:0.1.0", description="gridop's own image: default for TaskBatch workers.")
    batch_status_interval_seconds: float = Field(default=1.0, ge=0.1, description="At most one status write per batch per interval.")

    resync_seconds: float = Field(default=30.0, gt=0, description="Re-check every session at least this often.")
    status_min_interval_seconds: float = Field(default=1.0, ge=0)

    leader_election: bool = Field(default=False, description="Hold a Lease before acting; extra replicas stand by.")
    lease_name: str = "gridop-operator"
    pod_name: str = Field(default_factory=lambda: __import__("socket").gethostname(), description="Identity in the Lease.")

    metrics_port: int = 8080
    log_format: str = Field(default="json", pattern="^(json|text)$")
    log_level: str = "INFO"
