"""ADWIN2 (Bifet & Gavaldà, 2007): an adaptive window over a stream, cut where its mean changed.

The window is kept as an exponential histogram: row i holds at most
`max_buckets` buckets of 2**i elements each (total, sum of squared deviations,
time of the oldest element), so n elements take O(max_buckets · log n) numbers.
Every `clock` elements, each split of the window into an older part W0 and a
newer part W1 at a bucket boundary is tested, and cut if the means differ by
more than ε. The oldest bucket is then dropped and the window re-tested; after
a change the window starts afresh. Three thresholds (v the window's variance,
δ' = ln(2 ln n / δ), n' = n - min_length + 1, m = 1/n0' + 1/n1', R the largest
|value| seen):

- bound="river" (default): ε = sqrt(2·v·δ'·m) + (2/3)·R·δ'·m, ADWIN2 as River
  and MOA compute it. For values in [0, 1] (R = 1) this is River's ADWIN cut
  for cut (same defaults: clock 32, 5 buckets per row, min length 5, grace 10,
  a fresh window after a detection).
- bound="bernstein": ε = c + sqrt(c² + 2·v·δ'·m), c = R·δ' / (3·min(n0', n1')),
  the exact root of Bernstein's inequality for the difference of the means:
  P(|μ0 - μ1| ≥ ε) ≤ 2·exp(-δ') when ε² = 2δ'·(v·m + ε·R / (3·min(n0', n1'))),
  each term of that difference being at most R/n0' or R/n1' from its mean.
  River's ε is a looser upper bound of the same root (√(x + y) ≤ √x + √y and
  1/min(n0', n1') ≤ m): the same δ per test, but that slack delays every cut
  whose W1 is short — an abrupt change — by 10-15 % of W1 (ADR 0016).
- bound="bennett-hoeffding": ε = max(√(2·v·δ'·m), the least gap whose
  Chernoff bound P ≤ exp(-sup_λ [λ·gap - Σ log E e^{λ·term}]) is ≤ exp(-δ')),
  each term's moment generating function bounded by the largest one a value
  of variance v and |x - mean| ≤ R can have: the two-point law at +R and
  -v/R (Bennett 1962; Hoeffding 1963, Theorem 3). The same assumptions as
  Bernstein's, but exact where Bernstein relaxes log(1 + x) ≤ x and the
  exponential series: never larger than Bernstein's root, 10-12 % smaller on a
  short W1 when R/σ is ~1.6 (ADR 0016). Solved (Newton on λ) only for a split
  whose gap lies between the Gaussian ε and Bernstein's: a cut by Bernstein's
  root is a cut, a gap under the Gaussian ε is none (tested first, for both
  exact bounds), so a check costs no more than before.

`dependence` κ ≥ 1 (ADR 0022) is how much correlation between consecutive values
inflates the variance of a mean: every bound then counts n values as n/κ, its
effective sample size (both the variance and the range term grow by κ).

A `reference` (ADR 0031) is a sample the stream is expected to match (the
holdout's errors, for the performance channel): it is held as the window's
oldest part, one block of n values with their total and squared deviations.
Every split then tests the reference and the live values before the split
against the live values after it, the first split being the reference alone
against every live value. So a change that began before much live data arrived
is still tested against a baseline. While it is held only a rise cuts (a stream
better than its baseline is no reason to forget it), and a cut drops it first,
as any W0; the window then continues two-sided, as without one.

R makes the bound scale-free for regression errors. The state is plain
numbers: `snapshot()` / `Adwin.restore()` round-trip exactly, so a restored
detector cuts where an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field

Bound: TypeAlias = Literal["river", "bernstein", "bennett-hoeffding"]

NEWTON_STEPS = 60  # for the Bennett-Hoeffding exponent; it converges in 3-6

# A bucket is (total, sum of squared deviations, oldest element's time in epoch seconds).
Bucket = tuple[float, float, float]


class AdwinState(BaseModel):
    """Everything an `Adwin` holds, JSON-serialisable; floats round-trip exactly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    delta: float = Field(gt=0, lt=1)
    clock: int = Field(ge=1)
    max_buckets: int = Field(ge=2)
    min_length: int = Field(ge=1)
    grace: int = Field(ge=0)
    bound: Bound = "river"  # states written before the choice existed used River's
    dependence: float = Field(default=1.0, ge=1.0)
    rows: tuple[tuple[tuple[float, float, float], ...], ...] = ()
    width: int = Field(default=0, ge=0)
    total: float = 0.0
    variance: float = Field(default=0.0, description="sum of squared deviations")
    ticks: int = Field(default=0, ge=0)
    seen: int = Field(default=0, ge=0)
    scale: float = Field(default=0.0, ge=0)
    detections: int = Field(default=0, ge=0)
    reference: tuple[Annotated[int, Field(ge=1)], float, Annotated[float, Field(ge=0)]] | None = (
        Field(default=None, description="the reference part: n, total, sum of squared deviations")
    )


