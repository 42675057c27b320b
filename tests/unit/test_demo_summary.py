"""The demo's summary computation on recorded fakes: AUC segments, delays, reload, trace links."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from mlbus.demo import (
    AFTER_DRIFT,
    AFTER_RETRAIN,
    BEFORE_DRIFT,
    Milestones,
    ServedRequest,
    roc_auc,
    trace_links,
)
from mlbus.demo._summary import (
    detection_delay,
    failures_by_status,
    onset_to_new_model_s,
    reload_window,
    retraining_seconds,
    segments,
)
from mlbus.telemetry.spans import SpanRecord

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def served(
    index: int, version: int | None, score: float | None, sent_s: float, error: str | None = None
) -> ServedRequest:
    return ServedRequest(
        index=index,
        sent_at=at(sent_s),
        answered_at=at(sent_s + 0.01),
        version=version,
        score=score,
        error=error,
    )


# ── AUC ──────────────────────────────────────────────────────────────────────


def test_auc_of_perfect_reversed_and_tied_scores() -> None:
    assert roc_auc([False, False, True, True], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([False, False, True, True], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([False, True, False, True], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_auc_is_undefined_with_one_class_and_refuses_mismatched_lengths() -> None:
    assert roc_auc([True, True], [0.1, 0.9]) is None
    assert roc_auc([], []) is None
    with pytest.raises(ValueError, match="2 labels for 1 scores"):
        roc_auc([True, False], [0.3])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(min_value=0, max_value=20)), min_size=2, max_size=80
    )
)
def test_auc_matches_scikit_learn_including_ties(pairs: list[tuple[bool, int]]) -> None:
    labels = [y for y, _ in pairs]
    scores = [s / 20 for _, s in pairs]  # few distinct values: many ties
    ours = roc_auc(labels, scores)
    if len(set(labels)) < 2:
        assert ours is None
    else:
        assert ours == pytest.approx(roc_auc_score(labels, scores))


# ── segments ─────────────────────────────────────────────────────────────────


def test_segments_split_by_drift_point_and_by_the_version_that_answered() -> None:
    labels = {i: i % 2 == 1 for i in range(12)}
    requests = [
        # before drift (index < 4), v1 ranks perfectly
        *(served(i, 1, 0.9 if labels[i] else 0.1, i) for i in range(4)),
        # after drift, v1 ranks backwards
        *(served(i, 1, 0.1 if labels[i] else 0.9, i) for i in range(4, 8)),
        # after retraining, v2 ranks perfectly; one failed call is left out
        *(served(i, 2, 0.8 if labels[i] else 0.3, i) for i in range(8, 12)),
        served(12, None, None, 12, error="UNAVAILABLE: Redis"),
    ]
    parts = {s.name: s for s in segments(requests, labels, drift_at=4, initial_version=1,
                                          retrained_version=2)}  # fmt: skip
    assert parts[BEFORE_DRIFT].auc == 1.0
    assert parts[BEFORE_DRIFT].versions == (1,)
    assert parts[AFTER_DRIFT].auc == 0.0
    assert parts[AFTER_DRIFT].requests == 4
    assert parts[AFTER_RETRAIN].auc == 1.0
    assert parts[AFTER_RETRAIN].versions == (2,)
    assert parts[AFTER_RETRAIN].positives == 2


def test_segments_without_a_retrained_model_keep_every_drifted_answer_in_one_part() -> None:
    labels = {0: False, 1: True, 2: False, 3: True}
    requests = [served(i, 1, float(labels[i]), i) for i in range(4)]
    parts = segments(requests, labels, drift_at=2, initial_version=1, retrained_version=None)
    by_name = {s.name: s for s in parts}
    assert by_name[AFTER_DRIFT].requests == 2
    assert by_name[AFTER_RETRAIN].requests == 0
    assert by_name[AFTER_RETRAIN].auc is None


def test_unlabelled_payments_count_as_requests_but_not_in_the_auc() -> None:
    requests = [served(0, 1, 0.2, 0), served(1, 1, 0.9, 1), served(2, 1, 0.5, 2)]
    (before, _, _) = segments(
        requests, {0: False, 1: True}, drift_at=10, initial_version=1, retrained_version=None
    )
    assert (before.requests, before.labelled, before.auc) == (3, 2, 1.0)


# ── delays and the reload ────────────────────────────────────────────────────


def test_detection_delay_counts_drifted_payments_sent_before_the_detection() -> None:
    requests = [served(i, 1, 0.5, float(i)) for i in range(10)]
    milestones = Milestones(first_drifted_sent_at=at(5), drift_detected_at=at(7.5))
    delay = detection_delay(requests, drift_at=5, milestones=milestones)
    assert delay is not None
    assert delay.events == 3  # indexes 5, 6, 7
    assert delay.seconds == pytest.approx(2.5)
    assert not delay.false_alarm
    assert detection_delay(requests, 5, Milestones(first_drifted_sent_at=at(5))) is None


def test_a_detection_before_the_drift_is_a_false_alarm_with_a_negative_delay() -> None:
    """Never clamped to zero: a detection before any drifted payment reads as what it is."""
    requests = [served(i, 1, 0.5, float(i)) for i in range(10)]
    early = Milestones(first_drifted_sent_at=at(5), drift_detected_at=at(2))
    delay = detection_delay(requests, drift_at=5, milestones=early)
    assert delay is not None
    assert delay.events == 0
    assert delay.seconds == pytest.approx(-3.0)
    assert delay.false_alarm
    # The control run: no drifted payment is ever sent, so any detection is a false alarm.
    control = detection_delay(requests, 50, Milestones(drift_detected_at=at(4)))
    assert control is not None
    assert control.seconds is None
    assert control.false_alarm


def test_reload_window_and_onset_to_new_model() -> None:
    requests = [
        served(0, 1, 0.5, 0),
        served(1, 1, 0.5, 10),  # published at 10: inside the window
        served(2, None, None, 11, error="UNAVAILABLE: swap"),
        served(3, 1, 0.5, 12),
        served(4, 2, 0.5, 13),  # first answer of v2 at 13.01
        served(5, 2, 0.5, 20),
    ]
    milestones = Milestones(first_drifted_sent_at=at(1), new_version_published_at=at(10))
    window = reload_window(requests, milestones, new_version=2)
    assert window is not None
    # sent from the publication to v2's first answer, inclusive: 1, 3 and 4 served, 2 failed
    assert (window.served, window.failed) == (3, 1)
    assert window.ended_at == at(13.01)
    assert onset_to_new_model_s(requests, milestones, 2) == pytest.approx(12.01)
    assert reload_window(requests, milestones, new_version=3) is None
    assert onset_to_new_model_s(requests, milestones, None) is None


def test_retraining_time_prefers_the_bus_and_falls_back_to_the_trainers_measure() -> None:
    both = Milestones(
        retrain_requested_at=at(0), retrain_completed_at=at(42), retrain_duration_s=30.0
    )
    assert retraining_seconds(both) == pytest.approx(42.0)
    assert retraining_seconds(Milestones(retrain_duration_s=30.0)) == 30.0
    assert retraining_seconds(Milestones()) is None


def test_failures_are_counted_by_status_with_a_first_example() -> None:
    requests = [
        served(0, None, None, 0, error="UNAVAILABLE: the online store did not answer"),
        served(1, None, None, 1, error="UNAVAILABLE: later"),
        served(2, None, None, 2, error="DEADLINE_EXCEEDED: slow"),
        served(3, 1, 0.5, 3),
    ]
    counts, examples = failures_by_status(requests)
    assert counts == {"UNAVAILABLE": 2, "DEADLINE_EXCEEDED": 1}
    assert list(counts) == ["UNAVAILABLE", "DEADLINE_EXCEEDED"]
    assert examples["UNAVAILABLE"] == "UNAVAILABLE: the online store did not answer"


# ── trace links ──────────────────────────────────────────────────────────────

TRACE = "ab" * 16
OTHER = "cd" * 16


def span(name: str, service: str, trace_id: str = TRACE) -> SpanRecord:
    return SpanRecord(
        trace_id=trace_id,
        span_id=f"{abs(hash((name, service))) % 16**16:016x}",
        parent_span_id=None,
        name=name,
        kind="INTERNAL",
        service=service,
        start_ns=1,
        end_ns=2,
    )


def test_trace_links_name_each_hop_found_in_the_trace_and_only_there() -> None:
    spans = [
        span("drift.detected", "mlbus-drift"),
        span("mlbus.training.requested.v1 publish", "mlbus-drift"),
        span("training.run", "mlbus-trainer"),
        span("registry.register", "mlbus-registry"),
        # the alias move and the reload happened, but in another trace
        span("mlbus.model.published.v1 publish", "mlbus-registry", OTHER),
        span("mlbus.model.published.v1 process", "mlbus-inference", OTHER),
    ]
    links = trace_links(spans, TRACE)
    assert links.links == {
        "drift detection": True,
        "training request": True,
        "training run": True,
        "registration": True,
        "alias move": False,
        "reload": False,
    }
    assert "not in this trace: alias move, reload" in links.note
    assert links.services == ("mlbus-drift", "mlbus-registry", "mlbus-trainer")
    other = trace_links(spans, OTHER)
    assert other.links["alias move"]
    assert other.links["reload"]
    assert not other.links["training run"]


def test_without_a_trace_id_no_hop_is_linked() -> None:
    links = trace_links([span("training.run", "mlbus-trainer")], None)
    assert links.trace_id is None
    assert not any(links.links.values())


def test_segment_auc_matches_scikit_learn_on_a_realistic_stream() -> None:
    rng = np.random.default_rng(3)
    labels = {i: bool(rng.random() < 0.05) for i in range(2000)}
    requests = [
        served(i, 1, float(np.clip(0.3 * labels[i] + rng.normal(0.3, 0.2), 0, 1)), i)
        for i in range(2000)
    ]
    (before, _, _) = segments(
        requests, labels, drift_at=5000, initial_version=1, retrained_version=None
    )
    expected = roc_auc_score([labels[i] for i in range(2000)], [r.score for r in requests])
    assert before.auc == pytest.approx(expected)
