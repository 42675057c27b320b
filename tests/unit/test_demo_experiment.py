"""`mlbus demo --story experiment`: its spec, its verdict summary and how it is printed."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from mlbus.cli import _demo as cli_demo
from mlbus.cli import app
from mlbus.config import MlbusSettings
from mlbus.demo import (
    EXPERIMENT_SIZES,
    DemoConfig,
    DemoRun,
    DemoSizes,
    ExperimentResult,
    LoopRecord,
    ServedRequest,
    build_summary,
    demo_catalogue,
    experiment_result,
    experiment_spec,
    plan_scenario,
    story_sizes,
)
from mlbus.events import ExperimentActed, ExperimentDecided
from mlbus.example import GenerationError, fraud_spec_path
from mlbus.runtime import ServiceSpec
from mlbus.spec import load_spec

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def served(index: int, version: int, sent_s: float) -> ServedRequest:
    return ServedRequest(
        index=index, sent_at=at(sent_s), answered_at=at(sent_s + 0.01), version=version, score=0.5
    )


def decided(occurred_s: float) -> ExperimentDecided:
    return ExperimentDecided(
        occurred_at=at(occurred_s),
        experiment_id="fraud_detector:canary:v2-vs-v1",
        model="fraud_detector",
        alias="canary",
        champion_version=1,
        challenger_version=2,
        verdict="better",
        metric="auc",
        champion_value=0.61,
        challenger_value=0.83,
        difference=0.22,
        ci_low=0.12,
        ci_high=0.32,
        p_value=0.004,
        alpha=0.05,
        champion_samples=1_900,
        challenger_samples=2_100,
        started_at=at(10),
        looks=37,
    )


def acted(decision: ExperimentDecided) -> ExperimentActed:
    return ExperimentActed(
        experiment_id=decision.experiment_id,
        decision_event_id=decision.event_id,
        model="fraud_detector",
        alias="canary",
        version=2,
        action="promote",
        outcome="done",
        reason="better: auc +0.220 (gates passed)",
    )


# ── the spec and the config ─────────────────────────────────────────────────


def test_the_experiment_spec_sends_a_retrained_version_out_as_canary_and_acts(
    tmp_path: Path,
) -> None:
    path = experiment_spec(fraud_spec_path(), tmp_path / "run", 0.5)
    spec = load_spec(path)
    original = load_spec(fraud_spec_path())
    assert path.parent == tmp_path / "run"
    assert spec.model.gates.promote_to == "canary"
    assert spec.serving.canary_weight == 0.5
    assert spec.outcomes.experiments.on_better == "promote"
    assert spec.outcomes.experiments.on_worse == "rollback"
    # everything else is the example's
    assert spec.model.gates.minimums == original.model.gates.minimums
    assert spec.features == original.features
    assert original.model.gates.promote_to == "champion"


def test_the_story_and_canary_weight_are_checked() -> None:
    assert DemoConfig().story == "loop"
    with pytest.raises(GenerationError, match="story"):
        DemoConfig(story="canary")  # type: ignore[arg-type]
    with pytest.raises(GenerationError, match="canary weight"):
        DemoConfig(story="experiment", canary_weight=1.0)


def test_the_outcomes_service_is_told_where_the_demos_registry_is() -> None:
    """By the Supervisor, which knows where the registry really started."""
    catalogue = (
        ServiceSpec("registry", "mlbus.registry", grpc_port=8002),
        ServiceSpec("outcomes", "mlbus.outcomes", grpc_port=8004, calls_registry=True),
    )
    services = {s.name: s for s in demo_catalogue({}, catalogue)}
    started_at = f"127.0.0.1:{services['registry'].grpc_port}"
    settings = MlbusSettings(data_dir=Path("/tmp/x"))
    env = services["outcomes"].environment(settings, 1, None, started_at)
    assert env["MLBUS_OUTCOMES_REGISTRY_ADDRESS"] == started_at


def test_the_experiment_story_streams_a_longer_drift_at_the_loop_storys_pace() -> None:
    loop, experiment = story_sizes("loop"), story_sizes("experiment")
    assert loop == DemoSizes()
    assert (loop.payments, loop.days, loop.drift_age) == (40_000, 8, timedelta(hours=120))
    assert experiment == EXPERIMENT_SIZES
    # the same payments a day and the same stretch before the drift as the loop story
    assert experiment.payments / experiment.days == loop.payments / loop.days
    assert timedelta(days=experiment.days) - experiment.drift_age == (
        timedelta(days=loop.days) - loop.drift_age
    )
    assert experiment.drift_age > loop.drift_age
    assert experiment.bootstrap == loop.bootstrap


def test_concept_drift_gets_the_longer_drifted_stretch_in_either_story() -> None:
    """Only labels show it, so it is found late; the retraining then needs more labels."""
    for story in ("loop", "experiment"):
        concept = story_sizes(story, "concept")
        assert replace(concept, drift_kind="both") == EXPERIMENT_SIZES
        assert concept.drift_kind == "concept"
    assert story_sizes("loop", "covariate") == replace(DemoSizes(), drift_kind="covariate")


def test_the_experiment_storys_canary_can_reach_the_first_look_on_each_arm() -> None:
    """EXPERIMENT_SIZES' arithmetic on the generated payments: after the ~17,700 drifted
    payments before the canary goes out (measured), half of the labelled frauds sent
    clear `min_class_count` with room for the mSPRT (~90-115 frauds per arm)."""
    spec = load_spec(fraud_spec_path())
    plan = plan_scenario(spec, EXPERIMENT_SIZES, now=T0, seed=7)
    canary_from = plan.drift_at + 17_700
    frauds = sum(1 for p in plan.payments[canary_from:] if p.label is not None and p.is_fraud)
    assert frauds / 2 >= 1.8 * spec.outcomes.experiments.min_class_count


def test_the_cli_runs_the_experiment_story_with_its_sizes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    configs: list[DemoConfig] = []

    def fake_run(
        settings: MlbusSettings, config: DemoConfig, reporter: object, run: DemoRun, **_: object
    ) -> DemoRun:
        configs.append(config)
        return run

    monkeypatch.setattr("mlbus.demo.run_demo", fake_run)
    for story, extra in (("experiment", []), ("loop", []), ("experiment", ["--payments", "60000"])):
        result = CliRunner().invoke(
            app, ["demo", "--story", story, "--data-dir", str(tmp_path / story), *extra]
        )
        assert result.exit_code == 0, result.output
    experiment, loop, more = configs
    assert experiment.sizes == EXPERIMENT_SIZES
    assert experiment.story == "experiment"
    assert loop.sizes == DemoSizes()
    assert (more.sizes.payments, more.sizes.days) == (60_000, EXPERIMENT_SIZES.days)


# ── the verdict's summary ───────────────────────────────────────────────────


def test_a_verdict_reports_its_evidence_the_time_to_it_and_the_action() -> None:
    decision = decided(occurred_s=95.5)
    stream = [served(0, 1, 5), served(1, 1, 20), served(2, 2, 21), served(3, 2, 22)]
    result = experiment_result(
        stream,
        champion_version=1,
        challenger_version=2,
        canary_published_at=at(15),
        decided=decision,
        acted=acted(decision),
    )
    assert result.verdict == "better"
    assert (result.champion_served, result.challenger_served) == (1, 2)  # since the canary
    assert (result.champion_outcomes, result.challenger_outcomes) == (1_900, 2_100)
    assert (result.ci_low, result.ci_high) == (0.12, 0.32)
    assert result.seconds_to_decision == 80.5
    assert (result.action, result.action_outcome) == ("promote", "done")
    assert result.note is None


def test_no_verdict_is_reported_as_not_yet_with_what_was_served() -> None:
    result = experiment_result(
        [served(0, 1, 20), served(1, 2, 21)],
        champion_version=1,
        challenger_version=2,
        canary_published_at=at(15),
        decided=None,
        acted=None,
        not_yet_note="no verdict acted on within 2 live payments",
    )
    assert result.verdict == "not yet"
    assert result.metric is None
    assert result.seconds_to_decision is None
    assert (result.champion_served, result.challenger_served) == (1, 1)
    assert result.note == "no verdict acted on within 2 live payments"


def test_the_frauds_each_arm_answered_are_counted_from_the_labels_sent() -> None:
    stream = [
        served(0, 1, 5),  # before the canary: not counted
        served(1, 1, 20),
        served(2, 1, 21),
        served(3, 2, 22),
        served(4, 2, 23),
        served(5, 2, 24),
    ]
    labels = {0: True, 1: True, 2: False, 3: True, 4: True}  # 5: label not sent yet
    result = experiment_result(
        stream,
        champion_version=1,
        challenger_version=2,
        canary_published_at=at(15),
        decided=None,
        acted=None,
        labels=labels,
    )
    assert (result.champion_frauds, result.challenger_frauds) == (1, 2)
    unknown = experiment_result(
        stream,
        champion_version=1,
        challenger_version=None,
        canary_published_at=at(15),
        decided=None,
        acted=None,
        labels=labels,
    )
    assert (unknown.champion_frauds, unknown.challenger_frauds) == (1, None)
    assert (
        experiment_result(
            stream,
            champion_version=1,
            challenger_version=2,
            canary_published_at=at(15),
            decided=None,
            acted=None,
        ).champion_frauds
        is None
    )


def test_a_verdict_whose_action_was_not_seen_says_so() -> None:
    result = experiment_result(
        [],
        champion_version=1,
        challenger_version=2,
        canary_published_at=None,
        decided=decided(30),
        acted=None,
    )
    assert result.verdict == "better"
    assert result.action is None
    assert result.seconds_to_decision is None
    assert result.note is not None
    assert "experiment.acted" in result.note


# ── printed ─────────────────────────────────────────────────────────────────


def printed(result: ExperimentResult | None, monkeypatch: pytest.MonkeyPatch) -> str:
    spec = load_spec(fraud_spec_path())
    sizes = DemoSizes(payments=6_000, bootstrap=1_500, days=8, drift_age=timedelta(hours=120))
    plan = plan_scenario(spec, sizes, now=T0, seed=3)
    summary = build_summary(
        spec, plan, LoopRecord(), MlbusSettings(data_dir=Path("/tmp/x")), 3, None, 1.0
    ).model_copy(update={"story": "experiment", "experiment": result})
    out = io.StringIO()
    monkeypatch.setattr(cli_demo, "console", Console(file=out, width=200))
    cli_demo.print_summary(summary)
    return out.getvalue()


def test_the_summary_prints_the_verdict_evidence_and_time_to_decision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decision = decided(occurred_s=95.5)
    result = experiment_result(
        [served(0, 1, 20), served(1, 2, 21)],
        champion_version=1,
        challenger_version=2,
        canary_published_at=at(15),
        decided=decision,
        acted=acted(decision),
    )
    text = printed(result, monkeypatch)
    assert "experiment v2 vs v1" in text
    assert "BETTER (always-valid p 0.0040 ≤ α 0.05, 37 looks)" in text
    assert "canary 0.830 vs champion 0.610: difference +0.220, interval [+0.120, +0.320]" in text
    assert "canary 2,100, champion 1,900 (4,000 to the verdict)" in text
    assert "80.5 s from the canary's publication" in text
    assert "promote done: better: auc +0.220 (gates passed)" in text


def test_the_summary_prints_not_yet_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    result = experiment_result(
        [served(0, 1, 20)],
        champion_version=1,
        challenger_version=2,
        canary_published_at=at(15),
        decided=None,
        acted=None,
        not_yet_note="no verdict acted on within 1 live payments",
        labels={0: True},
    )
    text = printed(result, monkeypatch)
    assert "NOT YET: no verdict" in text
    assert "v1 1 (1 labelled frauds), canary v2 0 (0 labelled frauds)" in text
    assert "no verdict acted on within 1 live payments" in text
    assert "BETTER" not in text


def test_the_default_story_prints_no_experiment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "experiment" not in printed(None, monkeypatch)
