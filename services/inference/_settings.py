"""Settings of the inference service (`MLBUS_INFERENCE_*`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from mlbus.config import ServiceSettings


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
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    canary_weight: float | None = Field(default=None, ge=0.0, le=1.0)
    shadow: bool | None = None
    shadow_max_in_flight: int = Field(default=64, ge=1)
    max_predict_entities: int = Field(default=1000, ge=1)

    @field_validator("models", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value
