"""The soak's end-of-run invariants, as pure functions over what was sent and what was found.

Each check returns an `Invariant` (a name, pass or fail, the numbers behind it),
so a report can say what failed and by how much. Nothing here does I/O: the
runner reads the stores, the topics and the registry, and hands the facts in;
unit tests hand in deliberately broken facts to show that each check can fail.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mlbus.events import Scalar
from mlbus.featurestore import in_window
from mlbus.spec import FeatureDef

OK = "OK"
OUTSIDE = "outside faults"


@dataclass(frozen=True)
class Invariant:
    """One end-of-run promise, kept or broken, with the numbers that decide it."""

    name: str
    passed: bool
    detail: dict[str, object] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {"passed": self.passed, **self.detail}


# ── exactly once in a store ──────────────────────────────────────────────────


@dataclass(frozen=True)
class StoredRow:
    """One raw row of a store: the event it is for, and everything it says but when it
    was written (a row written again after a crash must say the same thing)."""

    event_id: str
    content: tuple[object, ...]


def exactly_once(name: str, accepted: Iterable[str], rows: Iterable[StoredRow]) -> Invariant:
    """Every accepted event has rows in the store, all saying the same thing, and the
    store has no row for an event that was not accepted.

    `lost`: accepted, no row. `duplicated`: rows that disagree (an event counted
    twice shows as a second row with other values). `repeated_rows`: extra rows
    identical to the first, which the stores allow after a crash between a write
    and its bookkeeping (ADR 0012) and every reader de-duplicates: reported, not failed.
    """
    expected = set(accepted)
    contents: dict[str, set[tuple[object, ...]]] = {}
    count: Counter[str] = Counter()
    for row in rows:
        contents.setdefault(row.event_id, set()).add(row.content)
        count[row.event_id] += 1
    lost = sorted(expected - contents.keys())
    duplicated = sorted(event_id for event_id, seen in contents.items() if len(seen) > 1)
    unexpected = sorted(contents.keys() - expected)
    repeated = sum(n - 1 for n in count.values())
    return Invariant(
        name,
        passed=not lost and not duplicated and not unexpected,
        detail={
            "accepted": len(expected),
            "stored": len(contents),
            "lost": len(lost),
            "duplicated": len(duplicated),
            "unexpected": len(unexpected),
            "repeated_rows": repeated,
            "examples": {
                "lost": lost[:5],
                "duplicated": duplicated[:5],
                "unexpected": unexpected[:5],
            },
        },
    )


# ── dead letters ─────────────────────────────────────────────────────────────

Position = tuple[str, int, int]
"""(topic, partition, offset) of a record on a source topic."""


@dataclass(frozen=True)
class Letter:
    """One record of the dead-letter topic: where the rejected record was, its bytes,
    the reasons given."""

    position: Position
    raw: bytes
    reasons: tuple[str, ...]


def dead_letters(malformed: Mapping[Position, bytes], letters: Sequence[Letter]) -> Invariant:
    """Every malformed record sent is on the dead-letter topic, with its original bytes and
    at least one reason; nothing else is there (the soak is the only producer, so any
    other letter is a valid event that was refused). A malformed record the producer
    sent twice (a retried delivery) is recognised by its bytes."""
    found: dict[Position, Letter] = {}
    for letter in letters:
        found.setdefault(letter.position, letter)
    missing = [p for p in malformed if p not in found]
    damaged = [p for p, raw in malformed.items() if p in found and found[p].raw != raw]
    unexplained = [p for p in malformed if p in found and not found[p].reasons]
    malformed_bytes = set(malformed.values())
    wrongly = [
        letter
        for letter in letters
        if letter.position not in malformed and letter.raw not in malformed_bytes
    ]
    codes: Counter[str] = Counter(
        reason for p in malformed if p in found for reason in found[p].reasons
    )
    return Invariant(
        "rejected events on the dead-letter topic with a reason",
        passed=not missing and not damaged and not unexplained and not wrongly,
        detail={
            "malformed_sent": len(malformed),
            "dead_lettered": len(malformed) - len(missing),
            "missing": len(missing),
            "bytes_differ": len(damaged),
            "without_reason": len(unexplained),
            "valid_rejected": len(wrongly),
            "reasons": dict(codes.most_common()),
            "examples": {
                "missing": [list(p) for p in missing[:5]],
                "valid_rejected": [
                    {"position": list(w.position), "reasons": list(w.reasons)} for w in wrongly[:5]
                ],
            },
        },
    )


# ── requests ─────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class RequestOutcome:
    """One client call: when it was sent (seconds since the soak began), how long it took,
    its gRPC status name (`OK` when answered), and the deadline it carried."""

    method: str
    sent_s: float
    elapsed_s: float
    status: str
    deadline_s: float
    detail: str = ""
    """What the server said with a failure (the gRPC details)."""


def died_with_inference(
    sent_s: float, answered_s: float, kills: Sequence[float], within_s: float = 10.0
) -> bool:
    """Whether a Predict's log may have died in a killed inference's buffer: the request
    was sent before a kill, and answered no more than `within_s` before it. An answer that
    came *after* the kill was sent before it too: SIGKILL stops the process at once, and a
    restarted one answers seconds later, never in the same call."""
    return any(sent_s <= kill and kill - answered_s <= within_s for kill in kills)


@dataclass(frozen=True)
class FaultWindow:
    """[start_s, end_s] of a fault, through its recovery and a grace period."""

    label: str
    start_s: float
    end_s: float


def window_of(sent_s: float, windows: Sequence[FaultWindow], ended_s: float | None = None) -> str:
    """The label of the first fault window that [`sent_s`, `ended_s`] overlaps, else
    `OUTSIDE`. A call still in flight when a fault began belongs to it: a kill resets
    the connections of the calls it finds (seen: two Predicts sent 50 ms before a kill
    of inference, reset by it, were counted as failures outside every fault)."""
    ended_s = sent_s if ended_s is None else ended_s
    for window in windows:
        if window.start_s <= ended_s and sent_s <= window.end_s:
            return window.label
    return OUTSIDE


def _window(outcome: RequestOutcome, windows: Sequence[FaultWindow]) -> str:
    return window_of(outcome.sent_s, windows, outcome.sent_s + outcome.elapsed_s)


def healthy_since(
    outcomes: Sequence[RequestOutcome],
    since_s: float,
    complete_s: float,
    span_s: float,
    minimum: int = 3,
) -> float | None:
    """When requests worked again after `since_s`: the send time of the first request of a
    run of answered ones spanning `span_s` (at least `minimum` requests). Only requests
    sent up to `complete_s` are looked at (the caller knows they have all returned);
    None while there is no such run."""
    sent = sorted((o.sent_s, o.status == OK) for o in outcomes if since_s <= o.sent_s <= complete_s)
    start: float | None = None
    count = 0
    for sent_s, ok in sent:
        if not ok:
            start, count = None, 0
            continue
        if start is None:
            start = sent_s
        count += 1
        if sent_s - start >= span_s and count >= minimum:
            return start
    return None


def requests_answered(
    outcomes: Sequence[RequestOutcome],
    windows: Sequence[FaultWindow],
    *,
    slack_s: float,
    unfinished: int = 0,
) -> Invariant:
    """Every request got an answer or a status before its deadline (+ `slack_s` for the
    client's own event loop), none was left hanging, and none failed outside a fault
    window. Failures are counted by status and by window."""
    late = [o for o in outcomes if o.elapsed_s > o.deadline_s + slack_s]
    failed = [o for o in outcomes if o.status != OK]
    by_status: Counter[str] = Counter(o.status for o in failed)
    by_window: dict[str, Counter[str]] = {}
    for outcome in failed:
        by_window.setdefault(_window(outcome, windows), Counter())[outcome.status] += 1
    sent_by_window: Counter[str] = Counter(_window(o, windows) for o in outcomes)
    outside = sum(by_window.get(OUTSIDE, Counter()).values())
    by_method: Counter[str] = Counter(o.method for o in outcomes)
    examples: dict[str, list[str]] = {}
    for outcome in failed:
        said = examples.setdefault(outcome.status, [])
        text = f"{outcome.method}: {outcome.detail}"[:300]
        if len(said) < 3 and text not in said:
            said.append(text)
    return Invariant(
        "every request answered or a clear status before its deadline",
        passed=not late and unfinished == 0 and outside == 0,
        detail={
            "requests": len(outcomes),
            "by_method": dict(by_method),
            "answered": len(outcomes) - len(failed),
            "failed": len(failed),
            "failed_outside_faults": outside,
            "late": len(late),
            "max_overshoot_s": round(max((o.elapsed_s - o.deadline_s for o in late), default=0), 3),
            "unfinished": unfinished,
            "failed_by_status": dict(by_status.most_common()),
            "failed_by_window": {
                label: {"sent": sent_by_window[label], **dict(counts.most_common())}
                for label, counts in by_window.items()
            },
            "failure_examples": examples,
            "outside_examples": [
                f"{o.sent_s:.1f}s {o.method} {o.status} after {o.elapsed_s:.2f}s"
                for o in sorted(failed, key=lambda o: o.sent_s)
                if _window(o, windows) == OUTSIDE
            ][:10],
            "late_examples": [
                f"{o.sent_s:.1f}s {o.method} {o.status} after {o.elapsed_s:.2f}s"
                for o in sorted(late, key=lambda o: o.sent_s)
            ][:10],
        },
    )


# ── registry alias history against the bus ──────────────────────────────────


@dataclass(frozen=True)
class AliasMove:
    """One alias change, as the registry records it or as `model.published` tells it."""

    event_id: str
    alias: str
    version: int


def alias_history(history: Sequence[AliasMove], published: Sequence[AliasMove]) -> Invariant:
    """The registry's alias history (oldest first) equals the `model.published` events of
    the model in the order they are on the bus. A publication repeated with the same
    event id (the outbox re-sent it after a crash) is at-least-once: counted, not failed."""
    seen: set[str] = set()
    distinct: list[AliasMove] = []
    for move in published:
        if move.event_id not in seen:
            seen.add(move.event_id)
            distinct.append(move)
    first_difference = next(
        (i for i, (a, b) in enumerate(zip(history, distinct, strict=False)) if a != b),
        None if len(history) == len(distinct) else min(len(history), len(distinct)),
    )
    return Invariant(
        "registry alias history equals model.published in order",
        passed=first_difference is None,
        detail={
            "registry_moves": len(history),
            "published_events": len(published),
            "republished": len(published) - len(distinct),
            "first_difference": first_difference,
            "around_difference": None
            if first_difference is None
            else {
                "registry": [m.__dict__ for m in history[first_difference : first_difference + 2]],
                "published": [
                    m.__dict__ for m in distinct[first_difference : first_difference + 2]
                ],
            },
        },
    )


# ── online values against a brute-force recomputation ───────────────────────


@dataclass(frozen=True)
class TimedEvent:
    """An accepted event of one entity: its id, event time and fields."""

    event_id: str
    time_ms: int
    fields: Mapping[str, Scalar]


def brute_force(
    features: Sequence[FeatureDef], events: Sequence[TimedEvent], at_ms: int
) -> dict[str, Scalar]:
    """Every feature of a view at `at_ms`, from scratch: raw fields from the latest event,
    each aggregate over the events in its window strictly before `at_ms` (ADR 0012's
    buckets, via `in_window`, ADR 0020's "strictly before")."""
    ordered = sorted(enumerate(events), key=lambda pair: (pair[1].time_ms, pair[0]))
    out: dict[str, Scalar] = {}
    latest = ordered[-1][1] if ordered else None
    for feature in features:
        if not feature.is_aggregate:
            out[feature.name] = None if latest is None else latest.fields.get(feature.name)
            continue
        assert feature.window_s is not None
        window_s = feature.window_s
        inside = [e for _, e in ordered if in_window(e.time_ms, at_ms, window_s)]
        values = (
            [e.fields.get(feature.source_field) for e in inside] if feature.source_field else []
        )
        present = [v for v in values if v is not None]
        out[feature.name] = _aggregate(feature, len(inside), present)
    return out


def _aggregate(feature: FeatureDef, events: int, present: Sequence[Scalar]) -> Scalar:
    function = feature.function
    numbers = [float(v) for v in present if isinstance(v, int | float)]
    if function == "count":
        return events if feature.source_field is None else len(present)
    if function == "sum":
        return math.fsum(numbers)
    if function == "mean":
        return math.fsum(numbers) / len(numbers) if numbers else None
    if function == "min":
        return min(numbers) if numbers else None
    if function == "max":
        return max(numbers) if numbers else None
    if function == "last":
        return present[-1] if present else None
    if function == "distinct_count":
        return len({str(v) for v in present})
    raise ValueError(f"no brute force for {function!r}")


def same_scalar(expected: Scalar, got: Scalar) -> bool:
    if isinstance(expected, float) or isinstance(got, float):
        if expected is None or got is None or isinstance(expected, str) or isinstance(got, str):
            return False
        return math.isclose(float(expected), float(got), rel_tol=1e-9, abs_tol=1e-6)
    return expected == got


@dataclass(frozen=True)
class Mismatch:
    entity_id: str
    feature: str
    expected: Scalar
    got: Scalar


def compare_values(
    entity_id: str, expected: Mapping[str, Scalar], got: Mapping[str, Scalar] | None
) -> list[Mismatch]:
    """Features whose stored value is not the recomputed one (a missing entity: all)."""
    if got is None:
        return [Mismatch(entity_id, name, value, None) for name, value in expected.items()]
    return [
        Mismatch(entity_id, name, value, got.get(name))
        for name, value in expected.items()
        if not same_scalar(value, got.get(name))
    ]


def online_values(entities: int, compared: int, mismatches: Sequence[Mismatch]) -> Invariant:
    return Invariant(
        "online values equal a brute-force recomputation",
        passed=not mismatches and compared > 0,
        detail={
            "entities": entities,
            "values_compared": compared,
            "mismatches": len(mismatches),
            "examples": [m.__dict__ for m in mismatches[:5]],
        },
    )


# ── faults and what is left behind ───────────────────────────────────────────


def recovery_summary(recoveries: Mapping[str, Sequence[float | None]]) -> dict[str, object]:
    """Per fault kind: how many, how many recovered, median and max recovery seconds."""
    out: dict[str, object] = {}
    for kind, values in sorted(recoveries.items()):
        done = sorted(v for v in values if v is not None)
        median = None
        if done:
            middle = len(done) // 2
            median = done[middle] if len(done) % 2 else (done[middle - 1] + done[middle]) / 2
        out[kind] = {
            "count": len(values),
            "recovered": len(done),
            "median": None if median is None else round(median, 2),
            "max": round(done[-1], 2) if done else None,
        }
    return out


def faults_recovered(recoveries: Mapping[str, Sequence[float | None]], expected: int) -> Invariant:
    """Every fault injected recovered, and every kind asked for was injected."""
    never = {kind: sum(v is None for v in values) for kind, values in recoveries.items()}
    return Invariant(
        "every fault recovered",
        passed=not any(never.values()) and len(recoveries) >= expected,
        detail={
            "kinds_injected": len(recoveries),
            "kinds_scheduled": expected,
            "not_recovered": {k: n for k, n in never.items() if n},
        },
    )


def nothing_left(processes: Sequence[str], ports: Sequence[int]) -> Invariant:
    return Invariant(
        "no process or port left behind",
        passed=not processes and not ports,
        detail={"processes": list(processes), "ports": list(ports)},
    )


# ── hostile input ────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class ServerMemory:
    """A server process's resident memory before its first and after its last hostile burst."""

    service: str
    pid: int
    start_bytes: int
    end_bytes: int
    bound_bytes: int
    """How much it may grow (`mlbus.soak._hostile.rss_growth_bound`)."""

    @property
    def growth_bytes(self) -> int:
        return self.end_bytes - self.start_bytes

    def as_json(self) -> dict[str, object]:
        mb = 1 << 20
        return {
            "service": self.service,
            "pid": self.pid,
            "start_mb": round(self.start_bytes / mb, 1),
            "end_mb": round(self.end_bytes / mb, 1),
            "growth_mb": round(self.growth_bytes / mb, 1),
            "bound_mb": round(self.bound_bytes / mb, 1),
        }


def hostile_survived(
    calls: int, unexpected: int, crashed: Sequence[str], memory: Sequence[ServerMemory]
) -> Invariant:
    """Every hostile call ended with an allowed status, no server died of it, none leaked."""
    leaking = [m for m in memory if m.growth_bytes > m.bound_bytes]
    return Invariant(
        "hostile input answered with a clear status, no server crashed or leaked",
        passed=calls > 0 and unexpected == 0 and not crashed and not leaking and bool(memory),
        detail={
            "calls": calls,
            "unexpected_statuses": unexpected,
            "crashed": list(crashed),
            "rss": [m.as_json() for m in memory],
            "leaking": [m.service for m in leaking],
        },
    )
