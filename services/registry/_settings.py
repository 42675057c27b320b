"""Settings of the registry service (`MLBUS_REGISTRY_*`)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from mlbus.config import DEFAULT_MAX_TENSOR_MB, MaxTensorMB, ServiceSettings, with_s3_endpoint


class RegistrySettings(ServiceSettings):
    """Where the registry keeps its records and artifacts, and how it serves.

    MLBUS_REGISTRY_DATABASE_URL     SQLAlchemy URL; default SQLite under the data folder
                                    (PostgreSQL: postgresql+psycopg://user@host/db)
    MLBUS_REGISTRY_ARTIFACT_STORE   folder, file:// URL or s3://bucket/prefix for artifacts;
                                    default under the data folder
    MLBUS_REGISTRY_S3_ENDPOINT_URL  S3-compatible server for an s3:// store (unset: AWS);
                                    credentials and region: AWS_ACCESS_KEY_ID,
                                    AWS_SECRET_ACCESS_KEY, AWS_REGION (boto3's chain)
    MLBUS_REGISTRY_GRPC_PORT        gRPC port (8002; 0 picks a free one)
    MLBUS_REGISTRY_TOKEN            bearer token required by mutating calls, if set
    MLBUS_REGISTRY_MAX_ARTIFACT_MB  largest ONNX file accepted
    MLBUS_REGISTRY_MAX_TENSOR_MB    largest declared size of a model's tensors, one or all
                                    (mlbus.onnx_policy; a sparse tensor declares its dense size)
    """

    model_config = SettingsConfigDict(
        env_prefix="MLBUS_REGISTRY_", env_nested_delimiter="__", extra="forbid"
    )

    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; unset: sqlite in the data folder."
    )
    artifact_store: str | None = Field(
        default=None,
        description="Artifact folder, file:// or s3://bucket/prefix; unset: the data folder.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/?#\s]+/?$",
        description="http(s)://host:port of an S3-compatible server; unset: AWS itself.",
    )
    grpc_host: str = "0.0.0.0"
    grpc_port: int = Field(default=8002, ge=0, le=65535)
    token: SecretStr | None = None
    max_artifact_mb: int = Field(default=64, ge=1, le=1024)
    max_tensor_mb: MaxTensorMB = DEFAULT_MAX_TENSOR_MB
    outbox_retry_s: float = Field(
        default=2.0,
        gt=0,
        description="Pause before publishing pending events again after a failure.",
    )
    shutdown_grace_s: float = Field(default=5.0, ge=0)

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data.registry_db}"

    def resolved_artifact_store(self) -> str:
        """The store's URL; an s3:// one carries `s3_endpoint_url` as `?endpoint_url=`."""
        return with_s3_endpoint(
            self.artifact_store or str(self.data.artifacts), self.s3_endpoint_url
        )
