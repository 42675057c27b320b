"""How the demo reads the loop's control events: which retraining put the new model in place,
when a retraining is still open, and when the loop cannot close any more (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mlbus.bus import Publisher
from mlbus.config import KafkaSettings
from mlbus.demo import DemoSizes, LoopOptions, LoopRecord, SilentReporter, plan_scenario
from mlbus.demo._loop import LoopContext
from mlbus.demo._observe import BusObserver, LoopWatcher, Seen
from mlbus.events import (
    DriftDetected,
    DriftTestResult,
    Event,
    ModelPublished,
    ModelSignature,
    TensorSpec,
    TrainingCompleted,
    TrainingFailed,
    TrainingRequested,
)
from mlbus.example import fraud_spec_path
from mlbus.spec import load_spec

MODEL = "fraud_detector"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def plan_and_spec() -> tuple[object, object]:
    spec = load_spec(fraud_spec_path())
    sizes = DemoSizes(payments=6_000, bootstrap=1_500, days=8, drift_age=timedelta(hours=120))
    return plan_scenario(spec, sizes, now=NOW, seed=3), spec


def watcher_for(
    plan_and_spec: tuple[object, object], fallback_after: int | None
) -> tuple[LoopWatcher, BusObserver, LoopRecord]:
    plan, spec = plan_and_spec
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1")  # never connected in these tests
    observer = BusObserver(kafka, Publisher(kafka, source="test"))
    ctx = LoopContext(
        spec=spec,  # type: ignore[arg-type]
        plan=plan,  # type: ignore[arg-type]
        kafka=kafka,
        inference_address="127.0.0.1:1",
        offline_url="/nonexistent",
        redis_url="redis://127.0.0.1:1",
        key_prefix="test",
        logs=Path("/nonexistent"),
        options=LoopOptions(manual_retrain_after=fallback_after),
        reporter=SilentReporter(),
        alive=list,
    )
    record = LoopRecord()
    return LoopWatcher(ctx, observer, record), observer, record


def see(observer: BusObserver, event: Event, trace_id: str | None = None) -> None:
    observer.seen.append(Seen(event, trace_id))


def detection() -> DriftDetected:
    return DriftDetected(
        model=MODEL,
        version=1,
        results=(
            DriftTestResult(
                feature="card_activity.amount",
                kind="covariate",
                test="ks",
                statistic=0.3,
                threshold=0.1,
                drifted=True,
            ),
        ),
        window_start=NOW,
        window_end=NOW,
        n_reference=100,
        n_live=100,
    )


def completed(request: TrainingRequested, version: int, promoted: bool) -> TrainingCompleted:
    return TrainingCompleted(
        model=MODEL,
        run_id=f"run{version}",
        request_event_id=request.event_id,
        version=version,
        metrics={"auc": 0.8},
        dataset_fingerprint="f" * 64,
        rows=5000,
        duration_s=12.0,
        promoted=promoted,
        promotion_reason="beats champion" if promoted else "stays a candidate",
    )


def test_a_failed_drift_retraining_then_a_promoted_manual_one(
    plan_and_spec: tuple[object, object],
) -> None:
    watcher, observer, record = watcher_for(plan_and_spec, fallback_after=100)
    drift = detection()
    see(observer, drift, "a" * 32)
    by_drift = TrainingRequested(model=MODEL, reason="drift", cause_event_id=drift.event_id)
    see(observer, by_drift, "a" * 32)
    watcher.update()
    assert record.drift is not None
    assert record.drift.trace_id == "a" * 32
    assert record.drift_requests == 1
    assert watcher.retraining()  # the drift request has no outcome yet

    see(observer, TrainingFailed(model=MODEL, run_id="r", request_event_id=by_drift.event_id,
                                 stage="dataset", reason="too few rows"))  # fmt: skip
    watcher.update()
    assert not watcher.retraining()
    assert not watcher.cannot_close()  # the fallback is still to come
    assert any("too few rows" in note for note in record.notes)

    # The demo published its own request; the observer has not read it back yet.
    manual = TrainingRequested(model=MODEL, reason="manual")
    record.manual_retrain = True
    record.manual_request_id = manual.event_id
    assert watcher.retraining()
    assert not watcher.cannot_close()

    see(observer, manual)
    see(observer, completed(manual, 2, promoted=True), "b" * 32)
    watcher.update()
    assert record.retrained_version == 2
    assert record.retrained_by == "manual"
    assert record.retrain_request is manual
    assert record.retrain_trace_id == "b" * 32
    assert watcher.retraining()  # promoted, not answering yet

    signature = ModelSignature(inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, 13)),),
                               outputs=())  # fmt: skip
    see(observer, ModelPublished(model=MODEL, alias="champion", version=2, previous_version=1,
                                 artifact_uri="file:///a", sha256="0" * 64, signature=signature,
                                 reason="gate", actor="registry"), "c" * 32)  # fmt: skip
    watcher.update()
    assert record.published is not None
    assert record.publish_trace_id == "c" * 32


def test_without_a_fallback_a_failed_drift_retraining_ends_the_story(
    plan_and_spec: tuple[object, object],
) -> None:
    watcher, observer, record = watcher_for(plan_and_spec, fallback_after=None)
    drift = detection()
    see(observer, drift)
    request = TrainingRequested(model=MODEL, reason="drift", cause_event_id=drift.event_id)
    see(observer, request)
    see(observer, completed(request, 2, promoted=False))
    watcher.update()
    assert record.retrained_version is None
    assert record.completed is not None
    assert any("was not promoted" in note for note in record.notes)
    assert watcher.cannot_close()


def test_requests_for_other_models_or_reasons_are_not_retrainings(
    plan_and_spec: tuple[object, object],
) -> None:
    watcher, observer, record = watcher_for(plan_and_spec, fallback_after=None)
    see(observer, TrainingRequested(model="another", reason="drift"))
    see(observer, TrainingRequested(model=MODEL, reason="bootstrap"))
    watcher.update()
    assert record.drift_requests == 0
    assert record.retrain_request is None
    assert not watcher.retraining()
    assert not watcher.cannot_close()


def test_an_outcome_read_after_the_last_update_is_seen_before_deciding_to_stop(
    plan_and_spec: tuple[object, object],
) -> None:
    watcher, observer, record = watcher_for(plan_and_spec, fallback_after=100)
    drift = detection()
    see(observer, drift)
    by_drift = TrainingRequested(model=MODEL, reason="drift", cause_event_id=drift.event_id)
    see(observer, by_drift)
    see(observer, TrainingFailed(model=MODEL, run_id="r", request_event_id=by_drift.event_id,
                                 stage="dataset", reason="too few rows"))  # fmt: skip
    manual = TrainingRequested(model=MODEL, reason="manual")
    record.manual_retrain = True
    record.manual_request_id = manual.event_id
    watcher.update()
    # Read by the observer between two updates: the promoted model must not be missed.
    see(observer, manual)
    see(observer, completed(manual, 2, promoted=True))
    assert not watcher.cannot_close()
    assert record.retrained_version == 2
