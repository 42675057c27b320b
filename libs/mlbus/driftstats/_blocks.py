"""The feature channels' ADWINs, all channels in one structure, fed a block of rows at a time.

`Adwin` (ADR 0016) runs in Python per value: ~2 µs to insert one and ~20 µs per
check, for every numeric channel, which made the monitor cost ~35 µs per row of
the fraud example. `BlockAdwins` runs the same test on the same window with
numpy over channels, buckets and the blocks of a batch:

- Rows come in blocks of `BLOCK`. A block adds ONE bucket per channel: how
  many values the channel had in it (a missing one is no value), their sum and
  their exact sum of squared deviations (so the window's variance stays
  exact); the window's width, total and variance after each block of a batch
  are running sums (`cumsum`, sequential), the same figures as adding the
  blocks one by one.
- The exponential histogram is over blocks: level i holds at most
  `max_buckets` buckets of 2**i blocks, oldest first; buckets are weighted by
  their values' count, and all channels share the boundaries, so one
  (channels × buckets) array holds every channel's counts and sums.
- Every `clock` (16) values of a channel since its last reset, once it holds
  more than `grace` values, it is checked at every bucket boundary at once
  (vectorised over channels and splits) with Adwin's Bennett-Hoeffding bound,
  n values weighing as n/κ; the oldest split that cuts is the change, and the
  channel starts a fresh window (its buckets emptied), as Adwin does. The
  checks due in one batch are screened together once its blocks are added
  (`_Screen`: one numpy pass instead of ~25 calls per check, ~1 µs per row of
  the fraud example); a cut puts the blocks after its own back. An
  `inflated` channel's κ is also multiplied by the `inflation` fed with each
  row, 1 + ρ as it stands at the block's last row (a seasonal reference's, see
  _rate), or by 1 + ρ·`rate_scale` for a channel whose reference is thinner.
- A partial block waits for the next rows (`pending`, part of the state), so
  `observe` row by row and `observe_many` in batches of any size insert the
  same blocks with the same arithmetic and cut on the same row.

With blocks of one row and every value present, this is Adwin's histogram,
bucket for bucket. Blocks of 2 rows cut where per-value ADWIN cuts on the
benchmark's abrupt shifts (seeds 1-60); blocks of 16 were ~3× cheaper but their
coarser splits near the newest end cost 8-16 events of median delay (ADR 0016).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import accumulate
from typing import Literal, TypeAlias

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mlbus.driftstats._adwin import AdwinChange, _exponent, _tight_epsilon

BLOCK = 2
MAX_BUCKETS = 5
CONSOLIDATE = 32
"""Stored columns beyond the buckets before each bucket's columns are summed into one."""
FEED_ROWS = 4096
"""Rows fed at once: their checks are screened together (~256 checks × channels × splits)."""
AHEAD = 64
"""Stored columns a running sum reaches past those in use (the buckets the next checks add)."""


