"""The offline spool: rows waiting in Redis for Parquet, and the one way to move them.

The feature service appends each offline row to its view's spool (a Redis list,
oldest first) in the same transaction as the online values; `flush_spool` reads
the oldest rows, writes one Parquet file per date partition, then trims exactly
those rows. A crash between the write and the trim writes them again on the next
flush: same event ids, same values, de-duplicated by every reader. A Redis lock
keeps two flushers (two feature-service replicas, or `mlbus train` beside the
service) from flushing one spool at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mlbus.errors import RetryableError
from mlbus.featurestore._online import OnlineStore
from mlbus.redis_failures import REDIS_DOWN

if TYPE_CHECKING:
    from mlbus.featurestore._offline import OfflineStore
    from mlbus.spec import FeatureDef

DEFAULT_BATCH_ROWS = 10_000
LOCK_TIMEOUT_S = 120
LOCK_WAIT_S = 10
_RELEASE_IF_OWNED = """\
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


async def spool_length(online: OnlineStore, view: str, version: int) -> int:
    """How many offline rows of a view wait in Redis for the next flush."""
    try:
        return int(await online.client.llen(online.keys.spool(view, version)))
    except REDIS_DOWN as exc:
        raise RetryableError(f"Redis unavailable reading the offline spool: {exc}") from exc


async def flush_spool(
    online: OnlineStore,
    offline: OfflineStore,
    view: str,
    version: int,
    features: Sequence[FeatureDef],
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    owner: str | None = None,
) -> int | None:
    """Move every row waiting in a view's spool to Parquet; the rows written.

    None when another flusher held the spool's lock for `LOCK_WAIT_S` (it is
    writing the same rows). Redis down raises `RetryableError`.

    `owner` is a flusher's lasting token for the lock. A lock it took and never
    released, because Redis stalled and the release timed out or the SET's reply
    was lost, is then taken back at once; without it, every flush waited for
    "another flusher" until the lock expired (`LOCK_TIMEOUT_S`: two minutes
    without offline rows after a 5-second Redis stall, found by the soak, #25).
    """
    from mlbus.featurestore._offline import OfflineRow

    client, keys = online.client, online.keys
    spool = keys.spool(view, version)
    lock_key = keys.spool_lock(view, version)
    try:
        if owner is not None:  # one flush at a time per owner: a lock of ours is a leftover
            await client.eval(_RELEASE_IF_OWNED, 1, lock_key, owner)
        lock = client.lock(lock_key, timeout=LOCK_TIMEOUT_S)
        if not await lock.acquire(blocking=True, blocking_timeout=LOCK_WAIT_S, token=owner):
            return None
        written = 0
        try:
            while True:
                raw = await client.lrange(spool, 0, batch_rows - 1)
                if not raw:
                    break
                rows = [OfflineRow.from_json(item) for item in raw]
                await asyncio.to_thread(offline.write_rows, view, version, features, rows)
                await client.ltrim(spool, len(raw), -1)
                written += len(raw)
                if len(raw) < batch_rows:
                    break
        finally:
            await lock.release()
    except REDIS_DOWN as exc:
        raise RetryableError(f"Redis unavailable flushing offline rows: {exc}") from exc
    return written
