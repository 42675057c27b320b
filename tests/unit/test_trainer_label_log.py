"""The trainer's label log never lets its consumer commit past labels it has not written.

A flush is the consumer's commit hook (retried while the offline store is down) and
also runs before each training run (#25: labels are flushed at most every few seconds,
so a run must not miss the latest ones).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mlbus.bus import Received
from mlbus.events import Event, IngestValidated
from mlbus.example import fraud_spec_path
from mlbus.featurestore import OfflineStore
from mlbus.spec import load_spec
from mlbus.trainer import TrainerSettings
from mlbus.trainer import _labels as label_log
from mlbus.training import LabelRow


def _label(n: int) -> Received[Event]:
    event = IngestValidated(
        source="chargebacks",
        contract_version=1,
        entity_id=f"card-{n}",
        event_id=f"cb-{n}",
        event_time=datetime(2026, 12, 1, tzinfo=UTC),
        payload={"chargeback_id": f"cb-{n}", "transaction_id": f"tx-{n}", "is_fraud": True},
        source_topic="payments.chargebacks.v1",
        source_partition=0,
        source_offset=n,
    )
    return Received(event, "mlbus.ingest.validated.v1", 0, n, None, (), 0)


class _Writes:
    """Stands in for `write_labels`: records what was written; can fail or block once."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.fail_next: BaseException | None = None
        self.block_next = False
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, offline: OfflineStore, source: str, rows: Sequence[LabelRow]) -> list[str]:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        if self.block_next:
            self.block_next = False
            self.started.set()
            assert self.release.wait(10)
        self.written.extend(row.label_event_id for row in rows)
        return []


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> _Writes:
    fake = _Writes()
    monkeypatch.setattr(label_log, "write_labels", fake)
    return fake


def _log(tmp_path: Path) -> label_log.LabelLog:
    settings = TrainerSettings(offline_url=str(tmp_path / "offline"))
    return label_log.LabelLog(settings, load_spec(fraud_spec_path()))


async def test_labels_a_failed_write_did_not_write_are_written_by_the_retry(
    tmp_path: Path, writes: _Writes
) -> None:
    log = _log(tmp_path)
    for n in range(3):
        await log.on_validated(_label(n))
    writes.fail_next = ConnectionError("the object store is down")
    with pytest.raises(ConnectionError):
        await log.flush()
    await log.flush()  # the consumer's retry of its commit-time work
    assert sorted(writes.written) == ["cb-0", "cb-1", "cb-2"]


async def test_a_flush_waits_for_a_write_in_progress(tmp_path: Path, writes: _Writes) -> None:
    """A commit that returned while a run's flush was still writing would commit the
    offsets of labels not yet on disk."""
    log = _log(tmp_path)
    await log.on_validated(_label(0))
    writes.block_next = True
    first = asyncio.create_task(log.flush())  # before a run
    assert await asyncio.to_thread(writes.started.wait, 10)
    await log.on_validated(_label(1))
    second = asyncio.create_task(log.flush())  # the consumer's commit
    await asyncio.sleep(0.1)
    assert not second.done(), "the commit's flush returned while cb-0 was still being written"
    writes.release.set()
    await asyncio.gather(first, second)
    assert writes.written == ["cb-0", "cb-1"]
