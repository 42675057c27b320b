"""How many distinct entities a window holds, and what repeated entities cost (ADR 0022).

A drift monitor watches one partition of an entity-keyed topic, so it sees a fixed
subset of the entities, each several times. Values of one entity are alike (a card's
home country, its usual amount): a window of n events whose entity i holds m_i of
them has, for a column whose between-entity share of variance is ICC (measured on the
reference), the variance of n / deff independent events, with

    deff = 1 − ICC + ICC·m̃,   m̃ = Σ m_i² / Σ m_i

(Kish's design effect for clusters of unequal size). m̃ is the size of the cluster an
average event sits in; it equals the mean n/E only when every entity holds as many
events. Real entities do not (some cards pay ten times as often as others), and the
mean then understates m̃ by the factor 1 + CV² of the sizes.

The sketch keeps the events per entity for the k smallest 64-bit entity hashes
(a k-minimum-values sketch, Bar-Yossef et al. 2002; k = 1024): exact below k
entities, so for every window of the default 1,000 rows. Above, those entities are a
uniform sample of the window's distinct ones, so Σ m² / Σ m over them estimates m̃
(within 10 % for the example's cards), and the k-th hash the distinct count (about
3 % off). An entity is counted only while its hash can still be among the k smallest,
so each kept count is the entity's whole count in the window.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

SKETCH_SIZE = 1024
_SPACE = float(1 << 64)
_NO_BOUND = 1 << 64  # above every hash: all are kept until the sketch first fills


_HASHED: dict[str, int] = {}
_HASHED_MAX = 1 << 16


def entity_hash(entity: str) -> int:
    """A stable 64-bit hash (saved states hold them, so not Python's salted `hash`)."""
    known = _HASHED.get(entity)
    if known is None:
        known = int.from_bytes(hashlib.blake2b(entity.encode(), digest_size=8).digest(), "big")
        if len(_HASHED) >= _HASHED_MAX:  # entities repeat: a bounded cache, emptied when full
            _HASHED.clear()
        _HASHED[entity] = known
    return known


def design_effect(icc: float, cluster_size: float) -> float:
    """Kish's deff = 1 − ICC + ICC·m̃ of rows in clusters of m̃ rows (at least 1)."""
    return max(1.0, 1.0 + icc * (cluster_size - 1.0)) if icc > 0 else 1.0


class EntitySketch:
    """Distinct entities of one window, how many rows named one, and how they cluster."""

    def __init__(
        self, hashes: tuple[int, ...] = (), counts: tuple[int, ...] = (), *, rows: int = 0
    ) -> None:
        if counts and len(counts) != len(hashes):
            raise ValueError(f"{len(hashes)} entity hashes but {len(counts)} counts")
        self._counts: dict[int, int] = dict(zip(hashes, counts or (1,) * len(hashes), strict=True))
        self.rows = rows
        # hashes above the bound can no longer be among the k smallest (ADR 0022)
        self._bound = max(hashes) if len(hashes) >= SKETCH_SIZE else _NO_BOUND
        # A state saved before counts were kept (k was 256): its window reads as even
        # clusters, of more rows each when it had been trimmed; that window errs quiet.
        if hashes and not counts:
            even = max(1, round(rows / self.distinct))
            self._counts = dict.fromkeys(hashes, even)

    def add(self, entity: str | None) -> None:
        self.add_many((entity,))

    def add_many(self, entities: Sequence[str | None]) -> None:
        cached = _HASHED.get  # entities repeat: most are cached (no call per entity)
        counts, bound = self._counts, self._bound
        for entity, times in Counter(entities).items():
            if entity is None:
                continue
            self.rows += times
            h = cached(entity)
            if h is None:
                h = entity_hash(entity)
            if h <= bound:
                counts[h] = counts.get(h, 0) + times
        self._trim()

    def _trim(self) -> None:
        if len(self._counts) > 2 * SKETCH_SIZE:  # keep the smallest now and then: amortised
            kept = self._sample()
            self._counts = {h: self._counts[h] for h in kept}
            self._bound = kept[-1]

    def _sample(self) -> list[int]:
        """The k smallest hashes: what the estimates read, whenever the sketch was trimmed."""
        # sorting all (≤ 2k hashes, in C) is ~3× quicker than heapq.nsmallest for k this near
        return sorted(self._counts)[:SKETCH_SIZE]

    @property
    def distinct(self) -> float:
        """Distinct entities seen: exact below SKETCH_SIZE, estimated above."""
        if len(self._counts) < SKETCH_SIZE:
            return float(len(self._counts))
        kth = self._sample()[-1]
        return (SKETCH_SIZE - 1) * _SPACE / (kth + 1)

    @property
    def cluster_size(self) -> float:
        """m̃ = Σ m² / Σ m: the rows of the entity an average row belongs to."""
        if len(self._counts) <= SKETCH_SIZE:  # every kept entity is in the sample
            counts: list[int] = list(self._counts.values())
        else:
            counts = [self._counts[h] for h in self._sample()]
        total = sum(counts)
        return sum(m * m for m in counts) / total if total else 1.0

    def state(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The k smallest hashes and their rows, in ascending hash order."""
        kept = self._sample()
        return tuple(kept), tuple(self._counts[h] for h in kept)

    def reset(self) -> None:
        self._counts.clear()
        self.rows = 0
        self._bound = _NO_BOUND
