"""An event labelled more than once trains on its latest label, as known at the window's end."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from mlbus.featurestore import OfflineStore
from mlbus.training import LabelRow, load_dataset, write_labels
from tests.unit.test_training_views import HOUR_MS, T0, row, two_view_spec


@pytest.fixture
def offline(tmp_path: Path) -> OfflineStore:
    spec = two_view_spec()
    store = OfflineStore(tmp_path / "offline")
    store.write_rows(
        "card_limit",
        3,
        spec.view_features("card_limit"),
        [row("c1", "u1", T0 - HOUR_MS, {"credit_limit": 1.0})],
    )
    store.write_rows(
        "card_activity",
        1,
        spec.view_features("card_activity"),
        [row("c1", "tx1", T0, {"amount": 1.0}), row("c1", "tx2", T0 + 1, {"amount": 2.0})],
    )
    write_labels(
        store,
        "chargebacks",
        [
            LabelRow("c1", "tx1", T0 + HOUR_MS, "producer-1", False),
            LabelRow("c1", "tx2", T0 + HOUR_MS, "producer-2", True),
        ],
    )
    # a person corrects tx1 a day later; the log is append-only, a new file
    write_labels(store, "chargebacks", [LabelRow("c1", "tx1", T0 + 24 * HOUR_MS, "person", True)])
    return store


def test_a_later_label_of_an_event_replaces_the_earlier_one(offline: OfflineStore) -> None:
    data = load_dataset(two_view_spec(), offline)

    assert data.event_ids == ("tx1", "tx2")  # one row per event
    assert data.y.tolist() == ["true", "true"]


def test_a_correction_after_the_window_is_not_known_in_it(offline: OfflineStore) -> None:
    end = datetime.fromtimestamp((T0 + 2 * HOUR_MS) / 1000, UTC)

    data = load_dataset(two_view_spec(), offline, end=end)

    assert data.event_ids == ("tx1", "tx2")
    assert data.y.tolist() == ["false", "true"]
