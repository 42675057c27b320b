"""The online store without I/O: decoding hashes as Redis returns them, and choosing a
single-Redis or a Redis Cluster client from the settings (clients connect lazily)."""

from __future__ import annotations

import itertools
import math

import pytest
import redis.asyncio as aioredis
from hypothesis import example, given
from hypothesis import strategies as st
from redis.asyncio.cluster import RedisCluster

from mlbus.config import MlbusSettings, RedisSettings, load_settings
from mlbus.errors import ConfigError
from mlbus.events import Scalar
from mlbus.featurestore import OnlineStore, decode_value, encode_value, value_at
from mlbus.featurestore._online import COUNTED_FIELD, EVENT_ID_FIELD, TS_FIELD, encode_steps

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
feature_names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12
).filter(lambda name: not name.startswith("__"))


def stored_hash(values: dict[str, Scalar], event_ms: int) -> dict[bytes, bytes]:
    """What HGETALL returns for a hash `stage_write` wrote."""
    raw = {name.encode(): encode_value(value) for name, value in values.items()}
    raw[TS_FIELD] = b"%d" % event_ms
    raw[EVENT_ID_FIELD] = b"some-event"
    return raw


@given(values=st.dictionaries(feature_names, scalars, max_size=25))
def test_a_stored_hash_decodes_to_the_values_written(values: dict[str, Scalar]) -> None:
    store = OnlineStore(aioredis.Redis())
    row = store._decode("v", 1, "e1", stored_hash(values, 1_000_000), None, 1_010_500)
    assert row.values == values
    assert all(type(row.values[k]) is type(v) for k, v in values.items())
    assert row.event_time_ms == 1_000_000
    assert row.age_s == pytest.approx(10.5)
    # the same hash read field by field (HMGET) gives the same values
    names = [name.encode() for name in values]
    raw = stored_hash(values, 1_000_000)
    by_field = store._decode(
        "v", 1, "e1", [raw[TS_FIELD], None, *(raw[n] for n in names)], names, 1_010_500
    )
    assert by_field.values == values


def test_an_absent_hash_is_not_found_and_meta_fields_are_not_features() -> None:
    store = OnlineStore(aioredis.Redis())
    assert not store._decode("v", 1, "e1", {}, None, 0).found
    raw = stored_hash({"a": 1}, 5)
    raw[COUNTED_FIELD] = b"7"
    row = store._decode("v", 1, "e1", raw, None, 1000)
    assert row.values == {"a": 1}  # no __ts / __eid / __n among the values, twice (cached)
    assert row.counted == 7
    assert store._decode("v", 1, "e1", stored_hash({"b": 2}, 5), None, 1000).values == {"b": 2}


def test_an_aggregate_is_read_at_the_time_of_the_read() -> None:
    """Its steps are evaluated at the read's time: a count falls as its window passes;
    at or before the latest event the steps are not exact, and the row says so."""
    store = OnlineStore(aioredis.Redis())
    raw = stored_hash({"amount": 3.5}, 10_000)
    raw[b"count_1m"] = encode_steps([[60_000, 2], [70_000, 1], [None, 0]])
    raw[COUNTED_FIELD] = b"2"
    for at_ms, count in ((10_001, 2), (59_999, 2), (60_000, 1), (70_000, 0)):
        row = store._decode("v", 1, "e1", raw, None, at_ms)
        assert row.values == {"amount": 3.5, "count_1m": count}
        assert row.exact
    assert not store._decode("v", 1, "e1", raw, None, 10_000).exact
    names = [b"count_1m"]
    by_field = store._decode("v", 1, "e1", [b"10000", b"2", raw[b"count_1m"]], names, 65_000)
    assert by_field.values == {"count_1m": 1}
    assert by_field.counted == 2


async def test_cluster_settings_build_a_cluster_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLBUS_REDIS_URL", "redis://127.0.0.1:7000/0")
    monkeypatch.setenv("MLBUS_REDIS_CLUSTER", "true")
    settings = load_settings(MlbusSettings)
    assert settings.redis.cluster is True
    store = OnlineStore.from_settings(settings.redis)
    assert store.is_cluster
    assert isinstance(store.client, RedisCluster)
    await store.aclose()

    single = OnlineStore.from_settings(RedisSettings(url="redis://127.0.0.1:7000/3", cluster=False))
    assert not single.is_cluster
    await single.aclose()


def test_a_cluster_url_with_another_db_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"Redis Cluster URL .*db"):
        OnlineStore.from_url("redis://127.0.0.1:7000/2", cluster=True)


def test_a_bad_cluster_flag_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLBUS_REDIS_CLUSTER", "sometimes")
    with pytest.raises(ConfigError, match="MLBUS_REDIS_CLUSTER"):
        load_settings(MlbusSettings)


_step_values = st.one_of(
    st.none(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)


@given(
    values=st.lists(_step_values, min_size=1, max_size=12),
    gaps=st.lists(st.integers(min_value=1, max_value=10**7), min_size=12, max_size=12),
    start=st.integers(min_value=0, max_value=2**45),
    at=st.integers(min_value=0, max_value=2**46),
)
@example(values=[math.nan, None], gaps=[1] * 12, start=1, at=0)  # a nan step before a string
def test_stored_steps_read_back_as_value_at_at_any_time(
    values: list[Scalar], gaps: list[int], start: int, at: int
) -> None:
    """The compact numeric encoding (and the JSON one for other values) reads the value
    the step function takes, with its type: int stays int, float stays float, None."""
    untils = list(itertools.accumulate(gaps, initial=start))[: len(values) - 1]
    steps = [[u, v] for u, v in zip(untils, values[:-1], strict=True)] + [[None, values[-1]]]
    data = encode_steps(steps)
    assert data[:1] == b"x"
    expected, got = value_at(steps, at), decode_value(data, at)
    assert type(got) is type(expected)
    assert got == expected or (got != got and expected != expected)  # nan == nan
    mixed = [*steps[:-1], [None, "FR"]]  # a `last` of a string: JSON, same answer
    assert encode_steps(mixed)[:1] == b"w"
    expected, got = value_at(mixed, at), decode_value(encode_steps(mixed), at)
    assert got == expected or (got != got and expected != expected)  # nan == nan
