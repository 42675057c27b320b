"""Settings of the console (`MLBUS_CONSOLE_*`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mlbus.config import ServiceSettings


class ConsoleSettings(ServiceSettings):
    """Where the console listens and what it reads.

    MLBUS_CONSOLE_HTTP_HOST          interface to listen on (127.0.0.1)
    MLBUS_CONSOLE_HTTP_PORT          port (8080; `mlbus up` takes another when 8080 is taken)
    MLBUS_CONSOLE_REGISTRY_ADDRESS   host:port of the registry's gRPC API (default: the
                                     running `mlbus up`'s registry, else 127.0.0.1:8002)
    MLBUS_CONSOLE_REGISTRY_TIMEOUT_S per registry call (5)
    MLBUS_CONSOLE_DRIFT_GROUP        the drift service's consumer group, which names its state
                                     in Redis (mlbus-drift)
    MLBUS_CONSOLE_OUTCOMES_GROUP     the outcomes service's consumer group, which names its
                                     status in Redis (mlbus-outcomes)
    MLBUS_CONSOLE_REFRESH_S          how often health, event rates and topic tails are read (5)
    MLBUS_CONSOLE_LIVE_SAMPLE        served predictions read for the live histograms (2000)
    MLBUS_CONSOLE_TOPIC_TAIL         newest records read per partition of each control topic (50)
    MLBUS_CONSOLE_MAX_SPANS          spans kept in memory for the traces pages (50000, ~67 MB);
                                     past it the oldest whole traces are dropped, and the
                                     traces page says how many

    The console keeps no secret: a promotion, a rollback or a label carries the
    registry bearer token the person types into the form, to the registry and
    nowhere else.
    """

    model_config = SettingsConfigDict(
        env_prefix="MLBUS_CONSOLE_", env_nested_delimiter="__", extra="forbid"
    )

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    registry_address: str | None = None
    registry_timeout_s: float = Field(default=5.0, gt=0)
    drift_group: str = Field(default="mlbus-drift", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    outcomes_group: str = Field(
        default="mlbus-outcomes", min_length=1, pattern=r"^[A-Za-z0-9._-]+$"
    )
    refresh_s: float = Field(default=5.0, gt=0)
    live_sample: int = Field(default=2000, ge=10, le=100_000)
    topic_tail: int = Field(default=50, ge=1, le=10_000)
    max_spans: int = Field(default=50_000, ge=100)
