"""Settings of the feature service (`MLBUS_FEATURES_*`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mlbus.config import ServiceSettings, with_s3_endpoint


class FeaturesSettings(ServiceSettings):
    """How the feature service consumes, stores and serves.

    MLBUS_FEATURES_GROUP_ID               consumer group (mlbus-features)
    MLBUS_FEATURES_ALLOWED_LATENESS_S     how far behind an entity's latest event an event
                                          may arrive and still be counted (3600)
    MLBUS_FEATURES_OFFLINE_URL            Parquet root: a folder or s3://bucket/prefix;
                                          default offline/ in the data folder
    MLBUS_FEATURES_S3_ENDPOINT_URL        S3-compatible server for an s3:// offline store
                                          (unset: AWS); credentials and region: AWS_ACCESS_KEY_ID,
                                          AWS_SECRET_ACCESS_KEY, AWS_REGION
    MLBUS_FEATURES_OFFLINE_FLUSH_ROWS     write a Parquet file once this many rows wait
    MLBUS_FEATURES_OFFLINE_FLUSH_INTERVAL_S   … or once the oldest waited this long
    MLBUS_FEATURES_GRPC_HOST / _GRPC_PORT     gRPC FeatureService (8003; 0 picks a free one)
    MLBUS_FEATURES_STATE_CHECK_S          how often the service looks for the state marker, so a
                                          Redis that lost the state is rebuilt without waiting
                                          for an event (5; ADR 0012, Redis loss)
    MLBUS_FEATURES_CONSISTENCY            compare served vectors with offline rows (true)
    MLBUS_FEATURES_CONSISTENCY_WAIT_S     how long a served vector waits for its row (300)
    MLBUS_FEATURES_CONSISTENCY_FLUSH_S    how often the counts go to Redis (5)
    """

    model_config = SettingsConfigDict(
        env_prefix="MLBUS_FEATURES_", env_nested_delimiter="__", extra="forbid"
    )

    group_id: str = "mlbus-features"
    allowed_lateness_s: int = Field(default=3600, ge=0, le=30 * 86_400)
    offline_url: str | None = Field(
        default=None, description="Parquet root (folder or s3:// URL); unset: the data folder."
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/?#\s]+/?$",
        description="http(s)://host:port of an S3-compatible server; unset: AWS itself.",
    )
    offline_flush_rows: int = Field(default=20_000, ge=1)
    offline_flush_interval_s: float = Field(default=30.0, gt=0)
    grpc_host: str = "0.0.0.0"
    grpc_port: int = Field(default=8003, ge=0, le=65535)
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    state_check_s: float = Field(default=5.0, gt=0)
    consistency: bool = True
    consistency_wait_s: float = Field(default=300.0, gt=0)
    consistency_flush_s: float = Field(default=5.0, gt=0)

    def resolved_offline_url(self) -> str:
        """The offline root; an s3:// one carries `s3_endpoint_url` as `?endpoint_url=`."""
        return with_s3_endpoint(
            self.offline_url or str(self.data.offline_store), self.s3_endpoint_url
        )
