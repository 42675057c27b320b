"""`run_demo`: plan the story, start the stack, play the loop, stop everything, summarise."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml

from mlbus.config import MlbusSettings
from mlbus.events import DriftDetected
from mlbus.example import DriftKind, GenerationError, fraud_spec_path
from mlbus.runtime import port_open
from mlbus.spec import ProjectSpec, load_spec

from ._loop import LoopContext, LoopOptions, PhaseFailed, Reporter, run_loop
from ._observe import LoopRecord
from ._scenario import (
    EXPERIMENT_SIZES,
    DemoSizes,
    ScenarioPlan,
    check_first_training,
    plan_scenario,
)
from ._stack import EmbeddedStack, StackError, demo_catalogue
from ._summary import (
    DemoSummary,
    ExperimentResult,
    TraceLinks,
    detection_delay,
    experiment_result,
    failures_by_status,
    onset_to_new_model_s,
    reload_window,
    retraining_seconds,
    segments,
)
from ._trace import read_trace_links

SERVICE_ENV = {
    # Tansu completes a consumer-group join after about half the session timeout:
    # 6 s instead of 10 s takes seconds off every service's start.
    "MLBUS_KAFKA_SESSION_TIMEOUT_S": "6",
    # Feature rows reach the offline store within seconds, so a retraining sees
    # the payments streamed just before it (the default waits up to 30 s).
    "MLBUS_FEATURES_OFFLINE_FLUSH_INTERVAL_S": "2",
    # The consistency counts the summary reads are at most a second old.
    "MLBUS_FEATURES_CONSISTENCY_FLUSH_S": "1",
}


Story = Literal["loop", "experiment"]
STORIES: tuple[Story, ...] = ("loop", "experiment")


def story_sizes(story: Story, drift_kind: DriftKind = "both") -> DemoSizes:
    """The sizes a story runs with unless told otherwise: a longer drifted stretch
    (`EXPERIMENT_SIZES`) for the experiment story, where both arms collect labelled
    outcomes, and for concept drift, which only labels show. Those come 30 min to weeks
    after their payment, so it is found ~7,000-8,000 drifted payments in (seeds 67 and 71),
    and the armed retraining then waits for 16,000 more labels of drifted predictions: five
    drifted days left too few on seed 71, and it never fired."""
    longer = story == "experiment" or drift_kind == "concept"
    return replace(EXPERIMENT_SIZES if longer else DemoSizes(), drift_kind=drift_kind)


@dataclass(frozen=True)
class DemoConfig:
    sizes: DemoSizes = field(default_factory=DemoSizes)
    seed: int = 7
    spec_path: Path = field(default_factory=fraud_spec_path)
    loop: LoopOptions = field(default_factory=LoopOptions)
    story: Story = "loop"
    """`experiment`: the retrained version goes out as canary (`gates.promote_to: canary`)
    and the outcomes service's experiment promotes or rolls it back (ADR 0024)."""
    canary_weight: float = 0.5
    """Experiment story: the share of cards the canary serves. Half: each arm gets as many
    labelled outcomes as it can, so the verdict comes soonest."""
    start_timeout_s: float = 90.0
    retrain_min_labels: int | None = 16_000
    """MLBUS_DRIFT_RETRAIN_MIN_LABELS: the drift service arms the retraining at detection
    and fires it once this many payments scored since the drifted window began are
    labelled; the run trains on the labels of payments scored after the detection. Fewer
    put the new model's evaluation AUC near the gate's minimum (auc 0.7 in the example
    spec; measured 13,000: 0.73-0.79; 16,000: 0.74-0.82). None: the spec's min_rows."""
    retrain_lookback: timedelta | None = None
    """MLBUS_DRIFT_RETRAIN_LOOKBACK_S: labelled history from before the drift that the
    drift-caused run learns from too (None: none; the old concept would only blur the new
    one). Also the fallback's window (`LoopOptions.manual_retrain_after`)."""

    def __post_init__(self) -> None:
        if self.story not in STORIES:
            raise GenerationError(
                f"expected a story among {', '.join(STORIES)}, got {self.story!r}"
            )
        if not 0.0 < self.canary_weight < 1.0:
            raise GenerationError(f"expected a canary weight in (0, 1), got {self.canary_weight}")
        lookback = self.retrain_lookback
        if lookback is not None and not timedelta(0) < lookback < self.sizes.drift_age:
            raise GenerationError(
                f"expected a retraining lookback shorter than the drift's age "
                f"({self.sizes.drift_age}), got {lookback}"
            )

    def service_env(self) -> dict[str, str]:
        env = dict(SERVICE_ENV)
        if self.retrain_min_labels is not None:
            env["MLBUS_DRIFT_RETRAIN_MIN_LABELS"] = str(self.retrain_min_labels)
        if self.retrain_lookback is not None:
            env["MLBUS_DRIFT_RETRAIN_LOOKBACK_S"] = str(int(self.retrain_lookback.total_seconds()))
        return env


