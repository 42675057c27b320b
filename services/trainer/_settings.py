"""Settings of the trainer (`MLBUS_TRAINER_*`)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from mlbus.config import ServiceSettings, with_s3_endpoint


class TrainerSettings(ServiceSettings):
    """How the trainer consumes requests, reads data and registers models.

    MLBUS_TRAINER_GROUP_ID              consumer group of training requests (mlbus-trainer)
    MLBUS_TRAINER_LABELS_GROUP_ID       consumer group recording label events (mlbus-trainer-labels)
    MLBUS_TRAINER_RECORD_LABELS         record validated label events into the label log (true)
    MLBUS_TRAINER_LABEL_FLUSH_ROWS      write a label Parquet file at most this many rows
    MLBUS_TRAINER_LABEL_FLUSH_INTERVAL_S  write buffered labels and commit their offsets at
                                        most this often (5; 0: after every fetch), and
                                        before each run; a crash replays at most that long
    MLBUS_TRAINER_REGISTRY_ADDRESS      host:port of the registry's gRPC API (127.0.0.1:8002)
    MLBUS_TRAINER_REGISTRY_TOKEN        bearer token for Register (unset: none)
    MLBUS_TRAINER_REGISTRY_RETRY_S      how long a run waits for an unreachable registry, trying
                                        again with backoff, before it fails (600)
    MLBUS_TRAINER_OFFLINE_URL           offline store (folder or s3://); default offline/ in the
                                        data folder, the feature service's default
    MLBUS_TRAINER_S3_ENDPOINT_URL       S3-compatible server for an s3:// offline store
    MLBUS_TRAINER_RUN_TIMEOUT_S         a run taking longer fails (3600)
    MLBUS_TRAINER_WORKER_NICE           how many steps the training worker process runs below
                                        the trainer's CPU priority (0: the same). Soaks at
                                        5 failed no fewer requests than at 0 and their fits
                                        took twice as long; at 10, beside one busy process,
                                        the demo's first fit (5 s idle) had not ended after
                                        240 s (ADR 0028)
    MLBUS_TRAINER_WORKER_THREADS        OpenMP/BLAS threads of the training worker's fits (1).
                                        With one per core (the libraries' default) a fit
                                        takes every core from the services beside it;
                                        raise it on a host or pod that trains only
                                        (ADR 0028)
    MLBUS_TRAINER_SEARCH_STORAGE        where `model.search` records runs and trials (Optuna
                                        RDB storage): a SQLAlchemy URL; the registry's
                                        PostgreSQL shares studies between replicas (tables in
                                        schema mlbus_search); default search.sqlite in the
                                        data folder (ADR 0023)
    MLBUS_TRAINER_SEARCH_JOIN_POLL_S    with a shared SEARCH_STORAGE, an idle trainer looks this
                                        often for another replica's running search of its
                                        model and joins it (5; 0: never; ADR 0023)
    MLBUS_TRAINER_SEARCH_N_JOBS         trials at once in this trainer (1)
    MLBUS_TRAINER_SEARCH_THREADS_PER_TRIAL  BLAS/OpenMP threads of one trial's fit (1)
    MLBUS_TRAINER_MLFLOW_TRACKING_URI   also log searches to MLflow (unset: not)
    """

    model_config = SettingsConfigDict(
        env_prefix="MLBUS_TRAINER_", env_nested_delimiter="__", extra="forbid"
    )

    group_id: str = "mlbus-trainer"
    labels_group_id: str = "mlbus-trainer-labels"
    record_labels: bool = True
    label_flush_rows: int = Field(default=50_000, ge=1)
    label_flush_interval_s: float = Field(default=5.0, ge=0, le=300)
    registry_address: str = "127.0.0.1:8002"
    registry_token: SecretStr | None = None
    registry_timeout_s: float = Field(default=30.0, gt=0)
    registry_retry_s: float = Field(default=600.0, ge=0)
    offline_url: str | None = Field(
        default=None, description="Parquet root (folder or s3:// URL); unset: the data folder."
    )
    s3_endpoint_url: str | None = Field(default=None, pattern=r"^https?://[^/?#\s]+/?$")
    run_timeout_s: float = Field(default=3600.0, gt=0)
    worker_nice: int = Field(default=0, ge=0, le=19)
    worker_threads: int = Field(default=1, ge=1, le=256)
    search_storage: str | None = Field(
        default=None, description="Optuna RDB storage URL; unset: search.sqlite in the data folder."
    )
    search_join_poll_s: float = Field(default=5.0, ge=0)
    search_n_jobs: int = Field(default=1, ge=1, le=64)
    search_threads_per_trial: int = Field(default=1, ge=1, le=256)
    mlflow_tracking_uri: str | None = None

    def joins_searches(self) -> bool:
        """Whether idle replicas join each other's searches: only on a shared (set) storage."""
        return self.search_storage is not None and self.search_join_poll_s > 0

    def resolved_search_storage(self) -> str:
        return self.search_storage or f"sqlite:///{self.data.search_db}"

    def resolved_offline_url(self) -> str:
        """The offline root; an s3:// one carries `s3_endpoint_url` as `?endpoint_url=`."""
        return with_s3_endpoint(
            self.offline_url or str(self.data.offline_store), self.s3_endpoint_url
        )
