"""Drift detection quality: delay and false alarms of mlbus.driftstats vs River's ADWIN and KSWIN.

    .venv/bin/python loadtests/bench_drift_quality.py [--seeds 5] [--first-seed 1]
                                                      [--stationary 100000]

River is NOT a project dependency. The first run creates a benchmark-only venv
with it (`uv venv` + `uv pip install river numpy`) at $MLBUS_RIVER_VENV, by
default ~/.cache/mlbus-bench/river-venv (outside the work tree, so nothing to
ignore), and runs River there in a subprocess (loadtests/drift_river_runner.py)
on the very same seeded streams, passed as .npy files.

Streams (per seed, seeds first-seed … first-seed + seeds - 1; the drift point
is at event 10,000 of 30,000):
- abrupt:     one numeric feature N(0, 1), then N(0.5, 1)
- gradual:    N(0, 1) whose mean ramps linearly to 1.0 over 5,000 events
- concept:    features unchanged; the 0/1 error stream goes from 10 % to 20 %
- stationary: N(0, 1) throughout (`--stationary` events, seed 0)
- stationary-amounts: lognormal(3, 1) throughout, like payment amounts (heavy tail)
- stationary-errors: 10 % errors throughout

Detectors: mlbus DriftMonitor as the service runs it ("mlbus": windows of 1000
with PSI + binned KS against a profile of 20,000 pre-drift rows, BH at alpha
0.05, persistence 2, plus ADWIN on the feature's reference-CDF position), the
same without the ADWIN ("mlbus-windows-only", windows of 1000 and of 250);
mlbus ADWIN on the error stream (observe_outcome); River ADWIN and KSWIN with
their defaults, on the feature stream and on the error stream.
Delay = events from the drift point to the detection (for a window verdict,
the window's last event). A detection before the drift point, or anywhere in
a stationary stream, is a false alarm. The harness records medians over
seeds and the ratio of our delay to the best River detector's, and to the best
River detector without false alarms on the stationary streams of its kind
(features, or errors) when that is another one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.table import Table

from _harness import Benchmark, console
from mlbus.driftstats import DriftMonitor
from mlbus.profiles import ReferenceProfile
from mlbus.spec import DriftSpec

STATIONARY_FEATURES = ("stationary", "stationary-amounts")
DRIFT_AT = 10_000
LENGTH = 30_000
RAMP = 5_000
REFERENCE_ROWS = 20_000
HERE = Path(__file__).parent
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(eq=False)  # hashed by identity: a stream is a key of the results
class Stream:
    name: str
    seed: int
    values: np.ndarray  # what every detector sees: a feature, or 0/1 errors
    drift_at: int | None
    kind: str  # "feature" or "errors"
    family: str = "normal"  # the pre-drift distribution, for our reference profile
    scenario: str = ""  # the table row it counts in (default: its name)

    @property
    def key(self) -> str:
        return f"{self.name}-{self.seed}"


def make_streams(seeds: int, stationary: int, first_seed: int = 1) -> list[Stream]:
    streams = []
    for seed in range(first_seed, first_seed + seeds):
        rng = np.random.default_rng(seed)
        before, after = rng.normal(0, 1, DRIFT_AT), rng.normal(0, 1, LENGTH - DRIFT_AT)
        streams.append(
            Stream("abrupt", seed, np.concatenate([before, after + 0.5]), DRIFT_AT, "feature")
        )
        rng = np.random.default_rng(1000 + seed)
        ramp = np.clip((np.arange(LENGTH) - DRIFT_AT) / RAMP, 0.0, 1.0)
        streams.append(
            Stream("gradual", seed, rng.normal(0, 1, LENGTH) + ramp, DRIFT_AT, "feature")
        )
        rng = np.random.default_rng(2000 + seed)
        rate = np.where(np.arange(LENGTH) < DRIFT_AT, 0.1, 0.2)
        errors = (rng.random(LENGTH) < rate).astype(np.float64)
        streams.append(Stream("concept", seed, errors, DRIFT_AT, "errors"))
    rng = np.random.default_rng(0)
    streams.append(Stream("stationary", 0, rng.normal(0, 1, stationary), None, "feature"))
    errors = (rng.random(stationary) < 0.1).astype(np.float64)
    streams.append(Stream("stationary-errors", 0, errors, None, "errors"))
    amounts = rng.lognormal(3.0, 1.0, stationary)
    streams.append(Stream("stationary-amounts", 0, amounts, None, "feature", family="lognormal"))
    for stream in streams:
        stream.scenario = stream.scenario or stream.name
    return streams


# ── River, in its own venv ──────────────────────────────────────────────────


def river_python() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    venv = Path(os.environ.get("MLBUS_RIVER_VENV", cache / "mlbus-bench" / "river-venv"))
    python = venv / "bin" / "python"
    if not python.exists():
        uv = Path(sys.executable).parent / "uv"
        console.print(f"creating the River venv at {venv} (benchmark only)")
        subprocess.run([str(uv), "venv", "--quiet", "--python", "3.11", str(venv)], check=True)
        subprocess.run(
            [str(uv), "pip", "install", "--quiet", "--python", str(python), "river", "numpy"],
            check=True,
        )
    return python


def run_river(streams: list[Stream], workdir: Path) -> dict[str, dict[str, dict[str, object]]]:
    manifest = []
    for stream in streams:
        np.save(workdir / f"{stream.key}.npy", stream.values)
        manifest.append(
            {"name": stream.key, "file": f"{stream.key}.npy", "drift_at": stream.drift_at}
        )
    (workdir / "manifest.json").write_text(json.dumps(manifest))
    python = river_python()
    version = subprocess.run(
        [str(python), "-c", "import river; print(river.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    console.print(f"River {version}: running ADWIN and KSWIN on {len(streams)} streams …")
    subprocess.run([str(python), str(HERE / "drift_river_runner.py"), str(workdir)], check=True)
    results: dict[str, dict[str, dict[str, object]]] = json.loads(
        (workdir / "river.json").read_text()
    )
    return results


# ── ours ────────────────────────────────────────────────────────────────────


def reference_profile(family: str = "normal") -> ReferenceProfile:
    rng = np.random.default_rng(99)
    if family == "lognormal":
        return ReferenceProfile.from_samples({"x": rng.lognormal(3.0, 1.0, REFERENCE_ROWS)})
    return ReferenceProfile.from_samples({"x": rng.normal(0, 1, REFERENCE_ROWS)})


Detector = Callable[["Stream"], tuple[list[int], float]]


def window_detector(window: int, *, adaptive: bool) -> Detector:
    profiles = {family: reference_profile(family) for family in ("normal", "lognormal")}
    spec = DriftSpec(
        window_size=window,
        min_samples=min(window, 100),
        persistence=2,
        alpha=0.05,
        correction="benjamini-hochberg",
        prediction_drift=False,
        performance_drift=False,
    )

    def run(stream: Stream) -> tuple[list[int], float]:
        profile = profiles[stream.family]
        monitor = DriftMonitor(
            "bench", 1, profile, spec, {"x": "numeric"}, {"x": ("psi", "ks")}, adaptive=adaptive
        )
        rows = [{"x": v} for v in stream.values.tolist()]
        started = time.perf_counter()
        verdicts = monitor.observe_many(
            rows,
            None,
            at=[T0] * len(rows),
            source="bench:0",
            offsets=range(len(rows)),  # type: ignore[arg-type]
        )
        seconds = time.perf_counter() - started
        return [v.offsets["bench:0"][1] for v in verdicts if v.detection], seconds

    return run


def adwin_detector(stream: Stream) -> tuple[list[int], float]:
    spec = DriftSpec(prediction_drift=False, performance_drift=True)
    monitor = DriftMonitor("bench", 1, reference_profile(), spec, {}, {})
    found = []
    started = time.perf_counter()
    for index, error in enumerate(stream.values.tolist()):
        if monitor.observe_outcome(error, at=T0) is not None:
            found.append(index)
    return found, time.perf_counter() - started


# ── scoring ─────────────────────────────────────────────────────────────────


@dataclass
class Score:
    delays: list[float]
    detected: int
    runs: int
    false_alarms: int
    events_per_s: list[float]


def score(found_by_stream: dict[Stream, tuple[list[int], float]]) -> Score:
    delays: list[float] = []
    rates: list[float] = []
    detected = false_alarms = 0
    for stream, (found, seconds) in found_by_stream.items():
        limit = stream.drift_at if stream.drift_at is not None else len(stream.values)
        false_alarms += sum(1 for i in found if i < limit)
        after = [i for i in found if stream.drift_at is not None and i >= stream.drift_at]
        if stream.drift_at is not None:
            if after:
                detected += 1
                delays.append(after[0] - stream.drift_at)
            else:  # censored: never detected within the stream
                delays.append(len(stream.values) - stream.drift_at)
        events = after[0] + 1 if after else len(stream.values)
        rates.append(events / seconds if seconds > 0 else float("nan"))
    return Score(delays, detected, len(found_by_stream), false_alarms, rates)


def main() -> bool:
    """Run the scenarios; True when every goal is met (delays, and no false alarm)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--first-seed",
        type=int,
        default=1,
        help="seeds of the drifting streams are first-seed … first-seed + seeds - 1 (confirm "
        "on a range nothing was tuned on); the stationary streams keep seed 0",
    )
    parser.add_argument("--stationary", type=int, default=100_000)
    parser.add_argument(
        "--reuse-river",
        type=Path,
        metavar="DIR",
        help="keep the streams and River's results in DIR and reuse them if present",
    )
    args = parser.parse_args()
    bench = Benchmark(
        "drift_quality",
        "detection delay (events after the drift point) and false alarms vs River",
        seeds=args.seeds,
        first_seed=args.first_seed,
        stationary_events=args.stationary,
        drift_at=DRIFT_AT,
        length=LENGTH,
    )
    streams = make_streams(args.seeds, args.stationary, args.first_seed)
    if args.reuse_river is None:
        with tempfile.TemporaryDirectory(prefix="mlbus-drift-bench-") as tmp:
            river = run_river(streams, Path(tmp))
    else:  # streams are seeded: River's results for a stream key can be reused
        cache = args.reuse_river / "river-all.json"
        river = json.loads(cache.read_text()) if cache.exists() else {}
        missing = [s for s in streams if s.key not in river]
        if len(missing) < len(streams):
            bench.notes.append(f"River results of {len(streams) - len(missing)} streams reused")
        if missing:
            args.reuse_river.mkdir(parents=True, exist_ok=True)
            river.update(run_river(missing, args.reuse_river))
            cache.write_text(json.dumps(river))

    ours_feature = {
        "mlbus": window_detector(1000, adaptive=True),
        "mlbus-windows-only": window_detector(1000, adaptive=False),
        "mlbus-windows-only-250": window_detector(250, adaptive=False),
    }
    scores: dict[tuple[str, str], Score] = {}
    scenarios = [
        "abrupt",
        "gradual",
        "concept",
        "stationary",
        "stationary-amounts",
        "stationary-errors",
    ]
    for scenario in scenarios:
        by_detector: dict[str, dict[Stream, tuple[list[int], float]]] = {}
        for stream in (s for s in streams if s.scenario == scenario):
            ours: dict[str, Detector] = (
                dict(ours_feature) if stream.kind == "feature" else {"mlbus-adwin": adwin_detector}
            )
            for name, detector in ours.items():
                by_detector.setdefault(name, {})[stream] = detector(stream)
            for name, result in river[stream.key].items():
                found = [int(i) for i in result["detections"]]  # type: ignore[attr-defined]
                seconds = float(result["seconds"])  # type: ignore[arg-type]
                by_detector.setdefault(name, {})[stream] = (found, seconds)
        for detector_name, results in by_detector.items():
            scores[(scenario, detector_name)] = result_score = score(results)
            variant = f"{scenario}/{detector_name}"
            for delay in result_score.delays:
                bench.record(variant, "delay", delay, "events", higher_is_better=False)
            bench.record(
                variant, "false_alarms", result_score.false_alarms, "count", higher_is_better=False
            )
            for rate in result_score.events_per_s:
                bench.record(variant, "throughput", rate, "events/s", higher_is_better=True)

    print_table(scores, args)
    for scenario in ("abrupt", "gradual", "concept"):
        river_delays = {
            d: statistics.median(s.delays)
            for (sc, d), s in scores.items()
            if sc == scenario and d.startswith("river")
        }
        # a detector counts as clean without false alarms on the stationary streams of its kind
        quiet_on = ("stationary-errors",) if scenario == "concept" else STATIONARY_FEATURES
        clean = {
            d: v
            for d, v in river_delays.items()
            if all(scores[(sc, d)].false_alarms == 0 for sc in quiet_on)
        }
        best = min(river_delays, key=river_delays.__getitem__)
        if not clean:
            bench.notes.append(
                f"{scenario}: every River detector raised false alarms on a stationary stream"
            )
        mine = [d for (sc, d) in scores if sc == scenario and d.startswith("mlbus")]
        for name in mine:
            bench.goal(
                f"{scenario}: delay vs the best River detector ({best})",
                f"{scenario}/{name}",
                f"{scenario}/{best}",
                "delay",
                "<=",
                1.0,
            )
            if best != "river-adwin":  # KSWIN "detects" by firing all the time: show ADWIN too
                bench.goal(
                    f"{scenario}: delay vs River ADWIN",
                    f"{scenario}/{name}",
                    f"{scenario}/river-adwin",
                    "delay",
                    "<=",
                    1.0,
                )
            if clean and best not in clean:
                best_clean = min(clean, key=clean.__getitem__)
                bench.goal(
                    f"{scenario}: delay vs the best River detector "
                    f"without false alarms ({best_clean})",
                    f"{scenario}/{name}",
                    f"{scenario}/{best_clean}",
                    "delay",
                    "<=",
                    1.0,
                )
    false_alarms = 0
    for (scenario, name), result_score in scores.items():
        if scenario.startswith("stationary") and name.startswith("mlbus"):
            false_alarms += result_score.false_alarms
            bench.notes.append(
                f"{scenario}: {name} raised {result_score.false_alarms} false alarms "
                f"(goal 0) on {args.stationary:,} events"
            )
    bench.notes.append(
        "delays are medians over seeds; an undetected drift counts as the rest of the stream"
    )
    met = bench.report()
    if false_alarms:
        console.print(f"[red]{false_alarms} false alarms on stationary streams (goal 0)[/]")
    return met and false_alarms == 0


def print_table(scores: dict[tuple[str, str], Score], args: argparse.Namespace) -> None:
    table = Table(
        title=f"drift detection quality ({args.seeds} seeds from {args.first_seed}; "
        f"stationary {args.stationary:,} events)"
    )
    for column in (
        "scenario",
        "detector",
        "detected",
        "median delay",
        "mean delay",
        "false alarms",
        "events/s",
    ):
        table.add_column(column, justify="left" if column in ("scenario", "detector") else "right")
    for (scenario, detector), s in scores.items():
        drifting = not scenario.startswith("stationary")
        table.add_row(
            scenario,
            detector,
            f"{s.detected}/{s.runs}" if drifting else "-",
            f"{statistics.median(s.delays):,.0f}" if drifting else "-",
            f"{statistics.mean(s.delays):,.0f}" if drifting else "-",
            str(s.false_alarms),
            f"{statistics.median(s.events_per_s):,.0f}",
        )
    console.print(table)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
