"""How dense the live traffic is against a seasonal reference: the seasonal ADWIN's inflation.

A phase's reference CDF is a sample of that hour's reference rows, and its
error is shared by every live value of the hour: live CDF positions are
dependent in hour-long blocks. A stretch of live values within one cycle then
has (1 + ρ) times the variance of its mean that independent values would have,

    ρ = (live rows per cycle) / (reference rows) = L_h / R_h for every hour h,

R_h being the reference's rows of that hour's phase over all its cycles, and
L_h the live rows of one such hour (ADR 0022). When the live traffic is as
dense as the reference's, ρ = 1/C for a reference of C cycles. A reference that
is a sample of its days, or live traffic that grew, has a far larger ρ: with a
5 % sample of a week as the reference, ρ ≈ 2.9 and 1/C = 0.14, and every
stationary daily stream alarmed.

Times here are clock seconds (`seasons.local_clock`, ADR 0032), as the phases are.

ρ is measured on the monitor's own rows (a partition sees its share of the
traffic): the live rows seen, over the reference rows of the hours they span.
A prior of one average phase's reference rows at the reference's own rate
(1/C) keeps the first minutes, when those hours are a sliver, from swinging it.

That ρ is an average over the hours, and the live rhythm need not be the
reference's: traffic moves to the evening, a daylight-saving change moves it by
an hour, a partition sees another mix. Where live traffic is denser than the
average says, the average under-inflates (the unit tests' daily stream with its
reference's rhythm 0.6 h off alarmed 6–8 times in 40 streams against 1 aligned).
So each row gets its own phase's ρ when that is larger: the phase's live rows per
pass (hours of that phase spanned) over its reference rows, with one pass at the
average as its prior. Never below the average, so never less cautious than it.
"""

from __future__ import annotations

import numpy as np

from mlbus.seasons import (
    PHASE_PRIOR_ROWS,
    PhaseMinutes,
    Seasonality,
    cycle_phases,
    reference_rows_until,
)


class LiveRate:
    """ρ of one monitor's live rows against its seasonal reference (see the module)."""

    def __init__(
        self,
        phase_rows: np.ndarray,
        seasonality: Seasonality,
        cycles: float,
        minutes: PhaseMinutes,
    ) -> None:
        self.phase_rows = np.asarray(phase_rows, dtype=np.float64)
        self._before = np.concatenate(([0.0], np.cumsum(self.phase_rows)))
        self.seasonality = seasonality
        self.minutes = minutes  # the phases' width
        self.prior_rows = max(float(self.phase_rows.sum()) / len(self.phase_rows), 1.0)
        self.prior_rate = 1.0 / max(cycles, 1.0)
        self.rows = 0  # live rows counted so far (a restored monitor sets these four)
        self.first: float | None = None  # the earliest and latest of their times (clock s)
        self.last: float | None = None
        self.phase_live = np.zeros(len(self.phase_rows), dtype=np.float64)  # rows per phase
        self._behind = self.phase_rows + PHASE_PRIOR_ROWS  # the rows each phase's CDF stands on

    def inflations(self, stamps: np.ndarray, phases: np.ndarray) -> np.ndarray:
        """1 + ρ of each row as it stands after it (rows not counted: see `count`): the
        average's, or its own phase's where that is larger. `phases`: the rows' phases
        (`phases_of`; the monitor has them already)."""
        ends = np.empty((2, len(stamps)), dtype=np.float64)
        np.minimum.accumulate(stamps, out=ends[0])
        np.maximum.accumulate(stamps, out=ends[1])
        if self.first is not None and self.last is not None:
            np.minimum(ends[0], self.first, out=ends[0])
            np.maximum(ends[1], self.last, out=ends[1])
        rows = np.arange(self.rows + 1, self.rows + len(stamps) + 1, dtype=np.float64)
        average = self._rate(rows, ends)
        behind = self._behind[phases]
        own = (self.phase_live[phases] + _rank_in_phase(phases) + average * behind) / (
            (self._passes(ends, phases) + 1.0) * behind
        )
        inflation: np.ndarray = 1.0 + np.maximum(average, own)
        return inflation

    @property
    def rate(self) -> float:
        """ρ as it stands now."""
        if self.first is None or self.last is None:
            return self.prior_rate
        ends = np.asarray([[self.first], [self.last]])
        return float(self._rate(np.asarray([float(self.rows)]), ends)[0])

    def count(self, stamps: np.ndarray, phases: np.ndarray) -> None:
        """Count rows the monitor took (`phases`: theirs)."""
        if not len(stamps):
            return
        low, high = float(stamps.min()), float(stamps.max())
        self.first = low if self.first is None else min(self.first, low)
        self.last = high if self.last is None else max(self.last, high)
        self.rows += len(stamps)
        self.phase_live += np.bincount(phases, minlength=len(self.phase_live))

    def spread_rows(self) -> None:
        """Per-phase rows for a state saved before they were kept: the rows spread as the
        average density says (what the rate was then)."""
        if self.first is None or self.last is None or not self.rows:
            return
        ends = np.asarray([[self.first], [self.last]])
        phases = np.arange(len(self.phase_rows))
        spanned = self._passes(np.repeat(ends, len(phases), axis=1), phases) * self.phase_rows
        if spanned.sum() > 0:
            self.phase_live = self.rows * spanned / spanned.sum()

    def _passes(self, ends: np.ndarray, phases: np.ndarray) -> np.ndarray:
        """Passes of each row's phase from ends[0] to ends[1] (clock seconds): whole passes
        of that phase of the cycle, and the parts of those at either end."""
        period = len(self.phase_rows)
        units = cycle_phases(ends, self.seasonality, self.minutes)

        def through(x: np.ndarray) -> np.ndarray:  # passes of the phase in [0, x]
            done: np.ndarray = x // period + np.clip(x % period - phases, 0.0, 1.0)
            return done

        passes: np.ndarray = through(units[1]) - through(units[0])
        return passes

    def _rate(self, rows: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """ρ of `rows` live rows seen from ends[0] to ends[1] (clock seconds), with the prior."""
        until = reference_rows_until(
            ends, self.phase_rows, self.seasonality, self._before, self.minutes
        )
        spanned = until[1] - until[0]
        rate: np.ndarray = (rows + self.prior_rows * self.prior_rate) / (spanned + self.prior_rows)
        return rate


def _rank_in_phase(phases: np.ndarray) -> np.ndarray:
    """Each row's count among the rows of its phase so far, itself included (1, 2, …)."""
    order = np.argsort(phases, kind="stable")
    ordered = phases[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    first_of_group = np.repeat(starts, np.diff(np.concatenate((starts, [len(phases)]))))
    rank = np.empty(len(phases), dtype=np.float64)
    rank[order] = np.arange(1, len(phases) + 1) - first_of_group
    return rank
