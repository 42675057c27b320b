"""A monitor's channels side by side, so a batch of observations is binned, counted and placed
on the reference CDFs with a few numpy operations (`DriftMonitor.observe_columns`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import numpy as np

from mlbus.driftstats._channels import (
    ABSENT,
    EXACT_INT,
    INVALID,
    PLAIN_NUMBERS,
    PREDICTION,
    Channel,
    NumericChannel,
)


class BatchLayout:
    """All channels of a monitor side by side, so a batch is binned, counted and placed on
    the reference CDFs with a few numpy operations instead of a few per channel.

    Numeric features whose values are all floats or ints (or None) are binned together
    (the count of cut points below each value, as bisect_left); any other batch, the
    categorical channels and a prediction with gaps go through each channel's `bins_of`.
    """

    def __init__(
        self, channels: list[Channel], adaptive: list[NumericChannel], phases: int
    ) -> None:
        self.channels = channels
        sizes = [len(c.counts) for c in channels]
        self.offsets = np.cumsum([0, *sizes[:-1]]).astype(np.int64)
        self.total_bins = int(sum(sizes))
        self.numeric = [
            i
            for i, c in enumerate(channels)
            if isinstance(c, NumericChannel) and c.kind == "covariate"
        ]
        self.names = [channels[i].name for i in self.numeric]
        numeric = [c for c in channels if isinstance(c, NumericChannel) and c.kind == "covariate"]
        self.edges = [c.edges_array for c in numeric]
        self.missing = np.asarray([c.missing for c in numeric], dtype=np.int64)
        # the adaptive channels' CDF positions, phases × channels × bins, NaN past the last
        self.adaptive = [channels.index(c) for c in adaptive]
        bins = max((c.missing for c in adaptive), default=0)
        self.pits = np.full((max(phases, 1), len(adaptive), bins + 1), np.nan)
        for column, channel in enumerate(adaptive):
            self.pits[:, column, : channel.missing] = channel.pits  # one row: every phase
        self.adaptive_missing = np.asarray([c.missing for c in adaptive], dtype=np.int64)
        self.nowhere = bins  # the NaN column: missing, absent or invalid values

    def bins(
        self,
        columns: Mapping[str, Sequence[Any]],
        scores: Sequence[float | None] | None,
        n: int,
    ) -> np.ndarray:
        """Rows × channels bin indexes (NOT_COUNTED, INVALID as bin_of says)."""
        indexes = np.empty((n, len(self.channels)), dtype=np.int64)
        done = set()
        if self.names and n:
            together = self._numeric_bins(columns)
            if together is not None:
                indexes[:, self.numeric] = together
                done.update(self.numeric)
        for i, channel in enumerate(self.channels):
            if i in done:
                continue
            if channel.kind == PREDICTION:
                values: Sequence[Any] = (
                    [ABSENT] * n if scores is None else [ABSENT if p is None else p for p in scores]
                )
            else:
                values = columns.get(channel.name) or [ABSENT] * n
            indexes[:, i] = channel.bins_of(list(values))
        return indexes

    def _numeric_bins(self, columns: Mapping[str, Sequence[Any]]) -> np.ndarray | None:
        picked = [columns.get(name) for name in self.names]
        if any(values is None for values in picked):  # absent from every row
            return None
        kinds = set(map(type, chain.from_iterable(picked)))  # type: ignore[arg-type]
        if not kinds <= PLAIN_NUMBERS:  # ABSENT (a key missing from some row), strings, …
            return None
        try:
            numbers = np.asarray(picked, dtype=np.float64)  # channels × rows; None: NaN
        except OverflowError:  # an int no float holds (JSON allows any): bin_of's exact path
            return None
        if int in kinds and bool((np.abs(numbers) >= EXACT_INT).any()):
            return None  # bin_of compares such ints exactly
        below = np.empty(numbers.shape, dtype=np.int64)
        for row, (edges, values) in enumerate(zip(self.edges, numbers, strict=True)):
            below[row] = np.searchsorted(edges, values, side="left")  # as bisect_left
        return np.where(np.isnan(numbers), self.missing[:, None], below).T

    def count(self, indexes: np.ndarray) -> None:
        """Add rows × channels bin indexes to the channels' counts and invalid counts."""
        if not len(indexes):
            return
        counted = indexes >= 0
        where = (indexes + self.offsets[None, :])[counted]
        added = np.bincount(where, minlength=self.total_bins).tolist()
        invalid = (indexes == INVALID).sum(axis=0).tolist()
        for channel, offset, wrong in zip(
            self.channels, self.offsets.tolist(), invalid, strict=True
        ):
            size = len(channel.counts)
            channel.counts = [
                a + b for a, b in zip(channel.counts, added[offset : offset + size], strict=True)
            ]
            channel.invalid += wrong

    def positions(self, indexes: np.ndarray, phases: np.ndarray) -> np.ndarray:
        """Rows × adaptive channels: each value's position on its phase's reference CDF (NaN
        where there is no value)."""
        columns = indexes[:, self.adaptive]
        present = (columns >= 0) & (columns < self.adaptive_missing[None, :])
        safe = np.where(present, columns, self.nowhere)
        picked: np.ndarray = self.pits[
            phases[:, None], np.arange(len(self.adaptive))[None, :], safe
        ]
        return picked
