"""What Predict feeds the model: online values, request fields and the spec's policy.

For each entity and each model feature (`view.feature`, spec order):

- a **window aggregate** is the online value read at the scored moment (ADR 0020).
  It is never missing: an entity with no events in the window (unknown, expired,
  idle) gets the aggregate of nothing — 0 for counts and sums, null (NaN to the
  model) for means, min, max and last — the value its offline row holds;
- a **raw field** comes from the request's `fields` (the scored event's own
  values, as its offline row holds them); otherwise the entity's latest online
  value. With no online value, a null one, or one older than
  `serving.max_feature_age_s` it is *missing*: `missing_features: fail` refuses
  the whole request with FAILED_PRECONDITION naming each entity, feature and
  why; `default` uses `serving.defaults` and lists the feature as defaulted.

`EntityFeatures` keeps what was served — values, ages, defaults, how many events
each view had counted — so the prediction log carries exactly what the model saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mlbus.errors import PermanentError
from mlbus.events import Scalar

if TYPE_CHECKING:
    from mlbus.featurestore import FeatureVector
    from mlbus.spec import ServingSpec

_SHOWN_ENTITIES = 10


class MissingFeatures(PermanentError):
    """`missing_features: fail` and some entity lacks fresh values (FAILED_PRECONDITION)."""


@dataclass(frozen=True, slots=True)
class EntityFeatures:
    """One entity's model inputs in spec order, before encoding, and where they came from.

    `ages_s`: age of each online value used (from the entity's latest event to the
    scored moment); `defaulted`: features replaced by the spec's defaults;
    `counted`: per view, the events the online state had counted when read.
    """

    entity_id: str
    values: tuple[Scalar, ...]
    ages_s: dict[str, float]
    defaulted: tuple[str, ...]
    counted: dict[str, int] = field(default_factory=dict)


def resolve_features(
    vectors: Sequence[FeatureVector],
    refs: Sequence[str],
    serving: ServingSpec,
    fields: Mapping[str, Scalar] | None = None,
    aggregates: Mapping[str, Scalar] | None = None,
) -> list[EntityFeatures]:
    """Apply request fields and the missing/stale policy; raise `MissingFeatures` under `fail`.

    `aggregates`: the window aggregates among `refs`, each with its value for an
    entity without events (they are never missing)."""
    fields = fields or {}
    aggregates = aggregates or {}
    max_age = serving.max_feature_age_s
    use_defaults = serving.missing_features == "default"
    resolved: list[EntityFeatures] = []
    problems: list[str] = []
    for vector in vectors:
        values: list[Scalar] = []
        ages: dict[str, float] = {}
        defaulted: list[str] = []
        missing: list[str] = []
        for ref in refs:
            if ref in fields:
                values.append(fields[ref])
                continue
            age = vector.ages_s.get(ref)
            if ref in aggregates:
                values.append(vector.values.get(ref, aggregates[ref]))
                if age is not None:
                    ages[ref] = age
                continue
            value = vector.values.get(ref)
            why: str | None = None
            if age is None:
                why = "no online value"
            elif value is None:
                why = "null"
            elif max_age is not None and age > max_age:
                why = f"{age:.0f}s old > max_feature_age_s {max_age}s"
            if why is None:
                values.append(value)
                ages[ref] = float(age)  # type: ignore[arg-type]
            elif use_defaults and ref in serving.defaults:
                values.append(serving.defaults[ref])
                defaulted.append(ref)
            else:
                values.append(None)
                missing.append(f"{ref} ({why})")
        if missing:
            problems.append(f"{vector.entity_id!r}: {', '.join(missing)}")
        resolved.append(
            EntityFeatures(
                vector.entity_id, tuple(values), ages, tuple(defaulted), dict(vector.counted)
            )
        )
    if problems:
        shown = "; ".join(problems[:_SHOWN_ENTITIES])
        more = len(problems) - _SHOWN_ENTITIES
        raise MissingFeatures(
            f"missing or stale features (missing_features: {serving.missing_features}) for "
            f"{len(problems)} of {len(vectors)} entities: {shown}"
            + (f"; and {more} more" if more > 0 else "")
        )
    return resolved
