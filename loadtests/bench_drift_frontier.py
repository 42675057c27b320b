"""The trade of false alarms against delay: mlbus's ADWIN against an oracle CUSUM.

A detector watching a stream forever has a false-alarm *rate*, and Lorden's
bound ties it to the delay: fewer false alarms per event cost more events of
delay, whatever the detector. This script measures where mlbus stands on that
frontier, so `drift.adwin_delta` can be chosen from numbers (ADR 0022):

- **null**: `--null-streams` iid N(0, 1) streams of 60,000 events against the
  benchmark's shared N(0, 1) reference: every alarm is false (per million events);
- **abrupt**: `bench_drift_quality`'s abrupt streams (mean +0.5 σ after 10,000
  events, the same seeds): median delay, and alarms before the shift.

The baseline is a two-sided CUSUM that knows what no deployed detector knows:
the pre-change distribution N(0, 1) *and* the size of the shift (±0.5 σ). For a
known shift it is the optimal detector (Lorden, Moustakides), so at a given
false-alarm rate no detector has a shorter delay on these streams; one that
does not know the shift size pays for it. mlbus runs the bench's detector at
several `--deltas`, the oracle at several thresholds `--thresholds`; the note
compares each δ with the oracle at the same false-alarm rate (interpolated).

    python loadtests/bench_drift_frontier.py [--null-streams 100] [--first-seed 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from rich.table import Table

import bench_drift_quality as quality
from _harness import console

NULL_LENGTH = 60_000
SHIFT = 0.5  # the abrupt streams' shift, in σ (what the oracle is told)


def null_streams(count: int, first_seed: int) -> list[quality.Stream]:
    return [
        quality.old_stream(
            "null",
            seed,
            np.random.default_rng(50_000 + seed).normal(0, 1, NULL_LENGTH),
            None,
            "numeric",
            "normal",
        )
        for seed in range(first_seed, first_seed + count)
    ]


def abrupt_streams(count: int, first_seed: int) -> list[quality.Stream]:
    return [quality.old_streams(seed)[0] for seed in range(first_seed, first_seed + count)]


def oracle_cusum(values: np.ndarray, threshold: float) -> list[list[int]]:
    """Alarms of a two-sided CUSUM for a ±SHIFT mean change of N(0, 1) on each row (a stream),
    restarted after each alarm, as mlbus's monitor starts a fresh window."""
    streams, length = values.shape
    up, down = np.zeros(streams), np.zeros(streams)
    drift = SHIFT * SHIFT / 2
    alarms: list[list[int]] = [[] for _ in range(streams)]
    for i in range(length):
        x = values[:, i]
        up = np.maximum(0.0, up + SHIFT * x - drift)
        down = np.maximum(0.0, down - SHIFT * x - drift)
        hit = (up > threshold) | (down > threshold)
        for row in np.flatnonzero(hit).tolist():
            alarms[row].append(i)
        up[hit] = down[hit] = 0.0
    return alarms


def summary(
    null_alarms: list[list[int]], abrupt_alarms: list[list[int]], null_events: int
) -> tuple[int, float, float, int]:
    """(false alarms, per million events, median delay, alarms before the shift)."""
    false = sum(len(a) for a in null_alarms)
    delays = [
        next((i - quality.DRIFT_AT for i in a if i >= quality.DRIFT_AT), None)
        for a in abrupt_alarms
    ]
    found = [d for d in delays if d is not None]
    early = sum(1 for a in abrupt_alarms for i in a if i < quality.DRIFT_AT)
    median = float(np.median(found)) if found else float("nan")
    return false, false / null_events * 1e6, median, early


def oracle_delay_at(rate: float, frontier: list[tuple[float, float]]) -> float:
    """The oracle's delay at `rate` false alarms per M events, log-linear between thresholds."""
    points = sorted((r, d) for r, d in frontier if r > 0)
    if not points or rate <= 0:
        return float("nan")
    rates = np.log([r for r, _ in points])
    return float(np.interp(np.log(rate), rates, [d for _, d in points]))


def main() -> bool:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--null-streams", type=int, default=100)
    parser.add_argument("--abrupt-seeds", type=int, default=30)
    parser.add_argument("--first-seed", type=int, default=1, help="of the abrupt and null streams")
    parser.add_argument("--deltas", default="0.002,0.001,0.0005,0.0002")
    parser.add_argument("--thresholds", default="10,11,12,13,14,15")
    args = parser.parse_args()
    nulls = null_streams(args.null_streams, args.first_seed)
    abrupts = abrupt_streams(args.abrupt_seeds, args.first_seed)
    null_events = len(nulls) * NULL_LENGTH
    table = Table(
        title=f"false alarms on {null_events:,} null events; delay on {len(abrupts)} abrupt streams"
    )
    for column in (
        "detector",
        "setting",
        "false alarms",
        "per M events",
        "median delay",
        "before shift",
    ):
        table.add_column(column, justify="left" if column in ("detector", "setting") else "right")
    frontier: list[tuple[float, float]] = []
    null_matrix = np.vstack([s.values for s in nulls])
    abrupt_matrix = np.vstack([s.values for s in abrupts])
    for threshold in [float(t) for t in args.thresholds.split(",")]:
        row = summary(
            oracle_cusum(null_matrix, threshold),
            oracle_cusum(abrupt_matrix, threshold),
            null_events,
        )
        frontier.append((row[1], row[2]))
        table.add_row(
            "oracle CUSUM",
            f"h = {threshold:g}",
            str(row[0]),
            f"{row[1]:.2f}",
            f"{row[2]:.0f}",
            str(row[3]),
        )
    notes = []
    for delta in [float(d) for d in args.deltas.split(",")]:
        detect = quality.window_detector(1000, adaptive=True, adwin_delta=delta)
        with console.status(f"mlbus at δ = {delta:g} …"):
            row = summary(
                [detect(s)[0] for s in nulls], [detect(s)[0] for s in abrupts], null_events
            )
        table.add_row(
            "mlbus", f"δ = {delta:g}", str(row[0]), f"{row[1]:.2f}", f"{row[2]:.0f}", str(row[3])
        )
        oracle = oracle_delay_at(row[1], frontier)
        notes.append(
            f"δ = {delta:g}: {row[1]:.2f} false alarms per M events at {row[2]:.0f} events of "
            f"delay; the oracle at that rate: {oracle:.0f} (ratio {row[2] / oracle:.2f})"
            if row[0]
            else f"δ = {delta:g}: no false alarm in {null_events:,} events (rate below "
            f"{1e6 / null_events:.2f} per M) at {row[2]:.0f} events of delay"
        )
    console.print(table)
    for note in notes:
        console.print(f"note: {note}")
    console.print(
        "note: the oracle knows the shift's size; mlbus does not (it finds a change of any "
        "size, in any direction, of any column). A count of a few false alarms is itself "
        "uncertain (Poisson): compare rates on enough null events."
    )
    return True


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
