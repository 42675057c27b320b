"""Moves offline rows from each view's Redis spool into Parquet, by size and by time.

Rows reach the spool in the same transaction as the state and online values,
before the consumer commits the offset. How a spool is flushed (oldest rows,
one Parquet file per date partition, trim, a lock between flushers) lives in
`mlbus.featurestore.flush_spool`, shared with `mlbus train`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence

from mlbus.errors import RetryableError
from mlbus.featurestore import OfflineStore, OnlineStore, flush_spool
from mlbus.redis_failures import REDIS_DOWN
from mlbus.telemetry import meter

from ._processor import BoundView

log = logging.getLogger(__name__)
_rows_written = meter("mlbus.features").create_counter(
    "mlbus.features.offline_rows", description="rows written to Parquet"
)


class OfflineFlusher:
    def __init__(
        self,
        views: Sequence[BoundView],
        online: OnlineStore,
        offline: OfflineStore,
        *,
        flush_rows: int,
        interval_s: float,
    ) -> None:
        self.views = tuple(views)
        self.online = online
        self.client = online.client
        self.keys = online.keys
        self.offline = offline
        self.flush_rows = flush_rows
        self.interval_s = interval_s
        self._last_flush: dict[str, float] = {}
        # The lock token of this flusher, kept across flushes: a lock a Redis stall left
        # behind is recognised as ours and taken back (flush_spool's `owner`).
        self._owner = f"features-flusher-{uuid.uuid4().hex}"

    async def flush(self, *, force: bool = True) -> int:
        """Write what waits in every spool (`force`), or only spools that are due. Rows written."""
        total = 0
        for view in self.views:
            total += await self._flush_view(view, force=force)
        return total

    async def _flush_view(self, view: BoundView, *, force: bool) -> int:
        spool = self.keys.spool(view.name, view.version)
        try:
            waiting = int(await self.client.llen(spool))
            now = time.monotonic()
            last = self._last_flush.setdefault(view.name, now)
            due = waiting >= self.flush_rows or (waiting and now - last >= self.interval_s)
            if not waiting or not (force or due):
                return 0
            flushed = await flush_spool(
                self.online, self.offline, view.name, view.version, view.features,
                batch_rows=self.flush_rows, owner=self._owner,
            )  # fmt: skip
            if flushed is None:  # another replica is flushing this spool
                return 0
            written = flushed
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unavailable flushing offline rows: {exc}") from exc
        self._last_flush[view.name] = time.monotonic()
        _rows_written.add(written, {"view": view.name})
        log.debug("wrote %d offline rows of %s", written, view.name)
        return written

    async def run(self, stop: asyncio.Event) -> None:
        """Flush due spools until `stop`; then flush everything once more.

        The last, forced flush runs after `stop` is seen, even if `stop` was set
        while a periodic flush was in progress."""
        tick = min(1.0, self.interval_s)
        while True:
            stopping = stop.is_set()
            try:
                await self.flush(force=stopping)
            except (RetryableError, OSError) as exc:  # Redis or the object store is down
                log.warning("offline flush failed, will retry: %s", exc)
            if stopping:
                return
            try:
                await asyncio.wait_for(stop.wait(), tick)
            except TimeoutError:
                pass