@dataclass
class DemoRun:
    """A finished (or failed) run: the summary, and the stack's pids for leftover checks."""

    summary: DemoSummary | None = None
    record: LoopRecord = field(default_factory=LoopRecord)
    child_pids: list[int] = field(default_factory=list)
    error: BaseException | None = None
    stack: EmbeddedStack | None = None
    """The stack left running by `run_demo(..., keep=True)`; the caller stops it."""
    console_url: str | None = None


def run_demo(
    settings: MlbusSettings,
    config: DemoConfig,
    reporter: Reporter,
    run: DemoRun | None = None,
    *,
    keep: bool = False,
) -> DemoRun:
    """The whole story on the embedded stack in `settings.data`; stops what it started.

    Raises `PhaseFailed` (which phase, where the logs are) or `StackError`; `run`
    (if given) is filled as the demo goes, so a caller keeps what was measured
    even when the demo fails or is interrupted. With `keep`, a run that succeeded
    leaves the stack up in `run.stack` (for a person to browse the console); the
    caller stops it. A failed or interrupted run always stops everything.
    """
    run = run or DemoRun()
    started = time.monotonic()
    spec_path = config.spec_path.resolve()
    if config.story == "experiment":
        spec_path = experiment_spec(spec_path, settings.data.root, config.canary_weight)
    spec = load_spec(spec_path)
    settings = settings.model_copy(update={"spec": spec_path})
    reporter.phase("generating the payments and chargebacks", None)
    plan = plan_scenario(spec, config.sizes, now=datetime.now(UTC), seed=config.seed)
    check_first_training(plan, spec)
    reporter.news(
        f"{len(plan.payments):,} payments from {plan.start:%Y-%m-%d %H:%M} to "
        f"{plan.end:%Y-%m-%d %H:%M} UTC, drift ({config.sizes.drift_kind}) from payment "
        f"{plan.drift_at + 1:,} at {plan.drift_time:%Y-%m-%d %H:%M}; fraud rate "
        f"{_pct(plan.fraud_rate_before)} before, {_pct(plan.fraud_rate_after)} after"
    )
    reporter.phase("starting broker, Redis and the services", None)
    stack = EmbeddedStack(settings, demo_catalogue(config.service_env()), grace_s=15.0)
    stack_started = time.monotonic()
    try:
        state = stack.start(config.start_timeout_s)
        run.child_pids = stack.child_pids()
        if "drift" not in state.services and config.loop.manual_retrain_after is None:
            raise PhaseFailed(
                "start",
                "the drift service (mlbus.drift) is not installed or did not start, so nothing "
                "would detect the drift; install it (make install) or pass --fallback-after N to "
                "request the retraining by hand",
            )
        address = state.grpc_address("inference")
        if address is None or state.broker is None:
            raise StackError(f"inference or the broker did not start; logs in {stack.logs}")
        _wait_port(address, config.start_timeout_s, stack)
        run.record.phase_seconds["start"] = round(time.monotonic() - stack_started, 2)
        run.console_url = state.http_url("console")
        if run.console_url is not None:
            reporter.news(f"console: {run.console_url}")
        ctx = LoopContext(
            spec=spec,
            plan=plan,
            kafka=settings.kafka.model_copy(
                update={"bootstrap_servers": state.broker.bootstrap_servers}
            ),
            inference_address=address,
            offline_url=str(settings.data.offline_store),
            # The stack's own Redis and key prefix (ADR 0021): where the services write.
            redis_url=state.redis.url if state.redis is not None else settings.redis.require_url(),
            key_prefix=(
                state.redis.key_prefix if state.redis is not None else settings.redis.key_prefix
            ),
            logs=stack.logs,
            options=config.loop,
            reporter=reporter,
            alive=stack.failed_services,
            retrain_lookback=config.retrain_lookback,
            experiment=config.story == "experiment",
        )
        asyncio.run(run_loop(ctx, run.record))
    except BaseException as exc:
        run.error = exc
        raise
    finally:
        run.child_pids = sorted(set(run.child_pids) | set(stack.child_pids()))
        if keep and run.error is None:
            run.stack = stack
        else:
            reporter.phase("stopping every process", None)
            stack.stop()
        links = _trace(settings, run.record)
        known = {links.trace_id} if links is not None else set()
        retrain_links = _other_trace(settings, run.record.retrain_trace_id, known)
        known.add(run.record.retrain_trace_id)
        publish_links = _other_trace(settings, run.record.publish_trace_id, known)
        run.summary = build_summary(
            spec, plan, run.record, settings, config.seed, links, time.monotonic() - started
        ).model_copy(
            update={
                "retrain_trace": retrain_links,
                "publish_trace": publish_links,
                "story": config.story,
                "experiment": _experiment(config, run.record, plan),
            }
        )
    return run


def experiment_spec(source: Path, folder: Path, canary_weight: float) -> Path:
    """The example spec for the experiment story, written beside the run's data: a version
    that passes the gates goes out as canary to `canary_weight` of the cards, and the
    experiment's verdict acts (better: promote through the gates; worse: roll back)."""
    data: dict[str, Any] = yaml.safe_load(source.read_text())
    data["model"].setdefault("gates", {})["promote_to"] = "canary"
    data.setdefault("serving", {})["canary_weight"] = canary_weight
    outcomes = data.setdefault("outcomes", {})
    outcomes["experiments"] = {
        **outcomes.get("experiments", {}),
        "on_better": "promote",
        "on_worse": "rollback",
    }
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{source.stem}.experiment.yaml"
    target.write_text(
        f"# {source} for `mlbus demo --story experiment`\n" + yaml.safe_dump(data, sort_keys=False)
    )
    return target


