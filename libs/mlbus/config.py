"""Settings for every mlbus process, read from the environment.

Shared settings have one prefix each and are nested in every service's
settings, so one `MLBUS_KAFKA_BOOTSTRAP_SERVERS` reaches every service:

    MLBUS_DATA_DIR                 everything written locally (default `.mlbus/`)
    MLBUS_KAFKA_*                  broker address, security, topic defaults
    MLBUS_REDIS_URL / REDIS_URL    online store
    MLBUS_TELEMETRY_*              metrics port, sampling, logs
    OTEL_EXPORTER_OTLP_ENDPOINT    traces go there when set, else to the span files

A service adds its own fields under its own prefix (`MLBUS_INGESTION_…`) by
subclassing `ServiceSettings`; the nested blocks can be overridden there too
with `__` (`MLBUS_INGESTION_KAFKA__CLIENT_ID=…`).

Invalid settings never start a process: `load_settings` turns pydantic's
error into one `ConfigError` that names each variable and what was expected.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qs, urlencode, urlparse

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlbus.errors import ConfigError

DEFAULT_MAX_TENSOR_MB = 256
"""The largest declared tensor size a model may have (each and in total), in MiB.
Well above the registry's 64 MB file limit, so no dense model the file limit lets in hits it."""

Latency = Literal["fresh", "background"]
"""Where a consumer's records go: on the freshness path (what the next prediction reads, a
model reload) or off it (monitors, training): `KafkaSettings.fetch_wait_ms`."""

MaxTensorMB = Annotated[
    int,
    Field(
        ge=1,
        le=16384,
        description="Largest declared size of a model's tensors, each and in total.",
    ),
]
"""The limit the registry checks at registration and inference at loading: one
setting type, so the two cannot disagree on what a model may declare."""

DEFAULT_DATA_DIR = Path(".mlbus")