class BlockAdwinsState(BaseModel):
    """Everything a `BlockAdwins` holds, JSON-serialisable; floats round-trip exactly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    channels: tuple[str, ...] = Field(description="channel keys: the order of every column below")
    delta: tuple[float, ...]
    dependence: tuple[float, ...]
    inflated: tuple[bool, ...] = Field(
        default=(), description="per channel: κ grows by each row's inflation (none: saved before)"
    )
    bound: Literal["bennett-hoeffding"] = "bennett-hoeffding"
    block: int = Field(default=BLOCK, ge=1)
    clock: int = Field(default=16, ge=1)
    max_buckets: int = Field(default=5, ge=2)
    min_length: int = Field(default=5, ge=1)
    grace: int = Field(default=10, ge=0)
    levels: tuple[int, ...] = Field(
        default=(), description="per bucket, oldest first: 2**level blocks"
    )
    spans: tuple[int, ...] = Field(default=(), description="per bucket: the stored columns it sums")
    since: tuple[float, ...] = Field(
        default=(), description="per stored column: its oldest row's time"
    )
    counts: tuple[tuple[int, ...], ...] = Field(
        default=(), description="per channel, per stored column"
    )
    sums: tuple[tuple[float, ...], ...] = ()
    width: tuple[int, ...] = ()
    total: tuple[float, ...] = ()
    variance: tuple[float, ...] = Field(default=(), description="sums of squared deviations")
    scale: tuple[float, ...] = ()
    ticks: tuple[int, ...] = ()
    seen: tuple[int, ...] = ()
    detections: tuple[int, ...] = ()
    pending: tuple[tuple[float | None, ...], ...] = Field(
        default=(), description="rows of the partial block: per channel its value or None"
    )
    pending_times: tuple[float, ...] = ()
    pending_inflation: tuple[float, ...] = ()


class BlockAdwins:
    """ADWIN (Bennett-Hoeffding bound) over several channels at once, a block of rows at a time.

    Buckets are merged lazily: a merge only joins the bucket's span of stored
    columns (Python integers), and every check reads the buckets' counts and sums
    at the spans' ends of one running sum over the columns. Once the columns
    outnumber the buckets by `CONSOLIDATE`, each bucket's columns are summed into
    one; that point depends on the data only, never on how rows were batched.
    """

    def __init__(
        self,
        keys: Sequence[str],
        delta: Sequence[float],
        dependence: Sequence[float],
        *,
        inflated: Sequence[bool] | None = None,
        block: int | None = None,
        clock: int = 16,
        max_buckets: int | None = None,
        min_length: int = 5,
        grace: int = 10,
    ) -> None:
        self.keys = tuple(keys)
        size = len(self.keys)
        self.delta = np.asarray(delta, dtype=np.float64)
        self.dependence = np.asarray(dependence, dtype=np.float64)
        self.inflated = np.zeros(size, dtype=bool) if inflated is None else np.asarray(inflated)
        # per channel, how many times the fed ρ its own is (a reference thinner than the
        # features', as the prediction's holdout is); set by the monitor, not saved
        self.rate_scale = np.ones(size, dtype=np.float64)
        self.block = BLOCK if block is None else block
        self.clock = clock
        self.max_buckets = MAX_BUCKETS if max_buckets is None else max_buckets
        self.min_length = min_length
        self.grace = grace
        self.levels: list[int] = []  # per bucket, oldest first
        self.spans: list[int] = []  # per bucket: how many stored columns it sums
        self.row_sizes: list[int] = []  # buckets per level
        self.since: list[float] = []  # per stored column: its oldest row's time
        self._columns = 0  # stored columns in use (= sum(spans))
        self._moves = 0  # how often stored columns were rewritten (a running sum's age)
        # counts and sums per channel and stored column; columns past _columns are scratch
        self._buckets = np.zeros((2, size, 64), dtype=np.float64)
        self.width = np.zeros(size, dtype=np.float64)
        self.total = np.zeros(size, dtype=np.float64)
        self.variance = np.zeros(size, dtype=np.float64)
        self.scale = np.zeros(size, dtype=np.float64)
        self.ticks = np.zeros(size, dtype=np.float64)
        self.seen = np.zeros(size, dtype=np.float64)
        self.detections = np.zeros(size, dtype=np.float64)
        self._pending = np.empty((0, size), dtype=np.float64)  # NaN: no value
        self._pending_times = np.empty(0, dtype=np.float64)
        self._pending_inflation = np.empty(0, dtype=np.float64)

    # ── feeding ──────────────────────────────────────────────────────────────

    def feed(
        self, values: np.ndarray, times: np.ndarray, inflation: np.ndarray | None = None
    ) -> tuple[int, list[tuple[int, AdwinChange]]]:
        """Rows × channels values (NaN: none) observed at `times`: how many rows were taken
        and the changes, (channel index, change). Rows are taken up to the end of the first
        block on which some channel cut (then all of them), else all of them. `inflation`:
        per row, the factor of the inflated channels' κ (1 when not given).

        Fed FEED_ROWS at a time, which bounds the screen's arrays (a batch cuts where any
        split of it would)."""
        taken = 0
        while True:
            end = min(len(times), taken + FEED_ROWS)
            part = None if inflation is None else inflation[taken:end]
            got, changes = self._feed(values[taken:end], times[taken:end], part)
            taken += got
            if changes or taken >= len(times):
                return taken, changes

    def _feed(
        self, values: np.ndarray, times: np.ndarray, inflation: np.ndarray | None
    ) -> tuple[int, list[tuple[int, AdwinChange]]]:
        n = len(times)
        if inflation is None:
            inflation = np.ones(n, dtype=np.float64)
        held = len(self._pending)
        if held + n < self.block:
            self._pending = np.concatenate((self._pending, values))
            self._pending_times = np.concatenate((self._pending_times, times))
            self._pending_inflation = np.concatenate((self._pending_inflation, inflation))
            return n, []
        if held:
            values = np.concatenate((self._pending, values))
            times = np.concatenate((self._pending_times, times))
            inflation = np.concatenate((self._pending_inflation, inflation))
        blocks = len(times) // self.block
        used = blocks * self.block
        count, total, squares, reach = _block_stats(values[:used], blocks)
        starts = times[:used].reshape(blocks, self.block).min(axis=1).tolist()
        inflations = inflation[self.block - 1 : used : self.block]  # at each block's last row
        # The state after each block, all at once: running sums are sequential (cumsum), so
        # the figures are those of adding the blocks one by one, whatever the batch
        # (counts are whole numbers: exact in any order).
        counted = np.cumsum(np.vstack((np.zeros_like(self.width), count)), axis=0)
        width = self.width + counted
        sums = np.cumsum(np.vstack((self.total, total)), axis=0)
        before = width[:-1]
        # the two parts' means (0 for an empty part, whose weight width·count is 0 anyway)
        gap = total / np.maximum(count, 1.0) - sums[:-1] / np.maximum(before, 1.0)
        added = squares + before * count / np.maximum(before + count, 1.0) * gap * gap
        variance = np.cumsum(np.vstack((self.variance, added)), axis=0)
        scale = np.maximum.accumulate(np.vstack((self.scale, reach)), axis=0)
        ticks = self.ticks + counted
        laps = ticks // self.clock
        due = (laps[1:] != laps[:-1]) & (width[1:] > self.grace)
        checked = due.any(axis=1).tolist()
        # The checks are screened together after the blocks are added (one numpy pass
        # instead of one per check); the bucket layout is saved first, so a cut puts the
        # blocks after its own back as if they had never been added.
        saved = self._layout() if any(checked) else None
        self._store(count, total, starts)
        throughs: list[np.ndarray] = []
        running = _RunningSums(self)
        at = np.flatnonzero(checked)
        added = 0
        for b in at.tolist():  # each check sees the buckets up to its block
            self._add_buckets(b + 1 - added)
            added = b + 1
            throughs.append(running.through())
        self._add_buckets(blocks - added)
        if saved is not None:
            after = at + 1
            screened = _Screen(
                self,
                throughs,
                due[at],
                width[after],
                sums[after],
                variance[after],
                scale[after],
                inflations[at],
            )
            for check in screened.candidates():
                if not screened.changes(check, dry=True):
                    continue
                b = int(at[check])
                self._restore_layout(saved)  # then add the blocks up to the cut's
                self._store(count[: b + 1], total[: b + 1], starts[: b + 1])
                self._add_buckets(b + 1)
                changes = screened.changes(check)
                state = (width[b + 1], sums[b + 1], variance[b + 1], scale[b + 1])
                self.width, self.total, self.variance, self.scale = (a.copy() for a in state)
                self.ticks, self.seen = ticks[b + 1].copy(), self.seen + counted[b + 1]
                for channel, _ in changes:
                    self._reset(channel)
                end = (b + 1) * self.block
                self._keep(values[end:end], times[end:end], inflation[end:end])
                return end - held, changes
        self.width, self.total, self.variance = width[-1], sums[-1].copy(), variance[-1].copy()
        self.scale, self.ticks, self.seen = scale[-1].copy(), ticks[-1], self.seen + counted[-1]
        self._keep(values[used:], times[used:], inflation[used:])
        return n, []

    def _layout(self) -> tuple[np.ndarray, list[int], list[int], list[int], list[float], int]:
        """The bucket layout as it stands (what `_store` and `_add_buckets` change)."""
        return (
            self._buckets[:, :, : self._columns].copy(),
            self.levels.copy(),
            self.spans.copy(),
            self.row_sizes.copy(),
            self.since.copy(),
            self._columns,
        )

    def _restore_layout(
        self, saved: tuple[np.ndarray, list[int], list[int], list[int], list[float], int]
    ) -> None:
        buckets, self.levels, self.spans, self.row_sizes, self.since, self._columns = saved
        self._buckets[:, :, : self._columns] = buckets
        self._moves += 1

    def _keep(self, values: np.ndarray, times: np.ndarray, inflation: np.ndarray) -> None:
        self._pending = values.copy()
        self._pending_times = times.copy()
        self._pending_inflation = inflation.copy()

    def _store(self, count: np.ndarray, total: np.ndarray, starts: list[float]) -> None:
        """Write the blocks' columns after the ones in use (taken as buckets one by one)."""
        begin, end = self._columns, self._columns + len(starts)
        if end > self._buckets.shape[2]:
            grown = np.zeros((2, len(self.keys), 2 * end), dtype=np.float64)
            grown[:, :, :begin] = self._buckets[:, :, :begin]
            self._buckets = grown
        self._buckets[0, :, begin:end] = count.T
        self._buckets[1, :, begin:end] = total.T
        self._moves += 1
        del self.since[begin:]
        self.since.extend(starts)

    def _add_buckets(self, count: int) -> None:
        """The next `count` stored columns become the newest buckets, one at a time, each
        merged as the histogram says (one loop for a stretch of blocks, not a call each)."""
        levels, spans, sizes = self.levels, self.spans, self.row_sizes
        most = self.max_buckets
        for _ in range(count):
            levels.append(0)
            spans.append(1)
            self._columns += 1
            if not sizes:
                sizes.append(0)
            sizes[0] += 1
            level = 0
            while sizes[level] > most:
                # the two oldest buckets of this level: after every bucket of a higher level
                at = sum(sizes[level + 1 :])
                levels[at] = level + 1
                spans[at] += spans[at + 1]
                del levels[at + 1]
                del spans[at + 1]
                sizes[level] -= 2
                level += 1
                if level == len(sizes):
                    sizes.append(0)
                sizes[level] += 1
            if self._columns - len(levels) >= CONSOLIDATE:
                self._consolidate()
                spans = self.spans  # a new list

    def _consolidate(self) -> None:
        """Sum each bucket's stored columns into one (later, scratch columns move down)."""
        columns, buckets = self._columns, len(self.levels)
        written = len(self.since)
        first = np.cumsum([0, *self.spans[:-1]])
        merged = np.add.reduceat(self._buckets[:, :, :columns], first, axis=2)
        self._buckets[:, :, :buckets] = merged
        self._buckets[:, :, buckets : buckets + written - columns] = self._buckets[
            :, :, columns:written
        ]
        since = self.since
        self.since = [
            min(since[start : start + span])
            for start, span in zip(first.tolist(), self.spans, strict=True)
        ] + since[columns:written]
        self.spans = [1] * buckets
        self._columns = buckets
        self._moves += 1

    def _since(self, through: np.ndarray) -> float:
        """The time of the oldest row in a channel's window (its counts through each bucket)."""
        bucket = int(np.argmax(through > 0))
        start = sum(self.spans[:bucket])
        return min(self.since[start : start + self.spans[bucket]])

    def _reset(self, channel: int) -> None:
        """A fresh window after a change, as Adwin starts one."""
        self._buckets[:, channel, :] = 0.0
        self._moves += 1
        self.width[channel] = self.total[channel] = self.variance[channel] = 0.0
        self.ticks[channel] = 0.0
        self.detections[channel] += 1
        while self.levels and not self._buckets[0, :, : self.spans[0]].any():
            # the oldest bucket is empty in every channel: drop it
            span = self.spans[0]
            self.row_sizes[self.levels[0]] -= 1
            columns = self._columns
            self._buckets[:, :, : columns - span] = self._buckets[:, :, span:columns]
            del self.levels[0], self.spans[0], self.since[:span]
            self._columns -= span
        while self.row_sizes and not self.row_sizes[-1]:
            self.row_sizes.pop()

    # ── state ────────────────────────────────────────────────────────────────

    def window(self, channel: int) -> int:
        return int(self.width[channel])

    def snapshot(self) -> BlockAdwinsState:
        columns = self._columns
        return BlockAdwinsState(
            channels=self.keys,
            delta=tuple(self.delta.tolist()),
            dependence=tuple(self.dependence.tolist()),
            inflated=tuple(bool(f) for f in self.inflated.tolist()),
            block=self.block,
            clock=self.clock,
            max_buckets=self.max_buckets,
            min_length=self.min_length,
            grace=self.grace,
            levels=tuple(self.levels),
            spans=tuple(self.spans),
            since=tuple(self.since[:columns]),
            counts=tuple(
                tuple(int(c) for c in row) for row in self._buckets[0, :, :columns].tolist()
            ),
            sums=tuple(tuple(row) for row in self._buckets[1, :, :columns].tolist()),
            width=tuple(int(w) for w in self.width.tolist()),
            total=tuple(self.total.tolist()),
            variance=tuple(self.variance.tolist()),
            scale=tuple(self.scale.tolist()),
            ticks=tuple(int(t) for t in self.ticks.tolist()),
            seen=tuple(int(s) for s in self.seen.tolist()),
            detections=tuple(int(d) for d in self.detections.tolist()),
            pending=tuple(
                tuple(None if v != v else v for v in row) for row in self._pending.tolist()
            ),
            pending_times=tuple(self._pending_times.tolist()),
            pending_inflation=tuple(self._pending_inflation.tolist()),
        )

    @classmethod
    def restore(cls, state: BlockAdwinsState) -> BlockAdwins:
        adwins = cls(
            state.channels,
            state.delta,
            state.dependence,
            inflated=state.inflated or None,
            block=state.block,
            clock=state.clock,
            max_buckets=state.max_buckets,
            min_length=state.min_length,
            grace=state.grace,
        )
        size, columns = len(state.channels), len(state.since)
        adwins.levels = list(state.levels)
        adwins.spans = list(state.spans) if state.spans else [1] * len(state.levels)
        adwins.since = list(state.since)
        adwins._columns = columns
        adwins.row_sizes = [0] * (max(state.levels) + 1 if state.levels else 0)
        for level in state.levels:
            adwins.row_sizes[level] += 1
        adwins._buckets = np.zeros((2, size, max(64, 2 * columns)), dtype=np.float64)
        if columns:
            adwins._buckets[0, :, :columns] = np.asarray(state.counts, dtype=np.float64)
            adwins._buckets[1, :, :columns] = np.asarray(state.sums, dtype=np.float64)
        for name in ("width", "total", "variance", "scale", "ticks", "seen", "detections"):
            setattr(adwins, name, np.asarray(getattr(state, name), dtype=np.float64))
        adwins._pending = np.asarray(
            [[math.nan if v is None else v for v in row] for row in state.pending],
            dtype=np.float64,
        ).reshape(len(state.pending), size)
        adwins._pending_times = np.asarray(state.pending_times, dtype=np.float64)
        adwins._pending_inflation = (
            np.asarray(state.pending_inflation, dtype=np.float64)
            if state.pending_inflation
            else np.ones(len(state.pending_times), dtype=np.float64)
        )
        return adwins


