"""Settings of the registry service (`MLBUS_REGISTRY_*`)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from mlbus.config import ServiceSettings


class RegistrySettings(ServiceSettings):
    """Where the registry keeps its records and artifacts, and how it serves.

    MLBUS_REGISTRY_DATABASE_URL     SQLAlchemy URL; default SQLite under the data folder
                                    (PostgreSQL: postgresql+psycopg://user@host/db)
    MLBUS_REGISTRY_ARTIFACT_STORE   folder (or file:// URL) for artifacts; default under
                                    the data folder (s3:// is not implemented yet)
    MLBUS_REGISTRY_GRPC_PORT        gRPC port (8002; 0 picks a free one)
    MLBUS_REGISTRY_TOKEN            bearer token required by mutating calls, if set
    MLBUS_REGISTRY_MAX_ARTIFACT_MB  largest ONNX file accepted
    """

    model_config = SettingsConfigDict(
        env_prefix="MLBUS_REGISTRY_", env_nested_delimiter="__", extra="forbid"
    )

    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; unset: sqlite in the data folder."
    )
    artifact_store: str | None = Field(
        default=None, description="Artifact folder or URL; unset: artifacts/ in the data folder."
    )
    grpc_host: str = "0.0.0.0"
    grpc_port: int = Field(default=8002, ge=0, le=65535)
    token: SecretStr | None = None
    max_artifact_mb: int = Field(default=64, ge=1, le=1024)
    outbox_retry_s: float = Field(
        default=2.0,
        gt=0,
        description="Pause before publishing pending events again after a failure.",
    )
    shutdown_grace_s: float = Field(default=5.0, ge=0)

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data.registry_db}"

    def resolved_artifact_store(self) -> str:
        return self.artifact_store or str(self.data.artifacts)
