"""Settings of the drift service (`MLBUS_DRIFT_*`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mlbus.config import ServiceSettings
from mlbus.registry_client import RegistryAccess


class DriftSettings(ServiceSettings, RegistryAccess):
    """How the drift service consumes, keeps its state and reaches the registry.

    MLBUS_DRIFT_GROUP_ID              consumer group (mlbus-drift); also names the state in Redis
    MLBUS_DRIFT_REGISTRY_ADDRESS      host:port of the registry's gRPC API (127.0.0.1:8002)
    MLBUS_DRIFT_REGISTRY_TOKEN        bearer token (reads need none unless the registry says so)
    MLBUS_DRIFT_REGISTRY_TIMEOUT_S    per registry call (10)
    MLBUS_DRIFT_PROFILE_RETRY_S       a version without a profile is asked again after (300)
    MLBUS_DRIFT_PENDING_TTL_S         how long a prediction waits for its label (7 days)
    MLBUS_DRIFT_PENDING_MAX           most pending predictions kept in Redis per model (1,000,000)
    MLBUS_DRIFT_DETECTIONS_KEPT       recent detections kept for `mlbus drift status` (50)
    MLBUS_DRIFT_MONITOR_SHADOW        also monitor shadow-scored predictions (false)
    MLBUS_DRIFT_MAX_BATCH             records per fetch (1000)
    MLBUS_DRIFT_STATUS_INTERVAL_S     `mlbus drift status` is refreshed this often while records
                                      flow (5; a detection at once): a refresh runs the window tests
    MLBUS_DRIFT_COMMIT_INTERVAL_S     state, detections and offsets are saved at most this often
                                      (1.0; 0: after every fetch); a crash replays at most this
                                      long's records, and a detection is published this late
    MLBUS_DRIFT_RETRAIN_MIN_LABELS    an armed retraining fires once this many labels of predictions
                                      made since the drift window's start were joined (unset: the
                                      spec's model.min_rows)
    MLBUS_DRIFT_RETRAIN_MAX_WAIT_S    ... or once this long has passed since the detection (86400)
    MLBUS_DRIFT_RETRAIN_LOOKBACK_S    the training window also takes this much labelled history
                                      before the first label of a prediction made after the
                                      detection (unset: none; without such labels: from the
                                      drifted window's end, unset: all history)
    """

    model_config = SettingsConfigDict(
        env_prefix="MLBUS_DRIFT_", env_nested_delimiter="__", extra="forbid"
    )

    group_id: str = Field(default="mlbus-drift", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    profile_retry_s: float = Field(default=300.0, gt=0)
    pending_ttl_s: int = Field(default=7 * 86_400, ge=1)
    pending_max: int = Field(default=1_000_000, ge=1)
    detections_kept: int = Field(default=50, ge=1, le=10_000)
    monitor_shadow: bool = False
    max_batch: int = Field(default=1000, ge=1, le=100_000)
    commit_interval_s: float = Field(default=1.0, ge=0, le=60)
    status_interval_s: float = Field(default=5.0, gt=0, le=3600)
    retrain_lookback_s: float | None = Field(default=None, gt=0)
    retrain_min_labels: int | None = Field(default=None, ge=1)
    retrain_max_wait_s: float = Field(default=86_400.0, gt=0)
