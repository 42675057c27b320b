"""Incremental sliding-window aggregation per entity, tolerant of late and replayed events.

Each aggregation window `W` is kept as time buckets of width `W / 60` (10 s for
10 m, 1 min for 1 h, 24 min for 24 h), each holding what its function needs
(a count, a sum, a min, a set of values, …). The value of a window at time `t`
combines the buckets `b` with `b(t) - n < b <= b(t)`, where `b(x) = x // width`
and `n` buckets span `W`: a window is "the last W, at a granularity of W/60".
Features are always evaluated at the entity's watermark (the latest event time
it has seen), so no bucket holds an event later than the evaluation time.

An update touches one bucket per aggregation (no rescans). An event later than
`watermark - allowed_lateness` lands in its own bucket, so it is counted in
exactly the windows that contain it; an older one is refused as too late. Event
ids seen within the lateness horizon are remembered, so a replayed event is not
counted twice (a replay older than the horizon is refused as too late anyway).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from mlbus.events import Scalar
from mlbus.spec import AggregationFunction, FeatureDef, FeatureView

BUCKETS_PER_WINDOW = 60
MIN_BUCKET_MS = 1000

FeatureValues = dict[str, Scalar]


class Applied(Enum):
    """What happened to one event."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    TOO_LATE = "too_late"


