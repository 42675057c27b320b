"""BlockAdwins: the checks of a batch are screened together, and cut where row by row cuts."""

from __future__ import annotations

import numpy as np
import pytest

from mlbus.driftstats import _blocks
from mlbus.driftstats._blocks import BlockAdwins


def _adwins(block: int) -> BlockAdwins:
    adwins = BlockAdwins(
        ["a", "b", "c"],
        [0.002, 0.002, 0.01],
        [1.0, 2.0, 1.0],
        inflated=[False, True, False],
        block=block,
    )
    adwins.rate_scale = np.asarray([1.0, 2.5, 1.0])
    return adwins


def _stream(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = rng.normal(0.5, 0.1, size=(n, 3))
    values[n // 3 :, 0] += 0.08  # two changes, in different channels
    values[2 * n // 3 :, 2] -= 0.06
    values[rng.random((n, 3)) < 0.1] = np.nan  # missing values: channels tick apart
    times = 1.8e9 + np.cumsum(rng.exponential(1.0, n))
    inflation = np.where(rng.random(n) < 0.3, 1.0, 1.0 + rng.uniform(0.0, 0.5, n))
    return values, times, inflation


def _feed(
    adwins: BlockAdwins, stream: tuple[np.ndarray, np.ndarray, np.ndarray], size: int
) -> list[tuple[int, int, tuple[int, int, float, float, float, float]]]:
    """Every cut as (row after which it was found, channel, the change's figures)."""
    values, times, inflation = stream
    cuts = []
    row = 0
    while row < len(times):
        end = min(len(times), row + size)
        taken, changes = adwins.feed(values[row:end], times[row:end], inflation[row:end])
        row += taken
        cuts += [
            (row, channel, (c.n_old, c.n_recent, c.mean_old, c.mean_recent, c.epsilon, c.since))
            for channel, c in changes
        ]
    return cuts


@pytest.mark.parametrize(
    ("seed", "block", "consolidate"), [(3, 2, 32), (4, 2, 32), (5, 1, 3), (6, 3, 1)]
)
def test_batches_cut_on_the_row_and_leave_the_state_that_row_by_row_does(
    seed: int, block: int, consolidate: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_blocks, "CONSOLIDATE", consolidate)  # layouts merged often mid-batch
    stream = _stream(seed, 12_000)
    one_by_one = _adwins(block)
    expected = _feed(one_by_one, stream, 1)
    assert {channel for _, channel, _ in expected} >= {0, 2}  # the changes were found
    # a batch holds many checks and cuts inside it; 12,000 rows are fed FEED_ROWS at a time
    for size in (3, 64, 700, 12_000):
        batched = _adwins(block)
        assert _feed(batched, stream, size) == expected
        assert batched.snapshot() == one_by_one.snapshot()
