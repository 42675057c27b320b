"""The training run's stages, timed in the worker, become child spans of the run's trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mlbus.example import fraud_spec_path
from mlbus.featurestore import OfflineRow, OfflineStore
from mlbus.spec import load_spec
from mlbus.trainer import _service
from mlbus.training import LabelRow, StageTiming, TrainingJob, run_job, write_labels
from mlbus.training._run import _StageClock


def test_each_stage_lasts_until_the_next_starts_and_progress_still_hears_them() -> None:
    heard: list[str] = []
    clock = _StageClock(heard.append)
    for stage in ("dataset", "split", "fit"):
        clock(stage)
    clock.finish()
    clock.finish()  # idempotent: nothing open

    assert heard == ["dataset", "split", "fit"]
    assert [s.name for s in clock.stages] == heard
    for before, after in zip(clock.stages, clock.stages[1:], strict=False):
        assert before.start_ns <= before.end_ns <= after.start_ns


def test_stage_timings_become_children_of_the_current_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("mlbus.trainer")
    monkeypatch.setattr(_service, "_tracer", tracer)
    stages = [StageTiming("dataset", 1_000, 2_000), StageTiming("fit", 2_000, 5_000)]

    with tracer.start_as_current_span("training.pipeline") as parent:
        _service._record_stage_spans(stages)

    spans = {s.name: s for s in exporter.get_finished_spans()}
    for stage in stages:
        span = spans[f"training.{stage.name}"]
        assert span.parent is not None
        assert span.parent.span_id == parent.get_span_context().span_id
        assert span.context.trace_id == parent.get_span_context().trace_id
        assert (span.start_time, span.end_time) == (stage.start_ns, stage.end_ns)
    provider.shutdown()


def test_a_run_reports_its_stages_in_order(tmp_path: Path) -> None:
    spec = load_spec(fraud_spec_path())
    spec = spec.model_copy(
        update={"model": spec.model.model_copy(update={"min_rows": 50, "params": {"max_iter": 5}})}
    )
    offline = OfflineStore(tmp_path)
    features = spec.view_features("card_activity")
    rng = np.random.default_rng(3)
    t0 = 1_748_736_000_000
    rows = [
        OfflineRow(
            f"card_{i % 20:06d}",
            f"tx{i}",
            t0 + i * 60_000,
            t0 + i * 60_000,
            t0 + i * 60_000,
            {
                f.name: float(rng.random()) if f.kind == "numeric" else (f.values or ("x",))[0]
                for f in features
            },
        )
        for i in range(200)
    ]
    offline.write_rows("card_activity", 1, features, rows)
    write_labels(
        offline,
        "chargebacks",
        [
            LabelRow(r.entity_id, r.event_id, r.event_time_ms + 1, f"cb{i}", i % 3 == 0)
            for i, r in enumerate(rows)
        ],
    )

    outcome = run_job(TrainingJob(spec, str(tmp_path)))

    names = [s.name for s in outcome.stages]
    assert names[0] == "dataset"
    for stage in ("split", "fit", "convert", "parity", "evaluate", "profile"):
        assert stage in names
    assert all(s.start_ns <= s.end_ns for s in outcome.stages)
