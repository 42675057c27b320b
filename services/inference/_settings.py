"""Settings of the inference service (`MLBUS_INFERENCE_*`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from mlbus.config import DEFAULT_MAX_TENSOR_MB, MaxTensorMB, ServiceSettings


class InferenceSettings(ServiceSettings):
    """How the inference service serves, reloads and logs.

    MLBUS_INFERENCE_GRPC_PORT           gRPC port (8001; 0 picks a free one)
    MLBUS_INFERENCE_MODELS              comma-separated model names to serve; empty: every
                                        model whose alias is published
    MLBUS_INFERENCE_ALIAS               the alias served (champion)
    MLBUS_INFERENCE_REGISTRY_ADDRESS    registry gRPC address, asked at start which version
                                        holds the alias, and used to download artifacts
    MLBUS_INFERENCE_TOKEN               bearer token required by the inference RPCs, if set
    MLBUS_INFERENCE_ORT_INTRA_OP_THREADS / _INTER_OP_THREADS   ONNX Runtime threads (1 / 1)
    MLBUS_INFERENCE_INLINE_MAX_ELEMENTS requests up to this many input elements run on the
                                        event loop; bigger ones in a worker thread
    MLBUS_INFERENCE_PREDICTION_LOG      publish each prediction to mlbus.prediction.logged.v1
    MLBUS_INFERENCE_LOG_QUEUE_SIZE      bound of the prediction-log buffer (full: dropped)
    MLBUS_INFERENCE_CANARY_WEIGHT       share of entities sent to a `canary` version
                                        (unset: the spec's serving.canary_weight, else 0)
    MLBUS_INFERENCE_SHADOW              score a `shadow` version on a copy of traffic
                                        (unset: the spec's serving.shadow, else true)
    MLBUS_INFERENCE_MAX_PREDICT_ENTITIES  entity ids per Predict call (1000)
    MLBUS_INFERENCE_MAX_TENSOR_MB       largest declared size of a model's tensors, one or all
                                        (256; mlbus.onnx_policy, as the registry checks it)
    MLBUS_INFERENCE_WORKERS             server processes sharing the port (SO_REUSEPORT); 1
    MLBUS_INFERENCE_TLS_CERT_FILE / _TLS_KEY_FILE   PEM certificate chain and key: serve TLS
    MLBUS_INFERENCE_TLS_CLIENT_CA_FILE  PEM CA bundle: also require client certificates (mTLS)
    MLBUS_SPEC, MLBUS_REDIS_URL / REDIS_URL  needed by Predict only
    """

    model_config = SettingsConfigDict(
        env_prefix="MLBUS_INFERENCE_", env_nested_delimiter="__", extra="forbid"
    )

    grpc_host: str = "0.0.0.0"
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    models: Annotated[tuple[str, ...], NoDecode] = ()
    alias: str = Field(default="champion", min_length=1)
    registry_address: str | None = None
    registry_token: SecretStr | None = None
    registry_timeout_s: float = Field(default=30.0, gt=0)
    token: SecretStr | None = None
    ort_intra_op_threads: int = Field(default=1, ge=1, le=256)
    ort_inter_op_threads: int = Field(default=1, ge=1, le=256)
    inline_max_elements: int = Field(
        default=4096,
        ge=0,
        description="Bigger requests run in a worker thread (ONNX Runtime releases the GIL).",
    )
    worker_threads: int = Field(default=2, ge=1, le=256)
    prediction_log: bool = True
    log_queue_size: int = Field(default=10_000, ge=1)
    reload_retry_s: float = Field(default=2.0, gt=0)
    max_message_mb: int = Field(default=64, ge=1, le=1024)
    max_tensor_mb: MaxTensorMB = DEFAULT_MAX_TENSOR_MB
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    canary_weight: float | None = Field(default=None, ge=0.0, le=1.0)
    shadow: bool | None = None
    shadow_max_in_flight: int = Field(default=64, ge=1)
    max_predict_entities: int = Field(default=1000, ge=1)
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Server processes sharing the gRPC port via SO_REUSEPORT (docs/adr/0018).",
    )
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @model_validator(mode="after")
    def _tls_pairs(self) -> Self:
        # Half a TLS setup would silently serve plaintext: refuse it at start.
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "TLS needs both MLBUS_INFERENCE_TLS_CERT_FILE and MLBUS_INFERENCE_TLS_KEY_FILE"
            )
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(
                "MLBUS_INFERENCE_TLS_CLIENT_CA_FILE (client certificates) needs the server's "
                "MLBUS_INFERENCE_TLS_CERT_FILE and MLBUS_INFERENCE_TLS_KEY_FILE"
            )
        return self