Cut: TypeAlias = tuple[int, int, float, float, float]
"""A split that cuts: the sizes of W0 and W1, their means and the ε they beat."""


class _RunningSums:
    """What each check of one feed splits: every channel's counts and sums through each
    bucket, oldest first (2 × channels × buckets), the older part W0 of the split at
    each bucket's end.

    Read off one running sum over the stored columns, at the buckets' spans' ends:
    merging buckets only joins spans, so the checks of a feed share it until the
    columns are rewritten (consolidated, stored, reset) or the buckets outgrow it.
    A prefix of a running sum is the running sum of the prefix (`cumsum` adds in
    order), so the figures are those of summing the columns at each check.
    """

    def __init__(self, adwins: BlockAdwins) -> None:
        self.adwins = adwins
        self.sums: np.ndarray | None = None
        self.moves = -1

    def through(self) -> np.ndarray:
        adwins = self.adwins
        columns = adwins._columns
        sums = self.sums
        if sums is None or self.moves != adwins._moves or sums.shape[2] < columns:
            reach = min(len(adwins.since), columns + AHEAD)  # written columns, scratch too
            sums = self.sums = np.cumsum(adwins._buckets[:, :, :reach], axis=2)
            self.moves = adwins._moves
        if columns == len(adwins.spans):
            return sums[:, :, :columns]
        ends = accumulate(adwins.spans, initial=-1)  # each bucket's last stored column
        return np.take(sums, np.fromiter(ends, np.intp, len(adwins.spans) + 1)[1:], axis=2)


