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

ρ is measured on the monitor's own rows (a partition sees its share of the
traffic): the live rows seen, over the reference rows of the hours they span.
A prior of one average phase's reference rows at the reference's own rate
(1/C) keeps the first minutes, when those hours are a sliver, from swinging it.
"""

from __future__ import annotations

import numpy as np

from mlbus.seasons import Seasonality, reference_rows_until


class LiveRate:
    """ρ of one monitor's live rows against its seasonal reference (see the module)."""

    def __init__(self, phase_rows: np.ndarray, seasonality: Seasonality, cycles: float) -> None:
        self.phase_rows = np.asarray(phase_rows, dtype=np.float64)
        self._before = np.concatenate(([0.0], np.cumsum(self.phase_rows)))
        self.seasonality = seasonality
        self.prior_rows = max(float(self.phase_rows.sum()) / len(self.phase_rows), 1.0)
        self.prior_rate = 1.0 / max(cycles, 1.0)
        self.rows = 0  # live rows counted so far (a restored monitor sets these three)
        self.first: float | None = None  # the earliest and latest of their times (epoch s)
        self.last: float | None = None

    def inflations(self, stamps: np.ndarray) -> np.ndarray:
        """1 + ρ as it stands after each of these rows (not counted: see `count`)."""
        ends = np.empty((2, len(stamps)), dtype=np.float64)
        np.minimum.accumulate(stamps, out=ends[0])
        np.maximum.accumulate(stamps, out=ends[1])
        if self.first is not None and self.last is not None:
            np.minimum(ends[0], self.first, out=ends[0])
            np.maximum(ends[1], self.last, out=ends[1])
        rows = np.arange(self.rows + 1, self.rows + len(stamps) + 1, dtype=np.float64)
        return 1.0 + self._rate(rows, ends)

    @property
    def rate(self) -> float:
        """ρ as it stands now."""
        if self.first is None or self.last is None:
            return self.prior_rate
        ends = np.asarray([[self.first], [self.last]])
        return float(self._rate(np.asarray([float(self.rows)]), ends)[0])

    def count(self, stamps: np.ndarray) -> None:
        """Count rows the monitor took."""
        if not len(stamps):
            return
        low, high = float(stamps.min()), float(stamps.max())
        self.first = low if self.first is None else min(self.first, low)
        self.last = high if self.last is None else max(self.last, high)
        self.rows += len(stamps)

    def _rate(self, rows: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """ρ of `rows` live rows seen from ends[0] to ends[1] (epoch seconds), with the prior."""
        until = reference_rows_until(ends, self.phase_rows, self.seasonality, self._before)
        spanned = until[1] - until[0]
        rate: np.ndarray = (rows + self.prior_rows * self.prior_rate) / (spanned + self.prior_rows)
        return rate
