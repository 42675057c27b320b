"""A shared way to benchmark: a baseline and a candidate measured in the same run.

Each benchmark records repeated measurements of named variants (interleaved,
so drift in machine load hits both), then reports medians and the ratios that
its issue asks for, prints a Rich table, and writes the same as JSON under
`loadtests/results/<benchmark>.json`. Goals are reported, never asserted in
pytest: absolute times belong here, as ratios against a baseline.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeVar

from rich.console import Console
from rich.table import Table

RESULTS_DIR = Path(__file__).parent / "results"
console = Console()

T = TypeVar("T")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) by linear interpolation."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


async def latencies_ms(
    call: Callable[[T], Awaitable[object]], arguments: Sequence[T], calls: int, warmup: int = 200
) -> list[float]:
    """Milliseconds of each of `calls` awaits of `call`, one at a time, after `warmup` untimed.

    The arguments rotate (call i gets `arguments[i % len(arguments)]`), picked
    outside the timed span.
    """
    for i in range(warmup):
        await call(arguments[i % len(arguments)])
    values = []
    for i in range(calls):
        argument = arguments[i % len(arguments)]
        started = time.perf_counter()
        await call(argument)
        values.append((time.perf_counter() - started) * 1000)
    return values


async def pipeline_latencies_ms(
    steps: Sequence[Callable[[int], object]], calls: int, warmup: int = 200
) -> list[float]:
    """Milliseconds of each of `calls` runs of `steps` one after the other, as one pipeline.

    Call i runs `step(i)` for every step, awaiting what a step returns if it is
    awaitable; the whole sequence is timed as one call, so the percentiles are the
    composed pipeline's, not sums of the parts' percentiles.
    """

    async def run(i: int) -> None:
        for step in steps:
            result = step(i)
            if inspect.isawaitable(result):
                await result

    for i in range(warmup):
        await run(i)
    values = []
    for i in range(calls):
        started = time.perf_counter()
        await run(i)
        values.append((time.perf_counter() - started) * 1000)
    return values


@dataclass
class Metric:
    """Repeated measurements of one quantity of one variant."""

    variant: str
    name: str
    unit: str
    higher_is_better: bool
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)


@dataclass
class Goal:
    """A ratio the issue asks for: candidate/baseline compared to a bound."""

    description: str
    candidate: str
    baseline: str
    metric: str
    op: Literal[">=", "<="]
    bound: float
    ratio: float = 0.0

    @property
    def met(self) -> bool:
        return self.ratio >= self.bound if self.op == ">=" else self.ratio <= self.bound


class Benchmark:
    def __init__(self, name: str, description: str, **parameters: object) -> None:
        self.name = name
        self.description = description
        self.parameters = parameters
        self.metrics: dict[tuple[str, str], Metric] = {}
        self.goals: list[Goal] = []
        self.notes: list[str] = []
        self.started = time.time()

    def record(
        self, variant: str, name: str, value: float, unit: str, *, higher_is_better: bool
    ) -> None:
        metric = self.metrics.setdefault(
            (variant, name), Metric(variant, name, unit, higher_is_better)
        )
        metric.values.append(value)

    def median(self, variant: str, name: str) -> float:
        return self.metrics[(variant, name)].median

    def record_percentiles(self, latencies_ms: Mapping[str, Sequence[float]]) -> dict[str, float]:
        """Record p50 and p99 (ms) of each variant; return the p50s in the order recorded.

        A baseline composed of parts (echo + ORT, …) is measured as one pipeline
        (`pipeline_latencies_ms`), never as the sum of its parts' percentiles: a sum of
        p99s is not the p99 of the sum (it is larger whenever the parts' slow calls do
        not coincide) and would make a p99 goal easier than it is.
        """
        p50 = {name: percentile(values, 50) for name, values in latencies_ms.items()}
        p99 = {name: percentile(values, 99) for name, values in latencies_ms.items()}
        for name in p50:
            self.record(name, "p50", p50[name], "ms", higher_is_better=False)
            self.record(name, "p99", p99[name], "ms", higher_is_better=False)
        return p50

    def ratio(self, candidate: str, baseline: str, metric: str) -> float:
        return self.median(candidate, metric) / self.median(baseline, metric)

    def goal(
        self,
        description: str,
        candidate: str,
        baseline: str,
        metric: str,
        op: Literal[">=", "<="],
        bound: float,
    ) -> Goal:
        goal = Goal(
            description,
            candidate,
            baseline,
            metric,
            op,
            bound,
            self.ratio(candidate, baseline, metric),
        )
        self.goals.append(goal)
        return goal

    def report(self, *, measurement_only: bool = False) -> bool:
        """Print the table and goals, write JSON; True when every goal is met.

        A run with no goal fails (`all([])` would pass a run that checked nothing),
        unless the benchmark says it only measures (`measurement_only`).
        """
        table = Table(title=f"{self.name}: {self.description}")
        for column in ("variant", "metric", "median", "min", "max", "runs"):
            table.add_column(
                column, justify="right" if column not in ("variant", "metric") else "left"
            )
        for metric in self.metrics.values():
            table.add_row(
                metric.variant,
                f"{metric.name} ({metric.unit})",
                f"{metric.median:,.3f}",
                f"{min(metric.values):,.3f}",
                f"{max(metric.values):,.3f}",
                str(len(metric.values)),
            )
        console.print(table)
        for goal in self.goals:
            mark = "[green]met[/]" if goal.met else "[red]NOT met[/]"
            console.print(
                f"{goal.description}: {goal.candidate}/{goal.baseline} {goal.metric} = "
                f"[bold]{goal.ratio:.3f}[/] (goal {goal.op} {goal.bound}) {mark}"
            )
        for note in self.notes:
            console.print(f"note: {note}")
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.name}.json"
        path.write_text(json.dumps(self.as_json(), indent=2) + "\n")
        console.print(f"results written to {path}")
        if not self.goals:
            if measurement_only:
                console.print("measurement only: no goal to meet")
                return True
            console.print("[red]no goal was set: this run proves nothing[/]")
            return False
        return all(goal.met for goal in self.goals)

    def as_json(self) -> dict[str, object]:
        return {
            "benchmark": self.name,
            "description": self.description,
            "at": datetime.fromtimestamp(self.started, UTC).isoformat(),
            "machine": {
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
            },
            "parameters": self.parameters,
            "metrics": [{**asdict(m), "median": m.median} for m in self.metrics.values()],
            "goals": [{**asdict(g), "met": g.met} for g in self.goals],
            "notes": self.notes,
        }
