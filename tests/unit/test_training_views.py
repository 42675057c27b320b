"""A model reading two feature views, one of them computed from another source.

The labelled event (a payment) fixes each training row's time; the second view
(card limits, from its own source) must be read as of that time — never a
later limit, and a card without a known limit yet lacks features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlbus.example import fraud_spec_path
from mlbus.featurestore import OfflineRow, OfflineStore
from mlbus.spec import ProjectSpec, load_spec
from mlbus.training import LabelRow, load_dataset, write_labels

HOUR_MS = 3_600_000
T0 = 1_748_736_000_000  # 2025-06-01


def two_view_spec() -> ProjectSpec:
    doc: dict[str, Any] = load_spec(fraud_spec_path()).model_dump(mode="json")
    doc["sources"]["limits"] = {
        "topic": "cards.limits.v1",
        "kind": "data",
        "entity": "card_id",
        "event_time": "ts",
        "event_id": "update_id",
        "contract": {
            "version": 1,
            "fields": {
                "update_id": {"type": "string"},
                "card_id": {"type": "string"},
                "credit_limit": {"type": "float"},
                "ts": {"type": "timestamp"},
            },
        },
    }
    # Listed first on purpose: the labelled source's view must still place the rows.
    doc["features"] = {
        "card_limit": {
            "entity": "card_id",
            "source": "limits",
            "version": 3,
            "ttl_s": "30d",
            "fields": ["credit_limit"],
        },
        "card_activity": {
            "entity": "card_id",
            "source": "transactions",
            "version": 1,
            "ttl_s": "7d",
            "fields": ["amount"],
        },
    }
    doc["model"]["features"] = ["card_limit", "card_activity"]
    doc["model"]["min_rows"] = 1
    doc["drift"]["features"] = {}
    doc["serving"]["defaults"] = {"card_limit.credit_limit": 0.0, "card_activity.amount": 0.0}
    return ProjectSpec.model_validate(doc)


def row(card: str, event_id: str, ms: int, values: dict[str, Any]) -> OfflineRow:
    return OfflineRow(card, event_id, ms, ms, ms, values)


@pytest.fixture
def offline(tmp_path: Path) -> OfflineStore:
    return OfflineStore(tmp_path / "offline")


def test_the_second_view_is_read_as_of_the_labelled_event_never_later(
    offline: OfflineStore,
) -> None:
    spec = two_view_spec()
    limit = spec.view_features("card_limit")
    activity = spec.view_features("card_activity")
    offline.write_rows(
        "card_limit",
        3,
        limit,
        [
            row("card_000001", "u1", T0 - HOUR_MS, {"credit_limit": 1000.0}),
            row("card_000001", "u2", T0 + HOUR_MS, {"credit_limit": 5000.0}),  # after the payment
            row("card_000002", "u3", T0 + 2 * HOUR_MS, {"credit_limit": 700.0}),  # only later
        ],
    )
    offline.write_rows(
        "card_activity",
        1,
        activity,
        [
            row("card_000001", "tx1", T0, {"amount": 12.5}),
            row("card_000002", "tx2", T0, {"amount": 40.0}),
        ],
    )
    write_labels(
        offline,
        "chargebacks",
        [
            # Labels are known days later: their own time must not move the join.
            LabelRow("card_000001", "tx1", T0 + 48 * HOUR_MS, "cb1", True),
            LabelRow("card_000002", "tx2", T0 + 48 * HOUR_MS, "cb2", False),
        ],
    )

    data = load_dataset(spec, offline)

    assert len(data) == 1
    assert data.raw["card_limit.credit_limit"] == [1000.0]
    assert data.raw["card_activity.amount"] == [12.5]
    assert data.dropped_without_features == 1  # card_000002 had no limit known at T0
    assert data.times_ms.tolist() == [T0]


def test_the_fingerprint_covers_both_views(offline: OfflineStore) -> None:
    spec = two_view_spec()
    offline.write_rows(
        "card_activity",
        1,
        spec.view_features("card_activity"),
        [row("c", "tx1", T0, {"amount": 1.0})],
    )
    offline.write_rows(
        "card_limit",
        3,
        spec.view_features("card_limit"),
        [row("c", "u1", T0 - HOUR_MS, {"credit_limit": 1.0})],
    )
    write_labels(offline, "chargebacks", [LabelRow("c", "tx1", T0 + HOUR_MS, "cb1", True)])
    before = load_dataset(spec, offline).fingerprint

    offline.write_rows(
        "card_limit",
        3,
        spec.view_features("card_limit"),
        [row("c", "u2", T0 - 2 * HOUR_MS, {"credit_limit": 2.0})],
    )

    after = load_dataset(spec, offline)
    assert after.fingerprint != before
    assert any("card_limit" in f for f in after.files)
    assert any("card_activity" in f for f in after.files)
