"""The offline flusher after a Redis stall: its own orphaned spool lock does not hold the
offline store back until the lock expires.

Found by the soak (#25): Redis stopped for 5 s (SIGSTOP) while the flusher held the
spool's lock (or while its SET was in flight); the release timed out (or the SET's reply
was lost), so the lock stayed with a token nobody held. Every later flush waited for
"another flusher" and gave up, and no offline row was written for two minutes, until
the lock expired.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlbus.errors import RetryableError
from mlbus.example import fraud_spec_path
from mlbus.features._flusher import OfflineFlusher
from mlbus.features._processor import bind_views
from mlbus.featurestore import OfflineRow, OfflineStore, OnlineStore
from mlbus.featurestore._spool import LOCK_WAIT_S
from mlbus.runtime import EmbeddedRedis
from mlbus.spec import load_spec

pytestmark = pytest.mark.integration

VIEW, VERSION = "card_activity", 1


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of its own: this test stops it."""
    with EmbeddedRedis(tmp_path / "logs") as running:
        yield running


def row(i: int) -> OfflineRow:
    return OfflineRow(
        entity_id=f"card_{i:06d}",
        event_id=str(uuid.uuid4()),
        event_time_ms=1_790_000_000_000 + i,
        feature_time_ms=1_790_000_000_000 + i,
        processed_at_ms=1_790_000_000_000 + i,
        values={"amount": 1.0 + i},
    )


async def test_a_lock_left_by_a_stalled_redis_does_not_stop_the_flush(
    redis: EmbeddedRedis, tmp_path: Path
) -> None:
    spec = load_spec(fraud_spec_path())
    (view,) = (v for v in bind_views(spec, allowed_lateness_s=3600) if v.name == VIEW)
    pid = redis.pid
    assert pid is not None

    class StallingStore(OfflineStore):
        """Redis stops while the first batch is written: the trim and the release that
        follow time out, with the lock held."""

        stalled = False

        def write_rows(self, *args: Any, **kwargs: Any) -> list[str]:
            if not self.stalled:
                self.stalled = True
                os.kill(pid, signal.SIGSTOP)
            return super().write_rows(*args, **kwargs)

    offline = StallingStore(tmp_path / "offline")
    online = OnlineStore.from_url(redis.url, key_prefix="mlbus:stall", timeout_s=0.5)
    flusher = OfflineFlusher([view], online, offline, flush_rows=1000, interval_s=0.1)
    try:
        spool = online.keys.spool(VIEW, VERSION)
        await online.client.rpush(spool, *(row(i).to_json() for i in range(5)))
        try:
            with pytest.raises(RetryableError):
                await flusher.flush()
        finally:
            os.kill(pid, signal.SIGCONT)
        lock = online.keys.spool_lock(VIEW, VERSION)
        assert await online.client.exists(lock)  # the orphan the stall left
        await online.client.rpush(spool, *(row(i).to_json() for i in range(5, 10)))
        async with asyncio.timeout(LOCK_WAIT_S - 2):  # no waiting for "another flusher"
            written = await flusher.flush()
        assert written >= 5  # the new rows (and the first again if their trim was lost)
        assert await online.client.llen(spool) == 0
        assert not await online.client.exists(lock)
        table = offline.read(offline.files(VIEW, VERSION))  # de-duplicated by event id
        assert table.num_rows == 10
    finally:
        await online.aclose()