class DataDir:
    """Where each thing mlbus writes locally lives, under one root folder.

    Two instances with different roots never collide: every log, span file,
    database, artifact and state file is below `root`.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def spans(self) -> Path:
        return self.root / "spans"

    @property
    def run(self) -> Path:
        """State of the running `mlbus up` (addresses, pids)."""
        return self.root / "run"

    @property
    def run_state(self) -> Path:
        return self.run / "state.json"

    @property
    def registry_db(self) -> Path:
        return self.root / "registry.sqlite"

    @property
    def search_db(self) -> Path:
        """Hyperparameter searches: runs and trials (Optuna's RDB storage, ADR 0023)."""
        return self.root / "search.sqlite"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def offline_store(self) -> Path:
        return self.root / "offline"

    @property
    def instance(self) -> Path:
        """This instance's Redis key prefix (`mlbus:<8 hex>`), written by the first `mlbus up`."""
        return self.root / "instance"

    @property
    def service_state(self) -> Path:
        """Durable per-service state (de-duplication horizon, drift windows)."""
        return self.root / "state"

    def ensure(self, *paths: Path) -> None:
        for path in paths or (self.root,):
            path.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"DataDir({str(self.root)!r})"


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER"]


class KafkaSettings(BaseSettings):
    """How to reach the broker and how topics are created."""

    model_config = SettingsConfigDict(env_prefix="MLBUS_KAFKA_", extra="forbid")

    bootstrap_servers: str | None = Field(
        default=None,
        description="host:port[,host:port]; unset means the broker of the running `mlbus up`.",
    )
    client_id: str = "mlbus"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    enable_idempotence: bool = Field(
        default=False,
        description="Idempotent producer; turn on for real Kafka (the embedded broker lacks it).",
    )
    acks: Literal["0", "1", "all"] = "all"
    linger_ms: int = Field(default=5, ge=0, le=1000)
    background_linger_ms: int = Field(
        default=100,
        ge=0,
        le=1000,
        description=(
            "The producer linger for records nobody reads at once (the prediction log): "
            "fewer, larger batches; on the embedded broker every fetch costs CPU in "
            "proportion to its partition's stored batches."
        ),
    )
    max_batch_bytes: int = Field(
        default=262_144,
        ge=1024,
        description="Producer batch per partition; larger batches mean fewer fetch round trips.",
    )
    fetch_max_wait_ms: int = Field(
        default=100,
        ge=0,
        le=10_000,
        description=(
            "How long a fetch on the freshness path (ingestion, features, model reloads) may "
            "wait for data; on the embedded broker it bounds end-to-end latency."
        ),
    )
    background_fetch_max_wait_ms: int = Field(
        default=500,
        ge=0,
        le=10_000,
        description=(
            "The same for consumers off the freshness path (drift, outcomes, the trainer, the "
            "consistency monitor): every idle consumer fetches once per wait, and each fetch "
            "costs the broker CPU."
        ),
    )
    topic_partitions: int = Field(default=3, ge=1, le=1000)
    replication_factor: int = Field(default=1, ge=1, le=10)
    session_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Consumer-group session; the embedded broker completes a join in about half.",
    )
    request_timeout_s: float = Field(default=30.0, gt=0)

    def fetch_wait_ms(self, latency: Latency) -> int:
        """How long a consumer's fetch waits for data, by where its records go."""
        return self.fetch_max_wait_ms if latency == "fresh" else self.background_fetch_max_wait_ms

    def linger(self, latency: Latency) -> int:
        """How long a producer waits to fill a batch, by who reads its records."""
        return self.linger_ms if latency == "fresh" else self.background_linger_ms

    def fetch_pace_s(self, latency: Latency) -> float:
        """The least time between two polls of a consumer that is not behind: none on the
        freshness path; one background fetch wait off it, so a steady stream costs a
        background consumer one fetch per wait, not one per few records (ADR 0003)."""
        return 0.0 if latency == "fresh" else self.background_fetch_max_wait_ms / 1000

    def require_bootstrap(self) -> str:
        if not self.bootstrap_servers:
            raise ConfigError(
                "no Kafka broker configured: set MLBUS_KAFKA_BOOTSTRAP_SERVERS, "
                "or start the embedded one with `mlbus up`"
            )
        return self.bootstrap_servers

    def client_kwargs(self) -> dict[str, Any]:
        """Connection and security keywords shared by aiokafka producers, consumers, admins."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.require_bootstrap(),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": int(self.request_timeout_s * 1000),
        }
        if self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            if self.sasl_password is not None:
                kwargs["sasl_plain_password"] = self.sasl_password.get_secret_value()
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
                certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
                keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
            )
        return kwargs


class RedisSettings(BaseSettings):
    """The online store."""

    model_config = SettingsConfigDict(env_prefix="MLBUS_REDIS_", extra="forbid")

    url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("url", "MLBUS_REDIS_URL", "REDIS_URL"),
        description="redis://host:port/db; unset means the Redis of the running `mlbus up`.",
    )
    key_prefix: str = Field(
        default="mlbus",
        min_length=1,
        description="Prefix of every Redis key; unset means the instance prefix of the data "
        "folder (`mlbus:<8 hex>`, ADR 0021) once `mlbus up` ran there, else `mlbus`.",
    )
    socket_timeout_s: float = Field(default=2.0, gt=0)
    cluster: bool = Field(
        default=False,
        description="The URL names a node of a Redis Cluster (db 0); the other nodes are "
        "discovered. Off: a single Redis (or one behind a proxy).",
    )

    def require_url(self) -> str:
        if not self.url:
            raise ConfigError(
                "no Redis configured: set REDIS_URL (or MLBUS_REDIS_URL), "
                "or start the embedded one with `mlbus up`"
            )
        return self.url


class TelemetrySettings(BaseSettings):
    """Traces, metrics and logs."""

    model_config = SettingsConfigDict(env_prefix="MLBUS_TELEMETRY_", extra="forbid")

    otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "otlp_endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT", "MLBUS_TELEMETRY_OTLP_ENDPOINT"
        ),
        description="OTLP/gRPC collector; unset writes spans to the data folder.",
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Prometheus /metrics port; 0 picks a free one."
    )
    sample_ratio: float = Field(
        default=1.0, ge=0.0, le=1.0, description="Share of control-plane traces recorded."
    )
    data_sample_ratio: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Share of data-plane traces (events, predictions) started here that are "
        "recorded; traces a producer sampled are always continued.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class MlbusSettings(BaseSettings):
    """What every mlbus process shares. Services subclass `ServiceSettings`."""

    model_config = SettingsConfigDict(
        env_prefix="MLBUS_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Field(
        default=DEFAULT_DATA_DIR,
        validation_alias=AliasChoices("data_dir", "MLBUS_DATA_DIR"),
    )
    spec: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("spec", "MLBUS_SPEC"),
        description="Path to mlbus.yaml.",
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)

    @property
    def data(self) -> DataDir:
        return DataDir(self.data_dir)


class ServiceSettings(MlbusSettings):
    """Base of a service's settings; set `env_prefix` to `MLBUS_<SERVICE>_`."""


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings from the environment, or raise one readable `ConfigError`."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, cls)) from None


