"""Settings of the outcomes service (`MLBUS_OUTCOMES_*`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mlbus.config import ServiceSettings
from mlbus.registry_client import RegistryAccess


class OutcomesSettings(ServiceSettings, RegistryAccess):
    """How the outcomes service consumes, keeps its state, looks at experiments and acts.

    MLBUS_OUTCOMES_GROUP_ID              consumer group (mlbus-outcomes); also names its Redis state
    MLBUS_OUTCOMES_REGISTRY_ADDRESS      host:port of the registry's gRPC API (127.0.0.1:8002)
    MLBUS_OUTCOMES_REGISTRY_TOKEN        bearer token for promotions and rollbacks
    MLBUS_OUTCOMES_REGISTRY_TIMEOUT_S    per registry call (10)
    MLBUS_OUTCOMES_PENDING_TTL_S         how long a prediction waits for its label (7 days)
    MLBUS_OUTCOMES_BUCKET_S              time resolution of the sliding windows (300)
    MLBUS_OUTCOMES_EVALUATE_INTERVAL_S   how often windows and experiments are looked at (5)
    MLBUS_OUTCOMES_REPORT_INTERVAL_S     how often `outcomes.measured` events are published (60)
    MLBUS_OUTCOMES_MAX_BATCH             records per fetch (1000)
    MLBUS_OUTCOMES_GRPC_HOST / _GRPC_PORT  gRPC `mlbus.labeling.v1.Labeling` (8004; 0 picks a
                                         free one); SubmitLabel needs the registry token when set
    MLBUS_OUTCOMES_SHUTDOWN_GRACE_S      in-flight gRPC calls may finish this long (5)
    """

    model_config = SettingsConfigDict(
        env_prefix="MLBUS_OUTCOMES_", env_nested_delimiter="__", extra="forbid"
    )

    group_id: str = Field(default="mlbus-outcomes", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    pending_ttl_s: int = Field(default=7 * 86_400, ge=1)
    bucket_s: int = Field(default=300, ge=1)
    evaluate_interval_s: float = Field(default=5.0, gt=0)
    report_interval_s: float = Field(default=60.0, gt=0)
    max_batch: int = Field(default=1000, ge=1, le=100_000)
    grpc_host: str = "0.0.0.0"
    grpc_port: int = Field(default=8004, ge=0, le=65535)
    shutdown_grace_s: float = Field(default=5.0, ge=0)
