"""Online/offline consistency: what serving fed the model against the offline row of that event.

For each prediction that names its event (`PredictionLogged.scored_event_id`),
the feature service compares each served value of a view with the offline row
of the same event once it is written (ADR 0020). Every value ends as one of:

- `match`: equal (exact for counts and strings; floats within a relative 1e-6);
- `lag`: different, and the online state had counted fewer of the entity's
  events when it was read than the offline row had before this event
  (`view_event_counts` < `prior_events`): an earlier event was not yet ingested
  when this one was scored. Counted apart, never hidden;
- `mismatch`: different for any other reason — a real skew.

Redis layout, beside the feature state (one home: `FeatureKeys`):
`<prefix>:consistency:<view>:<version>` is a hash of counters
(`<feature>|<outcome>`, `__since` in ms) and
`<prefix>:consistency-examples:<view>:<version>` a list of the latest
differences as JSON (newest first, at most `MAX_EXAMPLES`).

    report = await read_consistency(store, "card_activity", 1, names)
    report.match_rate, report.features[0].lag, report.examples[0].served
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from mlbus.errors import RetryableError
from mlbus.events import Scalar
from mlbus.featurestore._online import FeatureKeys, OnlineStore
from mlbus.redis_failures import REDIS_DOWN

Outcome = Literal["match", "lag", "mismatch"]
OUTCOMES: tuple[Outcome, ...] = ("match", "lag", "mismatch")
FLOAT_TOLERANCE = 1e-6
MAX_EXAMPLES = 50
_SINCE = "__since"


def same_value(served: Scalar, offline: Scalar) -> bool:
    """Equal as the issue defines it: exact, but floats within a relative 1e-6."""
    if isinstance(served, bool) or isinstance(offline, bool):
        return isinstance(served, bool) and isinstance(offline, bool) and served == offline
    if isinstance(served, int | float) and isinstance(offline, int | float):
        if isinstance(served, int) and isinstance(offline, int):
            return served == offline
        a, b = float(served), float(offline)
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=FLOAT_TOLERANCE, abs_tol=1e-12)
    return served == offline


@dataclass(frozen=True, slots=True)
class Difference:
    """One served value that is not the offline one, with what is needed to explain it."""

    outcome: Outcome
    entity_id: str
    event_id: str
    feature: str
    served: Scalar
    offline: Scalar
    served_at_ms: int | None
    event_time_ms: int
    served_counted: int
    prior_events: int | None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Difference:
        return cls(**json.loads(text))


def compare(
    served: Mapping[str, Scalar],
    served_counted: int,
    served_at_ms: int | None,
    entity_id: str,
    event_id: str,
    offline: Mapping[str, Scalar],
    event_time_ms: int,
    prior_events: int | None,
) -> tuple[dict[str, Outcome], list[Difference]]:
    """Each served feature's outcome against the offline row of the same event."""
    behind = prior_events is not None and served_counted < prior_events
    outcomes: dict[str, Outcome] = {}
    differences: list[Difference] = []
    for name, value in served.items():
        if name not in offline:
            continue
        if same_value(value, offline[name]):
            outcomes[name] = "match"
            continue
        outcome: Outcome = "lag" if behind else "mismatch"
        outcomes[name] = outcome
        differences.append(
            Difference(
                outcome,
                entity_id,
                event_id,
                name,
                value,
                offline[name],
                served_at_ms,
                event_time_ms,
                served_counted,
                prior_events,
            )
        )
    return outcomes, differences


@dataclass
class FeatureConsistency:
    """One feature's counts; `match_rate` leaves lag apart (it is reported on its own)."""

    feature: str
    match: int = 0
    lag: int = 0
    mismatch: int = 0

    @property
    def compared(self) -> int:
        return self.match + self.lag + self.mismatch

    @property
    def match_rate(self) -> float | None:
        judged = self.match + self.mismatch
        return self.match / judged if judged else None


@dataclass
class ViewConsistency:
    """Everything recorded for one view since `since_ms`."""

    view: str
    version: int
    features: list[FeatureConsistency]
    since_ms: int | None = None
    examples: list[Difference] = field(default_factory=list)

    def total(self, outcome: Outcome) -> int:
        return sum(getattr(f, outcome) for f in self.features)

    @property
    def compared(self) -> int:
        return sum(f.compared for f in self.features)

    @property
    def events(self) -> int:
        """Served vectors compared (each compares every feature it holds)."""
        return max((f.compared for f in self.features), default=0)

    @property
    def match_rate(self) -> float | None:
        judged = self.total("match") + self.total("mismatch")
        return self.total("match") / judged if judged else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "version": self.version,
            "since_ms": self.since_ms,
            "events_compared": self.events,
            "values_compared": self.compared,
            "match": self.total("match"),
            "lag": self.total("lag"),
            "mismatch": self.total("mismatch"),
            "match_rate": self.match_rate,
            "features": [
                {
                    "feature": f.feature,
                    "match": f.match,
                    "lag": f.lag,
                    "mismatch": f.mismatch,
                    "match_rate": f.match_rate,
                }
                for f in self.features
            ],
            "examples": [asdict(e) for e in self.examples],
        }


def _field(feature: str, outcome: str) -> str:
    return f"{feature}|{outcome}"


def stage_consistency(
    pipe: Any,
    keys: FeatureKeys,
    view: str,
    version: int,
    counts: Mapping[tuple[str, Outcome], int],
    examples: Sequence[Difference],
    now_ms: int,
) -> None:
    """Queue one flush of the monitor's deltas for `view` on a Redis pipeline."""
    counters_key = keys.consistency(view, version)
    pipe.hsetnx(counters_key, _SINCE, now_ms)
    for (feature, outcome), n in counts.items():
        if n:
            pipe.hincrby(counters_key, _field(feature, outcome), n)
    if examples:
        examples_key = keys.consistency_examples(view, version)
        pipe.lpush(examples_key, *[e.to_json() for e in examples])
        pipe.ltrim(examples_key, 0, MAX_EXAMPLES - 1)


async def read_consistency(
    store: OnlineStore, view: str, version: int, features: Sequence[str]
) -> ViewConsistency:
    """The recorded counts of `features` (in that order) and the latest differences.
    Redis unreachable: `RetryableError`, as for every read of the store."""
    pipe = store.client.pipeline(transaction=False)
    pipe.hgetall(store.keys.consistency(view, version))
    pipe.lrange(store.keys.consistency_examples(view, version), 0, MAX_EXAMPLES - 1)
    try:
        raw, examples = await pipe.execute()
    except REDIS_DOWN as exc:
        raise RetryableError(f"online store unavailable: {exc}") from exc
    counters = {k.decode() if isinstance(k, bytes) else k: int(v) for k, v in raw.items()}
    out = ViewConsistency(
        view,
        version,
        [FeatureConsistency(name) for name in features],
        since_ms=counters.get(_SINCE),
        examples=[Difference.from_json(e) for e in examples],
    )
    for f in out.features:
        for outcome in OUTCOMES:
            setattr(f, outcome, counters.get(_field(f.feature, outcome), 0))
    return out


async def reset_consistency(store: OnlineStore, view: str, version: int) -> None:
    """Forget the counts and differences recorded for `view` (they start again at 0)."""
    keys = store.keys
    try:
        await store.client.delete(
            keys.consistency(view, version), keys.consistency_examples(view, version)
        )
    except REDIS_DOWN as exc:
        raise RetryableError(f"online store unavailable: {exc}") from exc
