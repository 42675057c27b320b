"""How many distinct entities a window holds, and what repeated entities cost (ADR 0022).

A drift monitor watches one partition of an entity-keyed topic, so it sees a fixed
subset of the entities, each several times. Values of one entity are alike (a card's
home country, its usual amount): a window of n events from E entities has, for a
column whose between-entity share of variance is ICC (measured on the reference), the
variance of n / deff independent events, deff = 1 − ICC + ICC·n/E (the design effect
of cluster sampling, Kish 1965). The subset's own mix is part of that noise.

The distinct count is a k-minimum-values sketch (Bar-Yossef et al. 2002): the k
smallest 64-bit hashes seen, exact below k entities, about 6 % off above (k = 256).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Sequence

SKETCH_SIZE = 256
_SPACE = float(1 << 64)


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


class EntitySketch:
    """Distinct entities of one window, and how many rows named one."""

    def __init__(self, hashes: tuple[int, ...] = (), rows: int = 0) -> None:
        self._hashes = set(hashes)
        self.rows = rows

    def add(self, entity: str | None) -> None:
        if entity is None:
            return
        self.rows += 1
        self._hashes.add(entity_hash(entity))
        if len(self._hashes) > 2 * SKETCH_SIZE:  # keep the smallest now and then: amortised
            self._hashes = set(heapq.nsmallest(SKETCH_SIZE, self._hashes))

    def add_many(self, entities: Sequence[str | None]) -> None:
        named = [entity for entity in entities if entity is not None]
        self.rows += len(named)
        cached = _HASHED.get  # entities repeat: most are cached (no call per entity)
        hashes = [h if (h := cached(e)) is not None else entity_hash(e) for e in set(named)]
        self._hashes.update(hashes)
        if len(self._hashes) > 2 * SKETCH_SIZE:
            self._hashes = set(heapq.nsmallest(SKETCH_SIZE, self._hashes))

    @property
    def distinct(self) -> float:
        """Distinct entities seen: exact below SKETCH_SIZE, estimated above."""
        if len(self._hashes) < SKETCH_SIZE:
            return float(len(self._hashes))
        kth = heapq.nsmallest(SKETCH_SIZE, self._hashes)[-1]
        return (SKETCH_SIZE - 1) * _SPACE / (kth + 1)

    def design_effect(self, icc: float) -> float:
        """deff of this window for a column of intra-entity correlation `icc` (≥ 1)."""
        if icc <= 0 or not self.rows:
            return 1.0
        per_entity = self.rows / max(self.distinct, 1.0)
        return max(1.0, 1.0 - icc + icc * per_entity)

    def state(self) -> tuple[int, ...]:
        return tuple(heapq.nsmallest(SKETCH_SIZE, self._hashes))

    def reset(self) -> None:
        self._hashes.clear()
        self.rows = 0