@dataclass(frozen=True)
class AdwinChange:
    """The first cut found: the older part W0 against the newer W1."""

    n_old: int
    n_recent: int
    mean_old: float
    mean_recent: float
    epsilon: float
    since: float  # time of the oldest element of W0 (epoch seconds)

    @property
    def increased(self) -> bool:
        return self.mean_recent > self.mean_old


class Adwin:
    """ADWIN2 over a stream of finite floats (e.g. labelled outcomes' errors)."""

    def __init__(
        self,
        delta: float = 0.002,
        *,
        clock: int = 32,
        max_buckets: int = 5,
        min_length: int = 5,
        grace: int = 10,
        bound: Bound = "river",
        dependence: float = 1.0,
    ) -> None:
        self._config = AdwinState(
            delta=delta,
            clock=clock,
            max_buckets=max_buckets,
            min_length=min_length,
            grace=grace,
            bound=bound,
            dependence=dependence,
        )
        self.dependence = dependence
        self.delta = delta
        self.clock = clock
        self.max_buckets = max_buckets
        self.min_length = min_length
        self.grace = grace
        self.bound = bound
        self._rows: list[list[Bucket]] = []  # row i: buckets of 2**i elements, oldest first
        self.width = 0
        self.total = 0.0
        self.variance = 0.0
        self.ticks = 0  # since the last reset: the clock's phase
        self.seen = 0
        self.scale = 0.0
        self.detections = 0
        self.reference: tuple[int, float, float] | None = None

    @property
    def mean(self) -> float:
        """The live values' mean (the reference is not in it)."""
        return self.total / self.width if self.width else 0.0

    def anchor(self, n: int, mean: float, std: float, largest: float) -> None:
        """Hold `n` reference values of `mean` and population `std` as the window's oldest
        part (`largest`: their largest magnitude, part of the bound's range R)."""
        if n < 1 or not (math.isfinite(mean) and math.isfinite(std) and std >= 0):
            raise ValueError(f"expected n >= 1 and a finite mean and std, got {n}, {mean}, {std}")
        self.reference = (n, n * mean, n * std * std)
        self.scale = max(self.scale, abs(largest), abs(mean))

    def update(self, value: float, at: float = 0.0) -> AdwinChange | None:
        """Add one finite value observed at `at` (epoch seconds); the first cut, if any."""
        if not math.isfinite(value):
            raise ValueError(f"expected a finite value, got {value!r}")
        return self.add(value, at)

    def add(self, value: float, at: float) -> AdwinChange | None:
        """`update` for a value known to be finite (the hot path)."""
        self._insert(value, at)
        self.seen += 1
        self.ticks = ticks = self.ticks + 1
        if ticks % self.clock or self.width <= self.grace:
            return None
        change = self._cut()
        if change is not None:
            self.detections += 1
        return change

    # ── the exponential histogram ────────────────────────────────────────────

    def _insert(self, value: float, at: float) -> None:
        magnitude = value if value >= 0 else -value
        if magnitude > self.scale:
            self.scale = magnitude
        width = self.width
        if width:
            gap = value - self.total / width
            self.variance += width * gap * gap / (width + 1)
        self.width = width + 1
        self.total += value
        rows = self._rows
        if not rows:
            rows.append([])
        row = rows[0]
        row.append((value, 0.0, at))
        limit = self.max_buckets
        level = 0
        while len(row) > limit:
            older, newer = row[0], row[1]
            del row[:2]
            size = float(1 << level)
            gap = (older[0] - newer[0]) / size
            merged = (
                older[0] + newer[0],
                older[1] + newer[1] + size * 0.5 * gap * gap,
                older[2] if older[2] <= newer[2] else newer[2],
            )
            level += 1
            if level == len(rows):
                rows.append([])
            row = rows[level]
            row.append(merged)

    def _drop_oldest(self) -> int:
        if self.reference is not None:
            n = self.reference[0]
            self.reference = None
            return n
        level = len(self._rows) - 1
        bucket = self._rows[level].pop(0)
        size = 1 << level
        self.width -= size
        self.total -= bucket[0]
        if self.width:
            gap = bucket[0] / size - self.total / self.width
            self.variance -= bucket[1] + size * self.width * gap * gap / (size + self.width)
            self.variance = max(self.variance, 0.0)
        else:
            self.total = self.variance = 0.0
        while self._rows and not self._rows[-1]:
            self._rows.pop()
        return size

    def _cut(self) -> AdwinChange | None:
        first: AdwinChange | None = None
        while self.width > self.grace:
            change = self._find_cut()
            if change is None:
                break
            first = first or change
            self._drop_oldest()
        if first is not None:
            # Start a fresh window after a change, as River does: W1 still holds a few
            # pre-change elements (whole buckets), which would cut again and again.
            self._rows = []
            self.width = self.ticks = 0
            self.total = self.variance = 0.0
        return first

    def _find_cut(self) -> AdwinChange | None:
        min_length = self.min_length
        width, total, squares = self.width, self.total, self.variance
        if width < min_length:
            return None
        rows = self._rows
        since = rows[-1][0][2]  # the oldest live value's time
        # The splits, oldest part first: the reference (if any), then the live buckets.
        splits: list[tuple[int, float]] = []
        rises_only = self.reference is not None
        if self.reference is not None:
            n_ref, total_ref, squares_ref = self.reference
            gap = total_ref / n_ref - total / width
            squares += squares_ref + n_ref * width / (n_ref + width) * gap * gap
            width, total = width + n_ref, total + total_ref
            splits.append((n_ref, total_ref))
        if width < 2 * min_length:
            return None
        splits.extend(
            (1 << level, bucket[0])
            for level in range(len(rows) - 1, -1, -1)
            for bucket in rows[level]
        )
        delta_prime = math.log(2 * math.log(width) / self.delta)
        variance, scale = squares / width, self.scale
        variance_term = 2 * variance * delta_prime
        exact = self.bound != "river"
        tight = self.bound == "bennett-hoeffding"
        range_term = scale * delta_prime / 3 if exact else 2 / 3 * scale * delta_prime
        shift = 1 - min_length
        kappa = self.dependence
        n0, sum0 = 0, 0.0
        for size, bucket_total in splits:
            n0 += size
            n1 = width - n0
            if n1 < min_length:
                return None  # every later split leaves W1 shorter still
            sum0 += bucket_total
            if n0 < min_length:
                continue
            old, recent = float(n0 + shift), float(n1 + shift)
            if kappa != 1.0:  # dependent values: n of them weigh as n/κ
                old, recent = old / kappa, recent / kappa
            spread = variance_term * (1 / old + 1 / recent)
            mean0, mean1 = sum0 / n0, (total - sum0) / n1
            if rises_only and mean1 <= mean0:
                continue
            gap = mean0 - mean1 if mean0 > mean1 else mean1 - mean0
            if exact:
                if gap * gap <= spread:
                    continue  # within the Gaussian ε, which neither exact ε is below
                reach = range_term / (old if old < recent else recent)  # c
                # gap > c + sqrt(c² + spread), squared: no square root per split; else,
                # between the Gaussian ε and Bernstein's, solve the tight one
                if gap * (gap - 2 * reach) > spread or (
                    tight
                    and _exponent(gap, variance, scale, old, recent, delta_prime) > delta_prime
                ):
                    epsilon = reach + math.sqrt(reach * reach + spread)
                    if tight:
                        epsilon = _tight_epsilon(variance, scale, old, recent, delta_prime, epsilon)
                    return AdwinChange(n0, n1, mean0, mean1, epsilon, since)
            else:
                epsilon = math.sqrt(spread) + range_term * (1 / old + 1 / recent)
                if gap > epsilon:
                    return AdwinChange(n0, n1, mean0, mean1, epsilon, since)
        return None

    # ── state ────────────────────────────────────────────────────────────────

    def snapshot(self) -> AdwinState:
        return self._config.model_copy(
            update={
                "rows": tuple(tuple(row) for row in self._rows),
                "width": self.width,
                "total": self.total,
                "variance": self.variance,
                "ticks": self.ticks,
                "seen": self.seen,
                "scale": self.scale,
                "detections": self.detections,
                "reference": self.reference,
            }
        )

    @classmethod
    def restore(cls, state: AdwinState) -> Adwin:
        adwin = cls(
            state.delta,
            clock=state.clock,
            max_buckets=state.max_buckets,
            min_length=state.min_length,
            grace=state.grace,
            bound=state.bound,
            dependence=state.dependence,
        )
        adwin._rows = [list(row) for row in state.rows]
        adwin.width = state.width
        adwin.total = state.total
        adwin.variance = state.variance
        adwin.ticks = state.ticks
        adwin.seen = state.seen
        adwin.scale = state.scale
        adwin.detections = state.detections
        adwin.reference = state.reference
        return adwin


