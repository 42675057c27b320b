"""The `serving` section: how the inference service serves the model."""

from __future__ import annotations

from typing import Literal, TypeAlias

from pydantic import Field

from mlbus.spec._base import SpecModel
from mlbus.spec._durations import Seconds

FeatureValue: TypeAlias = bool | int | float | str


class ServingSpec(SpecModel):
    """How the inference service serves the model.

    `canary_weight`: share of entities (sticky) sent to the canary. `shadow`: also
    score with the shadow model, log only. A raw field (not in the request, no
    online value or one older than `max_feature_age_s`) is *missing*:
    `missing_features: default` fills it from `defaults` (keyed by `view.feature`),
    `fail` refuses the request. A window aggregate is never missing: an entity
    with no events in the window has the aggregate of nothing (0 for counts and
    sums, null for means, min, max, last), exactly as training sees it (ADR 0020).
    `timeout_ms` bounds each online-store read in Predict; a read that misses it
    is tried once more when the caller's deadline leaves room for a whole second
    try (ADR 0029).
    """

    model: str
    canary_weight: float = Field(default=0.0, ge=0.0, le=1.0)
    shadow: bool = False
    timeout_ms: int = Field(default=100, gt=0, le=60_000)
    missing_features: Literal["fail", "default"] = "fail"
    defaults: dict[str, FeatureValue] = Field(default_factory=dict)
    max_feature_age_s: Seconds | None = None
