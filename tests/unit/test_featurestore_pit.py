"""Point-in-time joins: no later value leaks into a training row; labels before any
value get nulls; replayed rows and same-time rows resolve deterministically."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from mlbus.errors import InvalidInput
from mlbus.featurestore import OfflineRow, feature_schema, point_in_time_join, rows_to_table
from mlbus.featurestore._online import decode_value, encode_value
from mlbus.spec import FeatureDef

DEFS = [
    FeatureDef(view="v", name="amount", dtype="float", source_field="amount"),
    FeatureDef(
        view="v",
        name="count_1h",
        dtype="int",
        source_field=None,
        function="count",
        window="1h",
        window_s=3600,
    ),
]
T0 = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1000)
MIN = 60_000


def rows(*spec: tuple[str, str, int, float, int]) -> pa.Table:
    """(entity, event id, minute, amount, count) → an offline table (processed in order)."""
    built = [
        OfflineRow(
            entity,
            eid,
            T0 + minute * MIN,
            T0 + minute * MIN,
            T0 + i,
            {"amount": amount, "count_1h": count},
        )
        for i, (entity, eid, minute, amount, count) in enumerate(spec)
    ]
    return rows_to_table(built, 1, feature_schema(DEFS))


def at(minute: float) -> datetime:
    return datetime.fromtimestamp((T0 + minute * MIN) / 1000, UTC)


FEATURES = rows(
    ("a", "a1", 10, 5.0, 1),
    ("a", "a2", 20, 7.0, 2),
    ("a", "a3", 30, 900.0, 3),  # a later, very telling value
    ("b", "b1", 15, 1.0, 1),
)


def test_a_label_never_sees_a_later_feature_value() -> None:
    labels = pa.table(
        {
            "entity_id": ["a", "a", "b"],
            "label_time": [at(25), at(29.99), at(40)],
            "label": [0, 1, 0],
        }
    )
    out = point_in_time_join(FEATURES, labels, ["amount", "count_1h"]).to_pylist()
    assert [r["amount"] for r in out] == [7.0, 7.0, 1.0]
    assert [r["count_1h"] for r in out] == [2, 2, 1]
    assert all(r["feature_time"] <= r["as_of"] for r in out)


def test_labels_before_any_feature_value_get_nulls_not_later_values() -> None:
    labels = pa.table(
        {
            "entity_id": ["a", "b", "zzz"],
            "label_time": [at(9), at(14.5), at(60)],
            "label": [1, 1, 1],
        }
    )
    out = point_in_time_join(FEATURES, labels, ["amount", "count_1h"]).to_pylist()
    assert [(r["amount"], r["count_1h"], r["feature_time"]) for r in out] == [
        (None, None, None)
    ] * 3


def test_a_label_by_event_id_uses_the_row_of_that_event_and_nothing_later() -> None:
    labels = pa.table(
        {"entity_id": ["a", "a", "a"], "event_id": ["a2", "a1", "nope"], "y": [1, 0, 1]}
    )
    out = point_in_time_join(FEATURES, labels, ["amount"]).to_pylist()
    assert [r["amount"] for r in out] == [7.0, 5.0, None]
    assert [r["y"] for r in out] == [1, 0, 1]  # labels keep their order


def test_replayed_rows_and_rows_at_the_same_time_resolve_to_the_last_processed() -> None:
    replayed = rows(
        ("a", "a1", 10, 5.0, 1),
        ("a", "a1", 10, 5.0, 1),  # the same event written twice (crash before trim)
        ("a", "late", 10, 6.0, 2),  # a late event: same feature time, processed after
    )
    labels = pa.table({"entity_id": ["a"], "label_time": [at(11)]})
    out = point_in_time_join(replayed, labels, ["amount", "count_1h"]).to_pylist()
    assert len(out) == 1
    assert (out[0]["amount"], out[0]["count_1h"]) == (6.0, 2)


def test_labels_need_an_entity_and_a_time_or_an_event() -> None:
    with pytest.raises(InvalidInput):
        point_in_time_join(FEATURES, pa.table({"entity_id": ["a"]}), ["amount"])


@pytest.mark.parametrize("value", [None, True, False, 0, -7, 2**40, 1.5, -0.0, 1e-300, "", "é x"])
def test_online_values_round_trip_with_their_type(value: object) -> None:
    decoded = decode_value(encode_value(value))  # type: ignore[arg-type]
    assert decoded == value
    assert type(decoded) is type(value)