def run_service(name: str, cls: type[S], run: Callable[[S], None]) -> int:
    """`python -m mlbus.<name>`: settings from the environment, `run` until it returns.

    Exit code 0, or 2 with one readable line when the settings or the spec are invalid.
    """
    try:
        run(load_settings(cls))
    except ConfigError as exc:
        sys.stderr.write(f"mlbus.{name}: {exc}\n")
        return 2
    return 0


def describe_validation_error(exc: ValidationError, cls: type[BaseSettings]) -> str:
    """One line per problem: the environment variable, what was wrong, what was given."""
    lines = [f"invalid settings ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        given = err.get("input")
        shown = "" if isinstance(given, dict) or given is None else f" (got {given!r})"
        lines.append(f"  {_variable_name(exc.title, cls, err['loc'])}: {err['msg']}{shown}")
    return "\n".join(lines)


_SHARED_BLOCKS: dict[str, type[BaseSettings]] = {
    "kafka": KafkaSettings,
    "redis": RedisSettings,
    "telemetry": TelemetrySettings,
}


def _variable_name(title: str, cls: type[BaseSettings], loc: tuple[int | str, ...]) -> str:
    """The environment variable a user would set to fix the field at `loc`."""
    parts = [str(part) for part in loc]
    owner: type[BaseSettings] = cls
    for block in _SHARED_BLOCKS.values():
        if block.__name__ == title:  # a nested block failed while building its default
            owner = block
    if owner is cls and parts and parts[0] in _SHARED_BLOCKS:
        owner = _SHARED_BLOCKS[parts.pop(0)]
    if parts == ["data_dir"]:
        return "MLBUS_DATA_DIR"
    prefix = str(owner.model_config.get("env_prefix", ""))
    return prefix + "__".join(parts).upper() if parts else prefix.rstrip("_")


def env_for_children(settings: MlbusSettings) -> dict[str, str]:
    """Environment that hands these settings' shared blocks to a child process."""
    env: dict[str, str] = {"MLBUS_DATA_DIR": str(settings.data.root)}
    if settings.spec is not None:
        env["MLBUS_SPEC"] = str(settings.spec.resolve())
    if settings.kafka.bootstrap_servers:
        env["MLBUS_KAFKA_BOOTSTRAP_SERVERS"] = settings.kafka.bootstrap_servers
    if settings.redis.url:
        env["MLBUS_REDIS_URL"] = settings.redis.url
    if "key_prefix" in settings.redis.model_fields_set:
        env["MLBUS_REDIS_KEY_PREFIX"] = settings.redis.key_prefix
    if settings.telemetry.otlp_endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = settings.telemetry.otlp_endpoint
    return env


def running_in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def with_s3_endpoint(url: str, endpoint_url: str | None) -> str:
    """`url`, and if it is s3:// and names no endpoint yet, `?endpoint_url=` added.

    Stores take their S3-compatible endpoint (MinIO, a local test server) from the
    URL itself, so one string carries everything a store needs to open.
    """
    parsed = urlparse(url)
    if parsed.scheme != "s3" or endpoint_url is None or "endpoint_url" in parse_qs(parsed.query):
        return url
    query = "&".join(q for q in (parsed.query, urlencode({"endpoint_url": endpoint_url})) if q)
    return parsed._replace(query=query).geturl()
