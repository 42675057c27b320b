"""False alarms of a rhythm kept in local time across a daylight-saving change (ADR 0032).

People pay, click and commute by their wall clock. In a zone with daylight
saving the clock moves an hour against UTC twice a year, and a daily rhythm
moves with it: keyed by UTC hours, the reference's 14:00 peak is live at 13:00.
Each stream here is the very same stationary process throughout, an alarm on
it is false:

- payment-like amounts, lognormal(mu(h), 1) with mu(h) = 3 + 0.6 cos(2π (h - 19)
  / 24), arriving as a Poisson process of 20 + 180 (1 + cos(2π (h - 14) / 24)) / 2
  events per hour (bench_drift_quality's stationary-daily), h being the LOCAL
  hour of the zone;
- 14 days of reference, then 14 live days, the change halfway through the live
  part: spring (Europe/Berlin, 2027-03-28; America/New_York, 2027-03-14) and
  autumn (Europe/Berlin, 2027-10-31);
- a control zone without daylight saving (Asia/Tokyo): its clock is UTC + 9 h all
  year, so UTC phases fit it as well as local ones.

Each stream goes through `DriftMonitor` with the default `DriftSpec` (prediction
and performance off) twice: with the profile's phases in UTC hours (what every
profile had before `drift.timezone`) and in the zone's hours. A third run adds a
real drift to the zone-clock monitor: from the change on, amounts ×1.5 (log
level +0.41); its delay in events is reported. The exit status only says the run
completed; the counts are the result.

    python loadtests/bench_drift_timezone.py [--seeds 30] [--first-seed 1700]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from rich.table import Table

from _harness import Benchmark, console
from mlbus.driftstats import DriftMonitor
from mlbus.profiles import ReferenceProfile
from mlbus.seasons import local_clock
from mlbus.spec import DriftSpec

HOUR_S = 3600.0
DAY_S = 86_400.0
DAYS = 14  # of reference, then of live traffic
# (zone, which change, its instant): the live part starts 7 days before it
CHANGES = (
    ("Europe/Berlin", "spring", datetime(2027, 3, 28, 1, tzinfo=UTC)),  # 02:00 CET
    ("America/New_York", "spring", datetime(2027, 3, 14, 7, tzinfo=UTC)),  # 02:00 EST
    ("Europe/Berlin", "autumn", datetime(2027, 10, 31, 1, tzinfo=UTC)),  # 03:00 CEST
    ("Asia/Tokyo", "none (control)", datetime(2027, 3, 28, 1, tzinfo=UTC)),
)
SHIFT = np.log(1.5)  # the real drift: amounts ×1.5 from the change on


def local_hours(times: np.ndarray, zone: str) -> np.ndarray:
    return (local_clock(times, zone) % DAY_S) / HOUR_S


def stream(
    seed: int, zone: str, change: datetime, drift: bool
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(amounts, times, first live row, first row after the change)."""
    rng = np.random.default_rng(97_000 + seed)
    change_s = change.timestamp()
    live_s = change_s - DAYS / 2 * DAY_S
    start = live_s - DAYS * DAY_S
    hours = np.arange(2 * DAYS * 24) * HOUR_S + start
    per_hour = 20.0 + 180.0 * (1.0 + np.cos(2 * np.pi * (local_hours(hours, zone) - 14) / 24)) / 2
    counts = rng.poisson(per_hour)
    times = np.sort(np.repeat(hours, counts) + rng.random(int(counts.sum())) * HOUR_S)
    level = 3.0 + 0.6 * np.cos(2 * np.pi * (local_hours(times, zone) - 19.0) / 24)
    after = int(np.searchsorted(times, change_s))
    if drift:
        level[after:] += SHIFT
    amounts = rng.lognormal(level, 1.0)
    return amounts, times, int(np.searchsorted(times, live_s)), after


def alarms(amounts: np.ndarray, times: np.ndarray, live: int, clock_zone: str) -> list[int]:
    """Live rows (from the first live one) at which a detection closed, phases in
    `clock_zone`'s hours."""
    profile = ReferenceProfile.from_samples(
        {"amount": amounts[:live]}, times=times[:live], seasonality="auto", timezone=clock_zone
    )
    spec = DriftSpec(prediction_drift=False, performance_drift=False)
    monitor = DriftMonitor(
        "bench", 1, profile, spec, {"amount": "numeric"}, {"amount": ("psi", "ks")}
    )
    values = amounts[live:].tolist()
    verdicts = monitor.observe_many(
        [{"amount": v} for v in values],
        None,
        at=[datetime.fromtimestamp(t, UTC) for t in times[live:].tolist()],
        source="bench:0",
        offsets=range(len(values)),
    )
    return [v.offsets["bench:0"][1] for v in verdicts if v.detection]


def main() -> bool:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--first-seed", type=int, default=1700)
    args = parser.parse_args()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    bench = Benchmark(
        "drift_timezone",
        "false alarms of a local-time rhythm across a daylight-saving change",
        seeds=args.seeds,
        first_seed=args.first_seed,
    )
    table = Table(title=f"seeds {seeds.start}–{seeds.stop - 1}: streams alarmed (alarms)")
    for column in ("zone", "change", "UTC hours", "zone hours", "drift ×1.5 found", "delay"):
        table.add_column(column, justify="left" if column in ("zone", "change") else "right")
    progress: Callable[[str], None] = console.print
    for zone, kind, change in CHANGES:
        utc: list[int] = []
        local: list[int] = []
        delays: list[int] = []
        for seed in seeds:
            amounts, times, live, after = stream(seed, zone, change, drift=False)
            utc.append(len(alarms(amounts, times, live, "UTC")))
            local.append(len(alarms(amounts, times, live, zone)))
            amounts, times, live, after = stream(seed, zone, change, drift=True)
            found = [row for row in alarms(amounts, times, live, zone) if row >= after - live]
            if found:
                delays.append(found[0] - (after - live))
        progress(f"{zone} {kind}: UTC {sum(utc)}, zone {sum(local)}, drift {len(delays)}")
        for variant, counts in (("UTC hours", utc), ("zone hours", local)):
            bench.record(
                f"{zone} {kind}",
                f"{variant} alarms",
                float(sum(counts)),
                "alarms",
                higher_is_better=False,
            )
        if delays:
            bench.record(
                f"{zone} {kind}",
                "drift delay",
                statistics.median(delays),
                "events",
                higher_is_better=False,
            )
        table.add_row(
            zone,
            kind,
            f"{sum(1 for c in utc if c)} ({sum(utc)})",
            f"{sum(1 for c in local if c)} ({sum(local)})",
            f"{len(delays)}/{len(seeds)}",
            f"{statistics.median(delays):,.0f}" if delays else "—",
        )
    console.print(table)
    return bench.report(measurement_only=True)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