def bucket_geometry(window_s: int) -> tuple[int, int]:
    """(bucket width in ms, buckets per window) for a window of `window_s` seconds."""
    window_ms = window_s * 1000
    width = max(MIN_BUCKET_MS, window_ms // BUCKETS_PER_WINDOW)
    return width, math.ceil(window_ms / width)


def in_window(event_ms: int, at_ms: int, window_s: int) -> bool:
    """Whether an event at `event_ms` counts in the window of `window_s` evaluated at `at_ms`."""
    width, n = bucket_geometry(window_s)
    return event_ms <= at_ms and event_ms // width > at_ms // width - n


@dataclass(frozen=True, slots=True)
class _Agg:
    name: str
    function: AggregationFunction
    field: str | None
    window_s: int
    width_ms: int
    n_buckets: int


@dataclass(slots=True)
class EntityState:
    """Everything kept for one entity of one view; serialisable (`to_bytes`/`from_bytes`)."""

    watermark_ms: int | None = None
    last_event_id: str | None = None
    raw: dict[str, tuple[int, Scalar]] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    buckets: dict[str, dict[int, Any]] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        doc = {
            "w": self.watermark_ms,
            "e": self.last_event_id,
            "r": {k: [t, v] for k, (t, v) in self.raw.items()},
            "s": self.seen,
            "b": {
                name: [
                    [idx, sorted(b, key=repr) if isinstance(b, set) else b] for idx, b in bs.items()
                ]
                for name, bs in self.buckets.items()
            },
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes | str, distinct: frozenset[str] = frozenset()) -> EntityState:
        """Rebuild a state; `distinct` names the aggregations whose buckets are sets."""
        doc = json.loads(data)
        buckets: dict[str, dict[int, Any]] = {}
        for name, items in doc["b"].items():
            if name in distinct:
                buckets[name] = {int(idx): set(b) for idx, b in items}
            else:
                buckets[name] = {int(idx): b for idx, b in items}
        return cls(
            watermark_ms=doc["w"],
            last_event_id=doc["e"],
            raw={k: (int(t), v) for k, (t, v) in doc["r"].items()},
            seen={k: int(t) for k, t in doc["s"].items()},
            buckets=buckets,
        )


class ViewAggregator:
    """Computes one feature view incrementally: `apply` an event, read `values`.

    Pure (no I/O): the feature service loads and stores `EntityState`s; tests
    compare it against a brute-force recomputation.
    """

    def __init__(
        self, view: FeatureView, features: Sequence[FeatureDef], allowed_lateness_s: int
    ) -> None:
        if allowed_lateness_s < 0:
            raise ValueError(f"expected allowed_lateness_s >= 0, got {allowed_lateness_s}")
        self.view = view
        self.lateness_ms = allowed_lateness_s * 1000
        self.fields: tuple[str, ...] = tuple(view.fields)
        aggs: list[_Agg] = []
        for feature in features:
            if feature.function is None or feature.window_s is None:
                continue
            width, n = bucket_geometry(feature.window_s)
            aggs.append(
                _Agg(
                    feature.name,
                    feature.function,
                    feature.source_field,
                    feature.window_s,
                    width,
                    n,
                )
            )
        self._aggs = tuple(aggs)
        self.feature_names: tuple[str, ...] = tuple(f.name for f in features)
        self.distinct: frozenset[str] = frozenset(
            a.name for a in aggs if a.function == "distinct_count"
        )

    def load(self, data: bytes | str | None) -> EntityState:
        return EntityState() if data is None else EntityState.from_bytes(data, self.distinct)

    def apply(
        self, state: EntityState, event_id: str, event_ms: int, payload: Mapping[str, Scalar]
    ) -> Applied:
        """Fold one event into `state` (in place)."""
        if event_id in state.seen:
            return Applied.DUPLICATE
        old_wm = state.watermark_ms
        if old_wm is not None and event_ms < old_wm - self.lateness_ms:
            return Applied.TOO_LATE
        wm = event_ms if old_wm is None else max(old_wm, event_ms)
        state.watermark_ms = wm
        state.seen[event_id] = event_ms
        if event_ms == wm:
            state.last_event_id = event_id
        for name in self.fields:
            held = state.raw.get(name)
            if held is None or event_ms >= held[0]:
                state.raw[name] = (event_ms, payload.get(name))
        for agg in self._aggs:
            buckets = state.buckets.setdefault(agg.name, {})
            oldest = wm // agg.width_ms - agg.n_buckets  # buckets <= oldest are outside
            if wm != old_wm:
                for idx in [i for i in buckets if i <= oldest]:
                    del buckets[idx]
            idx = event_ms // agg.width_ms
            if idx > oldest:
                _fold(agg, buckets, idx, event_ms, payload)
        if wm != old_wm:
            horizon = wm - self.lateness_ms
            for eid in [e for e, t in state.seen.items() if t < horizon]:
                del state.seen[eid]
        return Applied.APPLIED

    def values(self, state: EntityState) -> FeatureValues:
        """Every feature of the view as of the entity's watermark, in view order."""
        out: FeatureValues = {}
        for name in self.fields:
            held = state.raw.get(name)
            out[name] = None if held is None else held[1]
        wm = state.watermark_ms
        for agg in self._aggs:
            buckets = state.buckets.get(agg.name, {})
            if wm is not None:
                oldest = wm // agg.width_ms - agg.n_buckets
                live = [b for i, b in buckets.items() if i > oldest]
            else:
                live = []
            out[agg.name] = _combine(agg.function, live)
        return {name: out[name] for name in self.feature_names}


def _fold(
    agg: _Agg, buckets: dict[int, Any], idx: int, event_ms: int, payload: Mapping[str, Scalar]
) -> None:
    function = agg.function
    value = payload.get(agg.field) if agg.field is not None else None
    if function == "count":
        if agg.field is None or value is not None:
            buckets[idx] = buckets.get(idx, 0) + 1
        return
    if value is None:
        return
    current = buckets.get(idx)
    if function == "sum":
        buckets[idx] = (current or 0.0) + float(value)
    elif function == "mean":
        n, s = current or (0, 0.0)
        buckets[idx] = [n + 1, s + float(value)]
    elif function == "min":
        buckets[idx] = value if current is None or value < current else current  # type: ignore[operator]
    elif function == "max":
        buckets[idx] = value if current is None or value > current else current  # type: ignore[operator]
    elif function == "last":
        if current is None or event_ms >= current[0]:
            buckets[idx] = [event_ms, value]
    elif function == "distinct_count":
        if current is None:
            buckets[idx] = {value}
        else:
            current.add(value)


def _combine(function: AggregationFunction, live: list[Any]) -> Scalar:
    if function == "count":
        return int(sum(live))
    if function == "sum":
        return float(math.fsum(live))
    if function == "mean":
        n = sum(b[0] for b in live)
        return float(math.fsum(b[1] for b in live) / n) if n else None
    if function == "min":
        return min(live) if live else None
    if function == "max":
        return max(live) if live else None
    if function == "last":
        return max(live, key=lambda b: b[0])[1] if live else None  # type: ignore[no-any-return]
    if function == "distinct_count":
        seen: set[Any] = set()
        for bucket in live:
            seen |= bucket
        return len(seen)
    raise ValueError(f"unknown aggregation function {function!r}")
