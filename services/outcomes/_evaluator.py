"""Looks at what every partition has counted: windows, experiments, verdicts and actions.

Every `evaluate_interval_s` the saved aggregates of all partitions are summed:
- per (model, version, alias) and window: AUC, accuracy, log-loss, positive
  rate (classification) or MAE, RMSE (regression), with 95% intervals → the
  status `mlbus experiments status` shows, the Prometheus gauges and, every
  `report_interval_s`, `outcomes.measured` events;
- per running experiment: one look of the mSPRT (mlbus.outcomestats). A
  verdict publishes `experiment.decided` in the trace of the latest label that
  was evidence for it, then does what the spec says (`outcomes.experiments`:
  promote through the gates, roll the canary back, or report) and publishes
  `experiment.acted` in the same trace.

Ids are deterministic (one decision and one action per experiment), so a
replica that repeats a look after a crash publishes the same events again,
which consumers drop as replays; a promotion that already happened is not an
error.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from mlbus.bus import Publisher
from mlbus.errors import MlbusError, PermanentError, RetryableError
from mlbus.events import (
    ExperimentActed,
    ExperimentDecided,
    MetricEstimate,
    OutcomesMeasured,
)
from mlbus.labeling import LabelQueue
from mlbus.outcomestats import (
    Estimate,
    Outcomes,
    empty_outcomes,
    experiment_metric,
    msprt,
    outcomes_from_json,
)
from mlbus.redis_failures import REDIS_DOWN
from mlbus.spec import ProjectSpec
from mlbus.telemetry import extract_kafka_context, tracer

from . import _metrics as metrics
from ._store import ExperimentRecord, OutcomesStore

log = logging.getLogger(__name__)
_tracer = tracer("mlbus.outcomes")
_IDS = uuid.UUID("0b7f3c55-8a61-4f4e-9d0e-5e2f6a3c9b21")
ACTOR = "outcomes:experiments"
WINDOW_METRICS = {
    "classification": ("auc", "accuracy", "log_loss", "positive_rate"),
    "regression": ("mae", "rmse"),
}


class AliasMover(Protocol):
    """What the evaluator needs of the registry client."""

    async def set_alias(
        self, model: str, alias: str, version: int, *, reason: str, actor: str = ""
    ) -> Any: ...

    async def rollback(
        self, model: str, alias: str = "champion", *, reason: str, actor: str = ""
    ) -> Any: ...


def decision_id(experiment: str) -> str:
    return str(uuid.uuid5(_IDS, f"decided:{experiment}"))


def action_id(experiment: str) -> str:
    return str(uuid.uuid5(_IDS, f"acted:{experiment}"))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _estimate_json(estimate: Estimate) -> dict[str, Any]:
    return {
        "value": _finite(estimate.value),
        "ci_low": _finite(estimate.ci_low),
        "ci_high": _finite(estimate.ci_high),
        "n": estimate.n,
    }


@dataclass
class Totals:
    """Every partition's saved aggregates, summed."""

    cells: dict[tuple[str, int, str], dict[int, Outcomes]] = field(default_factory=dict)
    arms: dict[tuple[str, str], Outcomes] = field(default_factory=dict)
    traces: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, partitions: list[dict[str, str]]) -> Totals:
        totals = cls()
        for saved in partitions:
            for name, raw in saved.items():
                kind, _, rest = name.partition("|")
                if kind == "cell":
                    model, version, alias, bucket = rest.rsplit("|", 3)
                    cells = totals.cells.setdefault((model, int(version), alias), {})
                    _accumulate(cells, int(bucket), outcomes_from_json(json.loads(raw)))
                elif kind == "arm":
                    experiment, side = rest.rsplit("|", 1)
                    _accumulate(
                        totals.arms, (experiment, side), outcomes_from_json(json.loads(raw))
                    )
                elif kind == "trace" and (raw.endswith("-01") or rest not in totals.traces):
                    totals.traces[rest] = raw
        return totals


def _accumulate(into: dict[Any, Outcomes], key: Any, value: Outcomes) -> None:
    current = into.get(key)
    into[key] = value if current is None else _plus(current, value)


def _plus(a: Outcomes, b: Outcomes) -> Outcomes:
    if a.task == "classification" and b.task == "classification":
        return a + b
    if a.task == "regression" and b.task == "regression":
        return a + b
    raise PermanentError(f"cannot add {a.task} and {b.task} outcomes")