class _Screen:
    """The checks due in one fed batch, screened together with Adwin's Gaussian ε.

    Check c is the window as it stood after its block: every channel's counts and
    sums through each bucket (`throughs[c]`) and its width, total, sum of squared
    deviations and range then. Each figure is the one the check alone would compute
    (the same operations, element by element, on a stacked array), so a batch cuts
    where checking block by block would. Checks hold different numbers of buckets:
    the missing splits are padded as the whole window (W1 empty: never a candidate).
    """

    def __init__(
        self,
        adwins: BlockAdwins,
        throughs: list[np.ndarray],
        due: np.ndarray,
        widths: np.ndarray,
        totals: np.ndarray,
        variances: np.ndarray,
        scales: np.ndarray,
        inflations: np.ndarray,
    ) -> None:
        self.adwins = adwins
        splits = max(through.shape[2] for through in throughs)
        width, total = widths[:, :, None], totals[:, :, None]
        n0 = np.repeat(width, splits, axis=2)
        sum0 = np.repeat(total, splits, axis=2)
        for check, through in enumerate(throughs):
            n0[check, :, : through.shape[2]] = through[0]
            sum0[check, :, : through.shape[2]] = through[1]
        dependence = adwins.dependence[None, :]
        growth = 1.0 + (inflations[:, None] - 1.0) * adwins.rate_scale[None, :]
        kappa = np.where(adwins.inflated[None, :], dependence * growth, dependence)[:, :, None]
        shift = 1 - adwins.min_length
        # Where both parts hold min_length values (elsewhere the figures are discarded):
        # gap² > 2·var·δ'·κ·(1/(n0 - m + 1) + 1/(n1 - m + 1)), Adwin's Gaussian ε. A
        # channel not due (or under `grace` values) may take the log of 0: masked below.
        with np.errstate(divide="ignore", invalid="ignore"):
            delta_prime = np.log(2 * np.log(width) / adwins.delta[None, :, None])
            variance = variances[:, :, None] / width
            n1 = width - n0
            gap = sum0 / n0 - (total - sum0) / n1
            spread = (2 * variance * delta_prime * kappa) * (1 / (n0 + shift) + 1 / (n1 + shift))
            beyond = (np.minimum(n0, n1) >= adwins.min_length) & (gap * gap > spread)
        self.beyond = beyond & due[:, :, None]
        self.n0, self.sum0, self.n1, self.kappa = n0, sum0, n1, kappa
        self.width, self.total = width[:, :, 0], total[:, :, 0]
        self.variance, self.delta_prime = variance[:, :, 0], delta_prime[:, :, 0]
        self.scales = scales

    def candidates(self) -> list[int]:
        """The checks with a split past the Gaussian ε, oldest first (most checks: none)."""
        return np.flatnonzero(self.beyond.any(axis=(1, 2))).tolist()

    def changes(self, check: int, *, dry: bool = False) -> list[tuple[int, AdwinChange]]:
        """Check `check`'s cuts, (channel, change), by the Bennett-Hoeffding ε. `dry`: only
        whether there are any, the times left out (the layout is then the batch's end)."""
        shift = 1 - self.adwins.min_length
        kappa = self.kappa[check]
        old = np.maximum(self.n0[check] + shift, 1.0) / kappa
        recent = np.maximum(self.n1[check] + shift, 1.0) / kappa
        changes: list[tuple[int, AdwinChange]] = []
        for channel, column in _first_per_row(self.beyond[check]):
            found = _cut(
                self.beyond[check, channel],
                column,
                self.n0[check, channel],
                self.sum0[check, channel],
                old[channel],
                recent[channel],
                float(self.width[check, channel]),
                float(self.total[check, channel]),
                float(self.scales[check, channel]),
                float(self.variance[check, channel]),
                float(self.delta_prime[check, channel]),
            )
            if found is None:
                continue
            since = math.nan if dry else self.adwins._since(self.n0[check, channel])
            changes.append((channel, AdwinChange(*found, since)))
            if dry:
                break
        return changes