def _exponent(
    gap: float, variance: float, scale: float, old: float, recent: float, target: float | None
) -> float:
    """sup over λ > 0 of λ·gap - Σ n·ψ(λ/n) for n in (old, recent): the Chernoff exponent
    of a gap between the means of `old` and `recent` values, ψ the log-MGF of the two-point
    law at +R (probability v/(v + R²)) and -v/R, the largest for variance v and deviations
    ≤ R = `scale`. Concave in λ: Newton's steps kept inside a bracket of the maximum. Any
    λ gives a valid bound, so this stops once past `target`.
    """
    if variance <= 0 or scale <= 0 or gap <= 0:
        return 0.0
    weight = variance / (variance + scale * scale)  # of +R
    low = variance / scale  # the other point, -v/R
    lam = gap / (variance * (1 / old + 1 / recent))  # the Gaussian optimum: a start
    below, above = 0.0, math.inf  # the slope is > 0 below the maximum, < 0 above it
    best = 0.0
    for _ in range(NEWTON_STEPS):
        value, slope, curvature = lam * gap, gap, 0.0
        for n in (old, recent):
            t = lam / n
            up, down = t * scale, -t * low
            top = up if up > down else down
            a = weight * math.exp(up - top)
            b = (1 - weight) * math.exp(down - top)
            total = a + b
            mean = (a * scale - b * low) / total  # of the tilted law
            value -= n * (top + math.log(total))
            slope -= mean
            curvature -= ((a * scale * scale + b * low * low) / total - mean * mean) / n
        if value > best:
            best = value
            if target is not None and best > target:
                break
        if slope > 0:
            below = lam
        else:
            above = lam
        step = lam - slope / curvature if curvature < 0 else math.nan
        if not below < step < above:  # outside the bracket (or flat): bisect or widen it
            step = 2 * lam if above == math.inf else (below + above) / 2
        if abs(step - lam) <= 1e-12 * lam:
            break
        lam = step
    return best


def _tight_epsilon(
    variance: float, scale: float, old: float, recent: float, delta_prime: float, bernstein: float
) -> float:
    """A split's Bennett-Hoeffding ε, at least the Gaussian one (bisection: once per cut)."""
    low, high = math.sqrt(2 * variance * delta_prime * (1 / old + 1 / recent)), bernstein
    if _exponent(low, variance, scale, old, recent, None) > delta_prime:
        return low
    for _ in range(60):
        middle = (low + high) / 2
        if _exponent(middle, variance, scale, old, recent, None) > delta_prime:
            high = middle
        else:
            low = middle
    return high