@dataclass
class Evaluator:
    spec: ProjectSpec
    store: OutcomesStore
    registry: AliasMover | None
    bucket_s: int = 300
    report_interval_s: float = 60.0
    clock: Callable[[], float] = time.time
    publisher: Publisher | None = None
    champions: Mapping[str, tuple[float, int]] = field(default_factory=dict)
    queue: LabelQueue | None = None
    _reported_at: float = 0.0

    async def evaluate(self) -> dict[str, Any]:
        """One look at everything; returns (and saves) the status."""
        now = self.clock()
        totals = Totals.of(await self.store.all_partitions())
        windows = self._windows(totals, now)
        experiments = []
        for record in sorted((await self.store.experiments()).values(), key=lambda r: r.started_at):
            if record.status == "running":
                await self._look(record, totals, now)
            elif record.status == "decided" and not record.acted:
                await self._act(record, totals)
            experiments.append(record)
        status: dict[str, Any] = {
            "model": self.spec.model.name,
            "task": self.spec.model.task,
            "evaluated_at": datetime.fromtimestamp(now, UTC).isoformat(),
            "windows": windows,
            "experiments": [_record_json(r) for r in experiments],
        }
        rules = self.spec.outcomes.labeling
        if rules is not None and self.queue is not None:
            try:
                await self.queue.expire(now, rules.expire_s)
                status["labeling"] = await self.queue.counts()
            except REDIS_DOWN as exc:
                raise RetryableError(
                    f"Redis unreachable reading the labeling queue: {exc}"
                ) from exc
        await self.store.write_status(status)
        if self.publisher is not None and now - self._reported_at >= self.report_interval_s:
            self._reported_at = now
            await self._report(windows, now)
        return status

    # ── windows ──────────────────────────────────────────────────────────────

    def _windows(self, totals: Totals, now: float) -> list[dict[str, Any]]:
        task = self.spec.model.task
        rows = []
        for (model, version, alias), cells in sorted(totals.cells.items()):
            for window in self.spec.outcomes.windows:
                first = int((now - window) // self.bucket_s)
                merged = empty_outcomes(task, self.spec.model.threshold)
                for bucket, aggregate in cells.items():
                    if bucket >= first:
                        merged = _plus(merged, aggregate)
                estimates = merged.estimates()
                shown = {name: _estimate_json(estimates[name]) for name in WINDOW_METRICS[task]}
                attributes = {
                    "model": model,
                    "version": str(version),
                    "alias": alias,
                    "window": f"{int(window)}s",
                }
                metrics.labelled.set(merged.n, attributes)
                for name, estimate in shown.items():
                    for bound in ("value", "ci_low", "ci_high"):
                        if estimate[bound] is not None:
                            metrics.metric.set(
                                estimate[bound], {**attributes, "metric": name, "bound": bound}
                            )
                rows.append(
                    {
                        "model": model,
                        "version": version,
                        "alias": alias,
                        "window_s": window,
                        "labelled": merged.n,
                        "metrics": shown,
                    }
                )
        return rows

    async def _report(self, windows: list[dict[str, Any]], now: float) -> None:
        assert self.publisher is not None
        for row in windows:
            if not row["labelled"]:
                continue
            event = OutcomesMeasured(
                model=row["model"],
                version=row["version"],
                alias=row["alias"],
                window_s=row["window_s"],
                window_start=datetime.fromtimestamp(now - row["window_s"], UTC),
                window_end=datetime.fromtimestamp(now, UTC),
                labelled=row["labelled"],
                metrics=tuple(
                    MetricEstimate(name=name, **values) for name, values in row["metrics"].items()
                ),
            )
            await self.publisher.publish(event, key=row["model"])

    # ── experiments ──────────────────────────────────────────────────────────

    async def _look(self, record: ExperimentRecord, totals: Totals, now: float) -> None:
        champion_now = self.champions.get(record.model)
        if champion_now is not None and champion_now[1] != record.champion_version:
            record.status = "ended"
            record.ended_reason = f"the champion moved to v{champion_now[1]} before a verdict"
            await self.store.save_experiment(record)
            return
        rules = self.spec.outcomes.experiments
        task = self.spec.model.task
        metric = experiment_metric(task, self.spec.model.metric)
        champion = totals.arms.get((record.experiment_id, "champion")) or empty_outcomes(task)
        challenger = totals.arms.get((record.experiment_id, "challenger")) or empty_outcomes(task)
        ready = all(arm.n >= rules.min_samples for arm in (champion, challenger))
        if ready and task == "classification":
            ready = all(
                min(arm.class_counts()) >= rules.min_class_count  # type: ignore[union-attr]
                for arm in (champion, challenger)
            )
        champion_value = champion.metric(metric)
        challenger_value = challenger.metric(metric)
        if record.tau is None and ready:
            if rules.effect_scale is not None:
                record.tau = rules.effect_scale
            elif metric in ("auc", "log_loss"):
                record.tau = 0.02
            else:
                record.tau = 0.05 * abs(champion_value[0]) or 1.0
        result = msprt(
            champion_value,
            challenger_value,
            metric=metric,
            tau=record.tau or 0.02,
            alpha=rules.alpha,
            previous_p=record.p_value,
            ready=ready,
        )
        if result.ready:
            record.looks += 1
            record.p_value = result.p_value
        record.last = {
            "metric": metric,
            "champion": {"value": _finite(champion_value[0]), "n": champion.n},
            "challenger": {"value": _finite(challenger_value[0]), "n": challenger.n},
            "difference": _finite(result.difference),
            "ci_low": _finite(result.ci_low),
            "ci_high": _finite(result.ci_high),
            "ready": result.ready,
            "verdict": result.verdict,
        }
        metrics.experiment_p.set(
            record.p_value,
            {
                "model": record.model,
                "alias": record.alias,
                "champion": str(record.champion_version),
                "challenger": str(record.challenger_version),
            },
        )
        if result.verdict == "not yet":
            await self.store.save_experiment(record)
            return
        record.status = "decided"
        record.verdict = result.verdict
        record.decided_at = now
        record.decision_event_id = decision_id(record.experiment_id)
        decision = ExperimentDecided(
            event_id=record.decision_event_id,
            experiment_id=record.experiment_id,
            model=record.model,
            alias=record.alias,
            champion_version=record.champion_version,
            challenger_version=record.challenger_version,
            verdict=result.verdict,
            metric=metric,
            champion_value=champion_value[0],
            challenger_value=challenger_value[0],
            difference=result.difference,
            ci_low=result.ci_low,
            ci_high=result.ci_high,
            p_value=result.p_value,
            alpha=rules.alpha,
            champion_samples=champion.n,
            challenger_samples=challenger.n,
            started_at=datetime.fromtimestamp(record.started_at, UTC),
            looks=max(1, record.looks),
        )
        parent = extract_kafka_context(
            [("traceparent", totals.traces[record.experiment_id].encode())]
            if record.experiment_id in totals.traces
            else []
        )
        with _tracer.start_as_current_span(
            "outcomes experiment decided",
            context=parent,
            attributes={"mlbus.experiment": record.experiment_id, "mlbus.verdict": result.verdict},
        ) as span:
            record.last["trace_id"] = format(span.get_span_context().trace_id, "032x")
            if self.publisher is not None:
                await self.publisher.publish(decision, key=record.model)
            metrics.verdicts.add(
                1, {"model": record.model, "alias": record.alias, "verdict": result.verdict}
            )
            log.info(
                "experiment %s: %s (%s %+.4f, always-valid p=%.4g after %d looks)",
                record.experiment_id,
                result.verdict,
                metric,
                result.difference,
                result.p_value,
                record.looks,
            )
            await self.store.save_experiment(record)
            await self._act(record, totals)

    async def _act(self, record: ExperimentRecord, totals: Totals) -> None:
        """Do what the spec says about the verdict; publish what was done."""
        rules = self.spec.outcomes.experiments
        assert record.decision_event_id is not None
        summary = _summary(record)
        action = "report"
        if record.verdict == "better" and rules.on_better == "promote":
            action = "promote"
        elif (
            record.verdict == "worse" and rules.on_worse == "rollback" and record.alias == "canary"
        ):
            action = "rollback"
        change_id: str | None = None
        with _tracer.start_as_current_span(f"outcomes experiment {action}"):
            try:
                if action == "promote":
                    outcome, reason, change_id = await self._promote(record, totals, summary)
                elif action == "rollback":
                    outcome, reason, change_id = await self._rollback(record, summary)
                else:
                    outcome, reason = "done", f"reported only ({summary})"
                    if record.verdict == "worse" and record.alias == "shadow":
                        reason += "; a shadow serves no traffic, so there is nothing to roll back"
            except RetryableError as exc:
                log.warning(
                    "experiment %s: %s failed, tried again: %s", record.experiment_id, action, exc
                )
                return
            except MlbusError as exc:
                outcome, reason = "failed", f"{action} failed: {exc}"
            event = ExperimentActed(
                event_id=action_id(record.experiment_id),
                experiment_id=record.experiment_id,
                decision_event_id=record.decision_event_id,
                model=record.model,
                alias=record.alias,
                version=record.challenger_version,
                action=action,  # type: ignore[arg-type]
                outcome=outcome,  # type: ignore[arg-type]
                reason=reason,
                alias_change_event_id=change_id,
            )
            if self.publisher is not None:
                await self.publisher.publish(event, key=record.model)
        metrics.actions.add(1, {"model": record.model, "action": action, "outcome": outcome})
        log.info("experiment %s: %s %s (%s)", record.experiment_id, action, outcome, reason)
        record.acted = True
        record.action_outcome = f"{action}: {outcome}"
        await self.store.save_experiment(record)

    async def _promote(
        self, record: ExperimentRecord, totals: Totals, summary: str
    ) -> tuple[str, str, str | None]:
        task = self.spec.model.task
        champion = totals.arms.get((record.experiment_id, "champion")) or empty_outcomes(task)
        challenger = totals.arms.get((record.experiment_id, "challenger")) or empty_outcomes(task)
        failures = self.spec.model.gate_failures(_gate_metrics(challenger), _gate_metrics(champion))
        if failures:
            return (
                "refused",
                f"gates failed on the experiment's outcomes: {'; '.join(failures)}",
                None,
            )
        if self.registry is None:
            raise PermanentError("no registry to promote through")
        reason = f"experiment {record.experiment_id}: {summary}; gates passed on its outcomes"
        try:
            change = await self.registry.set_alias(
                record.model, "champion", record.challenger_version, reason=reason, actor=ACTOR
            )
        except PermanentError as exc:
            if "already points" not in str(exc):
                raise
            return "done", f"v{record.challenger_version} was already champion ({summary})", None
        return "done", reason, getattr(change, "event_id", None)

    async def _rollback(
        self, record: ExperimentRecord, summary: str
    ) -> tuple[str, str, str | None]:
        if self.registry is None:
            raise PermanentError("no registry to roll back through")
        reason = f"experiment {record.experiment_id}: {summary}"
        try:
            change = await self.registry.rollback(
                record.model, "canary", reason=reason, actor=ACTOR
            )
        except PermanentError as exc:
            if "no earlier version" not in str(exc):
                raise
            # The canary had no version before this one: it points at the champion instead,
            # so no traffic reaches the worse version.
            try:
                change = await self.registry.set_alias(
                    record.model,
                    "canary",
                    record.champion_version,
                    reason=reason + "; canary set to the champion's version",
                    actor=ACTOR,
                )
            except PermanentError as again:
                if "already points" not in str(again):
                    raise
                return "done", f"the canary already serves v{record.champion_version}", None
        return "done", reason, getattr(change, "event_id", None)


def _gate_metrics(outcomes: Outcomes) -> dict[str, float]:
    return {
        name: estimate.value
        for name, estimate in outcomes.estimates().items()
        if math.isfinite(estimate.value)
    }


def _summary(record: ExperimentRecord) -> str:
    last = record.last
    return (
        f"v{record.challenger_version} ({record.alias}) {record.verdict} than champion "
        f"v{record.champion_version}: {last.get('metric')} {last.get('difference', 0.0):+.4f} "
        f"[{last.get('ci_low', 0.0):+.4f}, {last.get('ci_high', 0.0):+.4f}], always-valid "
        f"p={record.p_value:.3g}, n={last['champion']['n']}/{last['challenger']['n']}"
    )


def _record_json(record: ExperimentRecord) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(record.to_json())
    out["started_at"] = datetime.fromtimestamp(record.started_at, UTC).isoformat()
    if record.decided_at is not None:
        out["decided_at"] = datetime.fromtimestamp(record.decided_at, UTC).isoformat()
        out["time_to_decision_s"] = record.decided_at - record.started_at
    out["verdict"] = record.verdict or ("not yet" if record.status == "running" else None)
    return out


__all__ = ["AliasMover", "Evaluator", "Totals", "action_id", "decision_id"]
