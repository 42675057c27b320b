"""Sliding-window aggregation per entity: one definition of a feature's value at a moment.

**The value of an aggregate at time `t`** is its function over the entity's events
*strictly before* `t` whose bucket is in the window (ADR 0020): with buckets of
width `W / 60` (10 s for 10 m, 1 min for 1 h, 24 min for 24 h), `b(x) = x // width`
and `n` buckets spanning `W`, an event at `e` counts when `e < t` and
`b(e) > b(t) - n` — "the last W before t, its tail at a granularity of W/60",
the way Tecton and Chronon hop a window's tail. A view with
`include_current_event: true` also counts the event being scored.

- **Offline** (`event_values`): the value for an event is evaluated at the event's
  own time over the events counted before it, plus the event's own raw fields;
  this is the row training reads.
- **Online** (`steps`, `aggregates_at`): serving evaluates at request time. The
  online hash stores, per aggregate, the value as a step function of time
  (`steps`: it only changes when a bucket leaves the window), exact for any
  `t` after the entity's latest event; a request at or before that event (a
  burst scored out of order, a clock behind) is answered exactly from the
  state (`aggregates_at`), which keeps the recent events themselves.

An update touches one bucket per aggregation (no rescans). An event later than
`watermark - allowed_lateness` lands in its own bucket; an older one is refused
as too late. Recent events (`recent`: id, time, aggregated fields) are kept for
`allowed_lateness` plus the widest bucket, so a replayed event is recognised
and the bucket holding `t` can be rebuilt from the events before `t`.
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
Steps = list[list[Any]]
"""An aggregate as a function of time after the entity's latest event:
`[[until_ms, value], …, [None, empty]]` — `value` holds for `t < until_ms`."""


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
    """Whether an event at `event_ms` counts in the window of `window_s` evaluated at `at_ms`
    (strictly before `at_ms`, its bucket within the window's `n` buckets)."""
    width, n = bucket_geometry(window_s)
    return event_ms < at_ms and event_ms // width > at_ms // width - n


def empty_value(function: AggregationFunction) -> Scalar:
    """An aggregate over no events: 0 for counts and sums, null for the rest."""
    if function in ("count", "distinct_count"):
        return 0
    if function == "sum":
        return 0.0
    return None


def value_at(steps: Sequence[Sequence[Any]], at_ms: int) -> Scalar:
    """The value a step function (`steps`) takes at `at_ms`."""
    for until, value in steps:
        if until is None or at_ms < until:
            return value  # type: ignore[no-any-return]
    return None


@dataclass(frozen=True, slots=True)
class _Agg:
    name: str
    function: AggregationFunction
    field: str | None
    window_s: int
    width_ms: int
    n_buckets: int
    input: int  # index of `field` in the aggregator's inputs (-1: counts events)


@dataclass(slots=True)
class EntityState:
    """Everything kept for one entity of one view; serialisable (`to_bytes`/`from_bytes`).

    `recent`: event id → (time, values of the aggregated fields) of the events
    within the retention horizon (dedupe, and rebuilding the bucket that holds
    an evaluation time); `counted`: events applied since the state was created;
    `horizon_ms`: the oldest time the state can still be evaluated at exactly
    (the watermark minus the feature service's allowed lateness), recorded so a
    reader that does not know that setting (serving) knows it too.
    """

    watermark_ms: int | None = None
    last_event_id: str | None = None
    raw: dict[str, tuple[int, Scalar]] = field(default_factory=dict)
    recent: dict[str, tuple[int, list[Scalar] | None]] = field(default_factory=dict)
    buckets: dict[str, dict[int, Any]] = field(default_factory=dict)
    counted: int = 0
    horizon_ms: int | None = None

    def to_bytes(self) -> bytes:
        doc = {
            "w": self.watermark_ms,
            "e": self.last_event_id,
            "r": {k: [t, v] for k, (t, v) in self.raw.items()},
            "s": {k: [t, v] for k, (t, v) in self.recent.items()},
            "b": {
                name: [
                    [idx, sorted(b, key=repr) if isinstance(b, set) else b] for idx, b in bs.items()
                ]
                for name, bs in self.buckets.items()
            },
            "n": self.counted,
            "h": self.horizon_ms,
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
        recent: dict[str, tuple[int, list[Scalar] | None]] = {}
        for k, held in doc["s"].items():
            # a state written before ADR 0020 kept only the time: values unknown
            recent[k] = (int(held), None) if isinstance(held, int) else (int(held[0]), held[1])
        return cls(
            watermark_ms=doc["w"],
            last_event_id=doc["e"],
            raw={k: (int(t), v) for k, (t, v) in doc["r"].items()},
            recent=recent,
            buckets=buckets,
            counted=int(doc.get("n", 0)),
            horizon_ms=doc.get("h"),
        )


class ViewAggregator:
    """Computes one feature view incrementally: `apply` an event, read values at a time.

    Pure (no I/O): the feature service loads and stores `EntityState`s, serving
    reads `steps` (or the state); tests compare it with a brute-force recomputation.
    """

    def __init__(
        self, view: FeatureView, features: Sequence[FeatureDef], allowed_lateness_s: int
    ) -> None:
        if allowed_lateness_s < 0:
            raise ValueError(f"expected allowed_lateness_s >= 0, got {allowed_lateness_s}")
        self.view = view
        self.include_current = view.include_current_event
        self.lateness_ms = allowed_lateness_s * 1000
        self.fields: tuple[str, ...] = tuple(view.fields)
        inputs: list[str] = []
        for feature in features:
            source = feature.source_field
            if feature.function is not None and source is not None and source not in inputs:
                inputs.append(source)
        self.inputs: tuple[str, ...] = tuple(inputs)
        """The source fields the aggregations read (kept per recent event)."""
        aggs: list[_Agg] = []
        for feature in features:
            if feature.function is None or feature.window_s is None:
                continue
            width, n = bucket_geometry(feature.window_s)
            source = feature.source_field
            aggs.append(
                _Agg(
                    feature.name,
                    feature.function,
                    source,
                    feature.window_s,
                    width,
                    n,
                    -1 if source is None else inputs.index(source),
                )
            )
        self._aggs = tuple(aggs)
        self.aggregates: tuple[str, ...] = tuple(a.name for a in aggs)
        self.feature_names: tuple[str, ...] = tuple(f.name for f in features)
        self.distinct: frozenset[str] = frozenset(
            a.name for a in aggs if a.function == "distinct_count"
        )
        widest = max((a.width_ms for a in aggs), default=0)
        self.widest_ms = widest
        self.retention_ms = self.lateness_ms + widest
        """How far behind the watermark recent events are kept: any time a late event
        may be evaluated at (lateness) plus the bucket that holds it."""

    def load(self, data: bytes | str | None) -> EntityState:
        return EntityState() if data is None else EntityState.from_bytes(data, self.distinct)

    def empty_values(self) -> FeatureValues:
        """The aggregates of an entity with no events (an unknown or expired entity)."""
        return {a.name: empty_value(a.function) for a in self._aggs}

    # ── updates ──────────────────────────────────────────────────────────────

    def admit(self, state: EntityState, event_id: str, event_ms: int) -> Applied:
        """What `apply` would do with this event, without doing it."""
        if event_id in state.recent:
            return Applied.DUPLICATE
        wm = state.watermark_ms
        if wm is not None and event_ms < wm - self.lateness_ms:
            return Applied.TOO_LATE
        return Applied.APPLIED

    def apply(
        self, state: EntityState, event_id: str, event_ms: int, payload: Mapping[str, Scalar]
    ) -> Applied:
        """Fold one event into `state` (in place)."""
        outcome = self.admit(state, event_id, event_ms)
        if outcome is not Applied.APPLIED:
            return outcome
        old_wm = state.watermark_ms
        wm = event_ms if old_wm is None else max(old_wm, event_ms)
        state.watermark_ms = wm
        state.counted += 1
        state.recent[event_id] = (event_ms, [payload.get(name) for name in self.inputs])
        if event_ms == wm:
            state.last_event_id = event_id
        for name in self.fields:
            held = state.raw.get(name)
            if held is None or event_ms >= held[0]:
                state.raw[name] = (event_ms, payload.get(name))
        horizon = wm - self.lateness_ms  # the oldest time an event may still be counted at
        state.horizon_ms = horizon
        for agg in self._aggs:
            buckets = state.buckets.setdefault(agg.name, {})
            if wm != old_wm:  # keep every bucket a window at `horizon` or later still needs
                oldest = horizon // agg.width_ms - agg.n_buckets
                for idx in [i for i in buckets if i <= oldest]:
                    del buckets[idx]
            _fold(agg, buckets, event_ms // agg.width_ms, event_ms, payload.get(agg.field or ""))
        if wm != old_wm:
            keep_from = wm - self.retention_ms
            for eid in [e for e, (t, _) in state.recent.items() if t < keep_from]:
                del state.recent[eid]
        return Applied.APPLIED

    # ── reads ────────────────────────────────────────────────────────────────

    def event_values(
        self, state: EntityState, event_ms: int, payload: Mapping[str, Scalar]
    ) -> FeatureValues:
        """The feature values *of this event*, with `state` as it was before the event:
        its own raw fields, the aggregates at its time (ADR 0020). The offline row."""
        out: FeatureValues = {name: payload.get(name) for name in self.fields}
        current = payload if self.include_current else None
        out.update(self.aggregates_at(state, event_ms, current))
        return {name: out[name] for name in self.feature_names}

    def last_values(self, state: EntityState) -> FeatureValues:
        """The raw fields of the entity's latest event (what the online hash keeps)."""
        return {name: (held[1] if (held := state.raw.get(name)) else None) for name in self.fields}

    def covers(self, state: EntityState, at_ms: int) -> bool:
        """Whether `aggregates_at(state, at_ms)` is exact: `at_ms` is after the entity's
        latest event, or recent enough that the events around it are still kept."""
        wm = state.watermark_ms
        return wm is None or at_ms > wm or at_ms >= self._horizon(state)

    def _horizon(self, state: EntityState) -> int:
        if state.horizon_ms is not None:
            return state.horizon_ms
        return (state.watermark_ms or 0) - self.lateness_ms

    def aggregates_at(
        self,
        state: EntityState,
        at_ms: int,
        current: Mapping[str, Scalar] | None = None,
    ) -> FeatureValues:
        """Every aggregate at `at_ms` over the counted events strictly before it, plus
        `current` (the event being scored, for `include_current_event` views).

        Exact when `covers(state, at_ms)`; otherwise the bucket holding `at_ms` is taken
        as stored (events at or after `at_ms` in it are counted too)."""
        wm = state.watermark_ms
        later: list[tuple[int, list[Scalar] | None]] = []
        if wm is not None and at_ms <= wm:
            later = [held for held in state.recent.values() if held[0] >= at_ms]
        out: FeatureValues = {}
        for agg in self._aggs:
            buckets = state.buckets.get(agg.name, {})
            head = at_ms // agg.width_ms
            lowest = head - agg.n_buckets
            live = [b for i, b in buckets.items() if lowest < i < head]
            head_bucket = buckets.get(head)
            if any(t // agg.width_ms == head for t, _ in later):
                head_bucket = self._rebuild(state, agg, head, at_ms)
            if current is not None:
                head_bucket = _copy(head_bucket)
                scratch = {head: head_bucket} if head_bucket is not None else {}
                _fold(agg, scratch, head, at_ms, current.get(agg.field or ""))
                head_bucket = scratch.get(head)
            if head_bucket is not None:
                live.append(head_bucket)
            out[agg.name] = _combine(agg.function, live)
        return out

    def _rebuild(self, state: EntityState, agg: _Agg, head: int, at_ms: int) -> Any:
        """Bucket `head` of `agg` from the recent events before `at_ms` (in arrival order,
        as they were folded). Falls back to the stored bucket when some event of it is
        older than what is kept (`covers` says so) or was kept without its values."""
        start = head * agg.width_ms
        if start < self._horizon(state) - self.widest_ms:  # some of its events were not kept
            return state.buckets.get(agg.name, {}).get(head)
        scratch: dict[int, Any] = {}
        for t, values in state.recent.values():
            if start <= t < at_ms:
                if agg.input < 0:  # a plain count needs no values
                    _fold(agg, scratch, head, t, None)
                elif values is None:
                    return state.buckets.get(agg.name, {}).get(head)
                else:
                    _fold(agg, scratch, head, t, values[agg.input])
        return scratch.get(head)

    def steps(self, state: EntityState) -> dict[str, Steps]:
        """Each aggregate as a step function of time, exact for any `t` after the
        watermark: it changes only when a bucket leaves the window. The online hash
        stores this, so serving evaluates a window at request time without the state."""
        wm = state.watermark_ms
        out: dict[str, Steps] = {}
        for agg in self._aggs:
            empty = empty_value(agg.function)
            buckets = state.buckets.get(agg.name, {})
            if wm is None:
                out[agg.name] = [[None, empty]]
                continue
            # bucket i counts at t (> wm) while t < (i + n) * width
            alive = sorted(i for i in buckets if (i + agg.n_buckets) * agg.width_ms > wm + 1)
            steps: Steps = []
            for j, i in enumerate(alive):
                value = _combine(agg.function, [buckets[k] for k in alive[j:]])
                steps.append([(i + agg.n_buckets) * agg.width_ms, value])
            steps.append([None, empty])
            out[agg.name] = steps
        return out


def _copy(bucket: Any) -> Any:
    if isinstance(bucket, set):
        return set(bucket)
    if isinstance(bucket, list):
        return list(bucket)
    return bucket


def _fold(agg: _Agg, buckets: dict[int, Any], idx: int, event_ms: int, value: Scalar) -> None:
    """Fold one event (its value of `agg.field`, ignored for a plain count) into bucket `idx`."""
    function = agg.function
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
