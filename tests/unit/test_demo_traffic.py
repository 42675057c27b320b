"""The demo's traffic: stored rows counted once, and payments scored in card order."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mlbus.demo._scenario import Payment
from mlbus.demo._traffic import CausalOrder, stored_rows
from mlbus.example import fraud_spec_path
from mlbus.featurestore import OfflineRow, OfflineStore
from mlbus.spec import load_spec
from mlbus.training import LabelRow, write_labels


def test_redelivered_rows_do_not_count_twice(tmp_path: Path) -> None:
    spec = load_spec(fraud_spec_path())
    view = next(v for v in spec.model_views() if spec.features[v].source == spec.training_source())
    features = spec.view_features(view)
    offline = OfflineStore(tmp_path / "offline")
    base = datetime(2025, 6, 1, tzinfo=UTC)
    rows, labels = [], []
    for i in range(10):
        ms = int((base + timedelta(minutes=i)).timestamp() * 1000)
        values = {f.name: 1.0 if f.kind == "numeric" else (f.values or ("x",))[0] for f in features}
        rows.append(OfflineRow(f"card_{i}", f"tx{i}", ms, ms, ms, values))
        labels.append(LabelRow(f"card_{i}", f"tx{i}", ms, f"cb{i}", i % 2 == 0))
    # At-least-once: the last three payments and two labels are written again.
    offline.write_rows(view, spec.features[view].version, features, rows)
    offline.write_rows(view, spec.features[view].version, features, rows[-3:])
    write_labels(offline, spec.model.label.source, labels[:8])
    write_labels(offline, spec.model.label.source, labels[6:8])
    assert stored_rows(spec, str(offline.root)) == (10, 8)


def _payment(index: int, card: str) -> Payment:
    return Payment(
        index=index,
        event={},
        event_id=f"tx{index}",
        entity_id=card,
        event_time=datetime(2025, 6, 1, tzinfo=UTC) + timedelta(minutes=index),
        request_fields={},
        label=None,
        is_fraud=None,
    )


class FakeStore:
    """What `CausalOrder` reads: each card's last stored event id."""

    def __init__(self) -> None:
        self.stored: dict[str, str] = {}
        self.reads = 0

    async def last_event_ids(
        self, view: str, version: int, entity_ids: list[str]
    ) -> dict[str, str | None]:
        self.reads += 1
        return {e: self.stored.get(e) for e in entity_ids}


async def test_a_payment_is_scored_only_after_its_cards_previous_one_is_stored() -> None:
    store = FakeStore()
    order = CausalOrder(store, "v", 1, timeout_s=5.0)  # type: ignore[arg-type]
    first, other, second = _payment(0, "a"), _payment(1, "b"), _payment(2, "a")
    await order.turn(first)
    await order.turn(other)  # another card never waits
    waiting = asyncio.create_task(order.turn(second))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # the previous payment of "a" is not even sent
    order.sent(first)
    await asyncio.sleep(0.05)
    assert not waiting.done()  # sent, not yet served
    store.stored["a"] = first.event_id
    await asyncio.wait_for(waiting, 1.0)
    assert (order.waited, order.timed_out) == (1, 0)
    await order.aclose()


async def test_a_wait_that_never_ends_gives_up_and_is_counted() -> None:
    order = CausalOrder(FakeStore(), "v", 1, timeout_s=0.1)  # type: ignore[arg-type]
    first, second = _payment(0, "a"), _payment(1, "a")
    await order.turn(first)
    order.sent(first)  # sent, but never stored (rejected by the contract, say)
    await asyncio.wait_for(order.turn(second), 2.0)
    assert (order.waited, order.timed_out) == (1, 1)
    await order.aclose()