def _cut(
    beyond: np.ndarray,
    first: int,
    n0: np.ndarray,
    sum0: np.ndarray,
    old: np.ndarray,
    recent: np.ndarray,
    width: float,
    total: float,
    scale: float,
    variance: float,
    delta_prime: float,
) -> Cut | None:
    """The oldest split beyond the Bennett-Hoeffding ε, among the candidates."""
    range_term = scale * delta_prime / 3
    for column in range(first, len(beyond)):
        if not beyond[column]:
            continue
        size0 = float(n0[column])
        size1 = width - size0
        mean0, mean1 = float(sum0[column]) / size0, (total - float(sum0[column])) / size1
        gap = abs(mean0 - mean1)
        a, b = float(old[column]), float(recent[column])
        spread = 2 * variance * delta_prime * (1 / a + 1 / b)
        reach = range_term / min(a, b)
        if gap * (gap - 2 * reach) > spread or (
            _exponent(gap, variance, scale, a, b, delta_prime) > delta_prime
        ):
            epsilon = reach + math.sqrt(reach * reach + spread)
            epsilon = _tight_epsilon(variance, scale, a, b, delta_prime, epsilon)
            return int(size0), int(size1), mean0, mean1, epsilon
    return None


def _block_stats(
    values: np.ndarray, blocks: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per block × channel of rows × channels values (NaN: none): count, sum, sum of squared
    deviations and largest |value|. Each block's rows of one channel are summed as one
    contiguous run, so its figures never depend on what else is in the batch."""
    channels = values.shape[1]
    runs = np.ascontiguousarray(values.T).reshape(channels * blocks, -1)
    present = ~np.isnan(runs)
    whole = bool(present.all())  # the usual batch: nothing to mask (the same figures)
    filled = runs if whole else np.where(present, runs, 0.0)
    count = (
        np.full(len(runs), float(runs.shape[1]))
        if whole
        else present.sum(axis=1).astype(np.float64)
    )
    total = filled.sum(axis=1)
    mean = total / np.maximum(count, 1.0)
    deviations = runs - mean[:, None]
    if not whole:
        deviations = np.where(present, deviations, 0.0)
    squares = (deviations * deviations).sum(axis=1)
    reach = np.abs(filled).max(axis=1)
    figures = [figure.reshape(channels, blocks).T for figure in (count, total, squares, reach)]
    return figures[0], figures[1], figures[2], figures[3]


def _first_per_row(mask: np.ndarray) -> list[tuple[int, int]]:
    """(row, first True column) for each row of a boolean matrix that has one."""
    rows = np.flatnonzero(mask.any(axis=1))
    return [(int(r), int(np.argmax(mask[r]))) for r in rows]