def _experiment(
    config: DemoConfig, record: LoopRecord, plan: ScenarioPlan
) -> ExperimentResult | None:
    if config.story != "experiment":
        return None
    waited = record.experiment_waited_s
    note = (
        "no verdict: the retrained model never went out as canary"
        if record.published is None
        else f"no verdict acted on within the {len(record.served):,} live payments"
        + (f" and {waited:.0f} s after them" if waited is not None else "")
        + " (see `mlbus experiments status`)"
    )
    return experiment_result(
        record.served,
        champion_version=record.initial_version,
        challenger_version=record.retrained_version,
        canary_published_at=record.published.occurred_at if record.published else None,
        decided=record.decided,
        acted=record.acted,
        not_yet_note=note,
        labels={p.index: bool(p.is_fraud) for p in plan.live if p.label is not None},
    )


def _wait_port(address: str, timeout_s: float, stack: EmbeddedStack) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while not port_open(host, int(port)):
        if time.monotonic() > deadline or stack.failed_services():
            raise PhaseFailed(
                "start",
                f"inference did not listen on {address}; see {stack.logs}/inference.log",
            )
        time.sleep(0.1)


def _trace(settings: MlbusSettings, record: LoopRecord) -> TraceLinks | None:
    trace_id = record.drift.trace_id if record.drift is not None else None
    if trace_id is None and record.retrain_request is None:
        return None
    try:
        return read_trace_links(settings.data.spans, trace_id)
    except OSError as exc:
        return TraceLinks(trace_id=trace_id, note=f"span files unreadable: {exc}")


def _other_trace(
    settings: MlbusSettings, trace_id: str | None, known: set[str | None]
) -> TraceLinks | None:
    """The links of `trace_id`, unless it is unknown or one already reported."""
    if trace_id is None or trace_id in known:
        return None
    try:
        return read_trace_links(settings.data.spans, trace_id)
    except OSError as exc:
        return TraceLinks(trace_id=trace_id, note=f"span files unreadable: {exc}")


def build_summary(
    spec: ProjectSpec,
    plan: ScenarioPlan,
    record: LoopRecord,
    settings: MlbusSettings,
    seed: int,
    trace: TraceLinks | None,
    total_s: float | None,
) -> DemoSummary:
    """The summary of what `record` holds (also for a run that stopped half way)."""
    milestones = record.milestones()
    failures, failure_examples = failures_by_status(record.served)
    served = record.served
    new_version = record.retrained_version
    drift = record.drift.event if record.drift is not None else None
    causes: tuple[str, ...] = ()
    if isinstance(drift, DriftDetected):
        causes = tuple(sorted({f"{r.feature} ({r.test})" for r in drift.results if r.drifted}))
    notes = list(record.notes)
    if plan.not_yet_labelled:
        notes.append(
            f"{plan.not_yet_labelled} chargebacks dated in the future were not sent "
            "(their verdict is not known yet)"
        )
    if record.manual_retrain:
        notes.append(
            "the demo's safety net requested a retraining by hand (--fallback-after): the "
            "drift-caused retraining had not put a new model in place"
        )
    if record.drift_requests > 1:
        notes.append(f"{record.drift_requests} drift-caused training requests (expected one)")
    return DemoSummary(
        model=spec.model.name,
        seed=seed,
        data_dir=str(settings.data.root),
        initial_version=record.initial_version,
        retrained_version=new_version,
        retrained_by=record.retrained_by,
        served_versions=tuple(sorted({r.version for r in served if r.version is not None})),
        segments=segments(
            served,
            plan.labels_by_index,
            drift_at=plan.drift_at,
            initial_version=record.initial_version,
            retrained_version=new_version,
        ),
        detection=detection_delay(served, plan.drift_at, milestones),
        retraining_s=retraining_seconds(milestones),
        onset_to_new_model_s=onset_to_new_model_s(served, milestones, new_version),
        reload=reload_window(served, milestones, new_version),
        requests_total=len(served),
        requests_failed=sum(1 for r in served if not r.ok),
        failures=failures,
        failure_examples=failure_examples,
        drift_kind=plan.sizes.drift_kind,
        initial_evaluation_auc=record.initial_evaluation_auc,
        detections=record.detections,
        causal_waits=record.causal_waits,
        causal_timeouts=record.causal_timeouts,
        consistency=record.consistency,
        drift_causes=causes,
        drift_requests=record.drift_requests,
        promotion_reason=record.completed.promotion_reason if record.completed else None,
        trace=trace,
        phase_seconds=dict(record.phase_seconds),
        total_seconds=None if total_s is None else round(total_s, 1),
        notes=tuple(notes),
    )


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value:.1%}"
