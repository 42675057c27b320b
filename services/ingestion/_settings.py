"""The ingestion service's settings: `MLBUS_INGESTION_*`, plus the shared blocks."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mlbus.config import ServiceSettings


class IngestionSettings(ServiceSettings):
    """Environment: `MLBUS_SPEC` (required), `MLBUS_INGESTION_<FIELD>`, shared `MLBUS_*`."""

    model_config = SettingsConfigDict(
        env_prefix="MLBUS_INGESTION_", env_nested_delimiter="__", extra="forbid"
    )

    group_id: str = Field(
        default="mlbus-ingestion", min_length=1, description="Consumer group of the source topics."
    )
    dedupe_horizon_s: int = Field(
        default=3_600,
        ge=0,
        description="An event id accepted this recently is not published again; 0 turns "
        "de-duplication off. Kept in Redis, so it survives restarts.",
    )
    max_batch: int = Field(
        default=500,
        ge=1,
        le=10_000,
        description="Records per fetch; their sends are awaited together before the commit.",
    )
