"""False alarms of mlbus.driftstats.DriftMonitor on stationary streams, on seeds nobody tuned on.

    .venv/bin/python loadtests/bench_drift_false_alarms.py [--first-seed 500] [--seeds 100]
                                                           [--kinds iid,daily,weekly,ar1,regimes]
                                                           [--adwin-delta 0.002]

The quality bench (`bench_drift_quality.py`) gates on 30 seeds, where a detector
that raises one false alarm per hundred streams passes most of the time. This
counts them where that rate shows: many streams of each stationary kind, per
seed range, with the monitor as the quality bench runs it (windows of 1,000, PSI
+ binned KS, BH at the default alpha, persistence 2, the feature ADWINs on).
Every stream keeps one process from the start of its reference to the end of
its live part, so every detection is false. The kinds:

- iid:     four numeric features at once, independent, one event a second, no
           cycle: N(0, 1), lognormal(3, 1) (amounts), a zero-inflated count
           (70 % zeros, else Poisson(3) + 1) and Uniform(0, 1); reference
           20,000 events, then 37,000 live (the daily stream's length).
- daily, weekly, ar1, regimes: the quality bench's stationary-daily, -weekly,
           -ar1 and -regimes streams (their seeds are this range's).

It prints, per kind, the streams, live events, detections split into the
feature ADWINs' cuts and window-test detections, and the rate per stream and per
million live events (the ADWINs' rate is per event: a longer or denser stream
alarms more often). `--adwin-delta` runs another `drift.adwin_delta`, the
owner's trade of alarms against delay (ADR 0022). Deterministic (it counts
events, not seconds).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.table import Table

from bench_drift_quality import (
    T0_S,
    Stream,
    event_times,
    per_second,
    stationary_ar1,
    stationary_daily,
    stationary_regimes,
    stationary_weekly,
)
from mlbus.driftstats import DriftMonitor
from mlbus.events import Scalar
from mlbus.profiles import ReferenceProfile
from mlbus.spec import DriftSpec

IID_FEATURES = ("normal", "amount", "count", "uniform")
IID_REFERENCE = 20_000
IID_LIVE = 37_000


def iid_values(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    counts = np.where(rng.random(n) < 0.7, 0.0, rng.poisson(3.0, n) + 1.0)
    return {
        "normal": rng.normal(0.0, 1.0, n),
        "amount": rng.lognormal(3.0, 1.0, n),
        "count": counts,
        "uniform": rng.random(n),
    }


@dataclass
class Outcome:
    streams: int = 0
    events: int = 0
    adwin: int = 0
    windows: int = 0
    seeds: list[int] | None = None

    def add(self, seed: int, events: int, adwin: int, windows: int) -> None:
        self.streams += 1
        self.events += events
        self.adwin += adwin
        self.windows += windows
        if adwin or windows:
            self.seeds = [*(self.seeds or []), seed]


def spec(adwin_delta: float) -> DriftSpec:
    return DriftSpec(
        adwin_delta=adwin_delta,
        window_size=1000,
        min_samples=100,
        persistence=2,
        correction="benjamini-hochberg",
        prediction_drift=False,
        performance_drift=False,
    )


def run(
    reference: dict[str, np.ndarray],
    reference_times: np.ndarray,
    live: dict[str, np.ndarray],
    live_times: np.ndarray,
    adwin_delta: float,
) -> tuple[int, int]:
    """(ADWIN detections, window-test detections) of one monitor over the live part."""
    profile = ReferenceProfile.from_samples(
        {k: v.tolist() for k, v in reference.items()},
        times=reference_times.tolist(),
        seasonality="auto",
    )
    names = list(reference)
    monitor = DriftMonitor(
        "false-alarms",
        1,
        profile,
        spec(adwin_delta),
        dict.fromkeys(names, "numeric"),
        dict.fromkeys(names, ("psi", "ks")),
    )
    n = len(live_times)
    columns: dict[str, list[Scalar]] = {k: v.tolist() for k, v in live.items()}
    verdicts = []
    for begin in range(0, n, 500):  # batches as the service gets them
        end = min(n, begin + 500)
        verdicts += monitor.observe_columns(
            {k: v[begin:end] for k, v in columns.items()},
            None,
            n=end - begin,
            stamps=live_times[begin:end],
            source="bench:0",
            offsets=range(begin, end),
        )
    detections = [v for v in verdicts if v.detection]
    adwin = sum(1 for v in detections if any(r.test == "adwin" for r in v.results))
    return adwin, len(detections) - adwin


def iid(seed: int, adwin_delta: float) -> tuple[int, int, int]:
    rng = np.random.default_rng(11_000 + seed)
    values = iid_values(rng, IID_REFERENCE + IID_LIVE)
    times = per_second(IID_REFERENCE + IID_LIVE, T0_S - IID_REFERENCE)
    cut = IID_REFERENCE
    adwin, windows = run(
        {k: v[:cut] for k, v in values.items()},
        times[:cut],
        {k: v[cut:] for k, v in values.items()},
        times[cut:],
        adwin_delta,
    )
    return IID_LIVE, adwin, windows


Kind = Callable[[int, float], tuple[int, int, int]]
"""(seed, adwin_delta) → (live events, ADWIN detections, window-test detections)."""


def from_bench(make: Callable[[int], Stream]) -> Kind:
    def stream(seed: int, adwin_delta: float) -> tuple[int, int, int]:
        s = make(seed)
        live_times = np.asarray([t.timestamp() for t in event_times(s)], dtype=np.float64)
        adwin, windows = run(
            {"x": s.reference}, s.reference_times, {"x": s.values}, live_times, adwin_delta
        )
        return len(s.values), adwin, windows

    return stream


KINDS: dict[str, Kind] = {
    "iid": iid,
    "daily": from_bench(stationary_daily),
    "weekly": from_bench(stationary_weekly),
    "ar1": from_bench(stationary_ar1),
    "regimes": from_bench(stationary_regimes),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-seed", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument(
        "--adwin-delta",
        type=float,
        default=DriftSpec().adwin_delta,
        help="drift.adwin_delta of the monitors (default: the spec's)",
    )
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown kinds {unknown}; choose from {', '.join(KINDS)}")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    outcomes: dict[str, Outcome] = {}
    console = Console(width=140)
    for kind in kinds:
        started = time.perf_counter()
        outcome = outcomes[kind] = Outcome()
        for seed in seeds:
            outcome.add(seed, *KINDS[kind](seed, args.adwin_delta))
        console.print(
            f"{kind}: {outcome.adwin} ADWIN + {outcome.windows} window detections in "
            f"{outcome.streams} streams (seeds {outcome.seeds or '-'}), "
            f"{time.perf_counter() - started:.0f} s"
        )
    table = Table(
        title=f"false alarms on stationary streams, seeds {seeds.start}-{seeds.stop - 1}, "
        f"adwin_delta {args.adwin_delta:g}"
    )
    columns = ("kind", "streams", "live events", "adwin", "windows", "per stream", "per M events")
    for column in columns:
        table.add_column(column, justify="left" if column == "kind" else "right")
    for kind, o in outcomes.items():
        table.add_row(
            kind,
            str(o.streams),
            f"{o.events:,}",
            str(o.adwin),
            str(o.windows),
            f"{(o.adwin + o.windows) / o.streams:.3f}",
            f"{(o.adwin + o.windows) / o.events * 1e6:.2f}",
        )
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
