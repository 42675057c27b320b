"""The example data generator: reproducible, valid against its contracts, drifting where asked."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlbus.example import GeneratedData, GenerationError, fraud_spec_path, generate, scenario_for
from mlbus.example._values import PatternSampler
from mlbus.spec import FieldSpec, ProjectSpec, Source, load_spec, parse_spec

N = 6000
K = 4000


@pytest.fixture(scope="module")
def spec() -> ProjectSpec:
    return load_spec(fraud_spec_path())


@pytest.fixture(scope="module")
def drifted(spec: ProjectSpec) -> GeneratedData:
    return generate(spec, N, drift_at=K, seed=11)


def contract_violations(source: Source, event: Mapping[str, Any]) -> list[str]:
    """Every rule of `source`'s contract that `event` breaks, checked the plain way."""
    contract = source.contract
    problems: list[str] = []
    if len(json.dumps(event, separators=(",", ":")).encode()) > contract.max_bytes:
        problems.append("too big")
    if contract.unknown_fields == "reject":
        problems.extend(f"unknown {key}" for key in event if key not in contract.fields)
    for name, rule in contract.fields.items():
        if name not in event:
            if rule.required:
                problems.append(f"{name} missing")
            continue
        value = event[name]
        if value is None:
            if not rule.nullable:
                problems.append(f"{name} null")
            continue
        problems.extend(f"{name}: {p}" for p in _value_problems(rule, value))
    return problems


def _value_problems(rule: FieldSpec, value: Any) -> list[str]:
    if rule.type == "bool":
        return [] if isinstance(value, bool) else ["not a bool"]
    if rule.type in ("int", "float"):
        ok_type = int if rule.type == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type):
            return [f"not {rule.type}"]
        out = []
        if rule.min is not None and value < rule.min:
            out.append("below min")
        if rule.max is not None and value > rule.max:
            out.append("above max")
        return out
    if not isinstance(value, str):
        return ["not a string"]
    if rule.type == "enum":
        return [] if value in (rule.values or ()) else [f"{value!r} not in enum"]
    if rule.type == "timestamp":
        parsed = datetime.fromisoformat(value)
        return [] if parsed.tzinfo is not None else ["naive time"]
    out = []
    if rule.pattern is not None and not re.fullmatch(rule.pattern, value):
        out.append(f"{value!r} does not match {rule.pattern}")
    if rule.min_length is not None and len(value) < rule.min_length:
        out.append("too short")
    if rule.max_length is not None and len(value) > rule.max_length:
        out.append("too long")
    return out


def labels_by_transaction(data: GeneratedData) -> dict[str, bool]:
    cb = data.sources["chargebacks"].columns
    return dict(zip(cb["transaction_id"], cb["is_fraud"], strict=True))  # type: ignore[arg-type]


def column(data: GeneratedData, source: str, name: str) -> list[Any]:
    return data.sources[source].columns[name]


# ── reproducibility ──────────────────────────────────────────────────────────


def test_same_seed_gives_byte_identical_files(spec: ProjectSpec, tmp_path: Path) -> None:
    a = generate(spec, 3000, drift_at=2000, seed=5).write_jsonl(tmp_path / "a")
    b = generate(spec, 3000, drift_at=2000, seed=5).write_jsonl(tmp_path / "b")
    assert set(a) == {"transactions", "chargebacks"}
    for name in a:
        assert a[name].read_bytes() == b[name].read_bytes()
        assert a[name].read_bytes()


def test_different_seed_gives_different_events(spec: ProjectSpec) -> None:
    a = generate(spec, 500, seed=1)
    b = generate(spec, 500, seed=2)
    assert column(a, "transactions", "amount") != column(b, "transactions", "amount")
    assert column(a, "transactions", "transaction_id") != column(
        b, "transactions", "transaction_id"
    )


def test_written_lines_are_the_events(drifted: GeneratedData, tmp_path: Path) -> None:
    paths = drifted.write_jsonl(tmp_path)
    lines = paths["transactions"].read_text().splitlines()
    assert len(lines) == N
    assert json.loads(lines[0]) == next(drifted.sources["transactions"].events())


# ── validity and realism ─────────────────────────────────────────────────────


def test_every_fraud_event_passes_its_contract(spec: ProjectSpec, drifted: GeneratedData) -> None:
    for name, events in drifted.sources.items():
        for event in events.events():
            assert contract_violations(spec.sources[name], event) == [], event


def test_scenario_is_fraud_for_the_example(spec: ProjectSpec, drifted: GeneratedData) -> None:
    assert scenario_for(spec) == "fraud"
    assert drifted.scenario == "fraud"
    assert drifted.counts() == {"transactions": N, "chargebacks": N}


def test_events_are_in_time_order_over_the_timeline(drifted: GeneratedData) -> None:
    for name in ("transactions", "chargebacks"):
        times = column(drifted, name, "ts")
        assert times == sorted(times)
    first = datetime.fromisoformat(column(drifted, "transactions", "ts")[0])
    last = datetime.fromisoformat(column(drifted, "transactions", "ts")[-1])
    assert 5 < (last - first).total_seconds() / 86400 <= 7.1


def test_every_transaction_gets_one_later_chargeback(drifted: GeneratedData) -> None:
    tx = drifted.sources["transactions"].columns
    cb = drifted.sources["chargebacks"].columns
    assert sorted(cb["transaction_id"]) == sorted(tx["transaction_id"])  # type: ignore[type-var]
    tx_time = dict(zip(tx["transaction_id"], tx["ts"], strict=True))
    tx_card = dict(zip(tx["transaction_id"], tx["card_id"], strict=True))
    for tid, ts, card, fraud, reason in zip(
        cb["transaction_id"],
        cb["ts"],
        cb["card_id"],
        cb["is_fraud"],
        cb["reason_code"],
        strict=True,
    ):
        assert str(ts) > str(tx_time[tid])
        assert card == tx_card[tid]
        assert (reason is None) == (not fraud)
    assert len(set(cb["chargeback_id"])) == N


def test_fraud_rate_is_realistic_and_bursts_exist(drifted: GeneratedData) -> None:
    assert drifted.label_rate_before is not None
    assert 0.015 < drifted.label_rate_before < 0.06
    cards = column(drifted, "transactions", "card_id")
    assert len(set(cards)) < N / 5  # cards come back


# ── drift ────────────────────────────────────────────────────────────────────


def test_nothing_changes_before_the_drift_point(spec: ProjectSpec, drifted: GeneratedData) -> None:
    clean = generate(spec, N, seed=11)
    for name, values in drifted.sources["transactions"].columns.items():
        assert values[:K] == clean.sources["transactions"].columns[name][:K], name
    assert (
        column(drifted, "transactions", "amount")[K:] != column(clean, "transactions", "amount")[K:]
    )
    assert labels_by_transaction(clean).keys() == labels_by_transaction(drifted).keys()
    before = column(drifted, "transactions", "transaction_id")[:K]
    clean_labels, drift_labels = labels_by_transaction(clean), labels_by_transaction(drifted)
    assert [clean_labels[t] for t in before] == [drift_labels[t] for t in before]


def test_covariate_drift_moves_amounts_and_countries(spec: ProjectSpec) -> None:
    data = generate(spec, N, drift_at=K, seed=3, drift_kind="covariate")
    amount = np.array(column(data, "transactions", "amount"))
    home = np.array(column(data, "transactions", "country")) == "US"
    assert np.median(amount[K:]) > 1.3 * np.median(amount[:K])
    assert home[K:].mean() < home[:K].mean() - 0.03
    clean = generate(spec, N, seed=3)
    clean_amount = np.array(column(clean, "transactions", "amount"))
    assert 0.85 < np.median(clean_amount[K:]) / np.median(clean_amount[:K]) < 1.15


def test_concept_drift_moves_fraud_between_channels_not_inputs(spec: ProjectSpec) -> None:
    data = generate(spec, N, drift_at=K, seed=3, drift_kind="concept")
    labels = labels_by_transaction(data)
    fraud = np.array([labels[t] for t in column(data, "transactions", "transaction_id")])
    channel = np.array(column(data, "transactions", "channel"))
    amount = np.array(column(data, "transactions", "amount"))
    before, after = np.arange(N) < K, np.arange(N) >= K
    online, pos = channel == "online", channel == "pos"
    assert fraud[before & online].mean() > 3 * fraud[after & online].mean()
    assert fraud[after & pos].mean() > 2 * fraud[before & pos].mean()
    assert 0.85 < np.median(amount[after]) / np.median(amount[before]) < 1.15


def test_drift_kind_both_moves_inputs_and_rule(spec: ProjectSpec, drifted: GeneratedData) -> None:
    assert drifted.drift_kind == "both"
    amount = np.array(column(drifted, "transactions", "amount"))
    assert np.median(amount[K:]) > 1.3 * np.median(amount[:K])
    assert drifted.label_rate_after is not None
    assert drifted.label_rate_after != drifted.label_rate_before


def test_concept_drift_defeats_a_model_trained_before_it(spec: ProjectSpec) -> None:
    """The promise behind the demo: retraining on post-drift data wins back accuracy."""
    ensemble = pytest.importorskip("sklearn.ensemble")
    metrics = pytest.importorskip("sklearn.metrics")
    n, k = 20_000, 12_000
    data = generate(spec, n, drift_at=k, seed=21, drift_kind="concept")
    x, y = _features(data)
    cut = k + (n - k) // 2

    def auc(train: slice, test: slice) -> float:
        model = ensemble.HistGradientBoostingClassifier(categorical_features=[1, 2, 3], max_iter=60)
        model.fit(x[train], y[train])
        return float(metrics.roc_auc_score(y[test], model.predict_proba(x[test])[:, 1]))

    before = auc(slice(0, k - 4000), slice(k - 4000, k))
    stale = auc(slice(0, k), slice(cut, n))
    retrained = auc(slice(k, cut), slice(cut, n))
    assert before > 0.8
    assert stale < before - 0.2
    assert retrained > stale + 0.2


def _features(data: GeneratedData) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Amount, categoricals, the card's recent count and usual amount: from the events alone."""
    tx = data.sources["transactions"].columns
    labels = labels_by_transaction(data)
    y = np.array([labels[str(tid)] for tid in tx["transaction_id"]])
    t = np.array(
        [datetime.fromisoformat(str(s)).timestamp() * 1000 for s in tx["ts"]], dtype=np.int64
    )
    ids = {c: i for i, c in enumerate(sorted(set(tx["card_id"])))}  # type: ignore[type-var]
    card = np.array([ids[c] for c in tx["card_id"]], dtype=np.int64)
    amount = np.array(tx["amount"], dtype=float)
    key = card * (1 << 42) + t
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    sums = np.concatenate(([0.0], np.cumsum(amount[order])))
    rank = np.empty(len(key), dtype=np.int64)
    rank[order] = np.arange(len(key))

    def window(ms: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        lo = np.searchsorted(sorted_key, key - ms + 1, "left")
        return rank + 1 - lo, sums[rank + 1] - sums[lo]

    def codes(name: str) -> np.ndarray[Any, Any]:
        values = sorted(set(tx[name]))  # type: ignore[type-var]
        return np.array([values.index(v) for v in tx[name]])

    count_10m, _ = window(600_000)
    count_7d, sum_7d = window(7 * 86_400_000)
    cols = [amount, codes("merchant_category"), codes("country"), codes("channel")]
    return np.column_stack([*cols, count_10m, sum_7d / count_7d]), y


# ── any other spec: contract-driven values ───────────────────────────────────

GENERIC = """
project: sensors
sources:
  readings:
    topic: plant.readings.v1
    entity: sensor
    event_time: at
    event_id: reading_id
    contract:
      version: 2
      unknown_fields: drop
      fields:
        reading_id: {type: int, min: 100}
        sensor: {type: string, pattern: "^[A-Z]{2}-[0-9]{3}$"}
        at: {type: timestamp}
        temperature: {type: float, min: -40, max: 125}
        pressure: {type: int, min: 900, max: 1100, required: false}
        mode: {type: enum, values: [idle, run, purge]}
        ok: {type: bool, nullable: true}
        note: {type: string, min_length: 3, max_length: 10, nullable: true, required: false}
        site: {type: string, pattern: "(north|south)-[a-f0-9]{4}"}
  faults:
    topic: plant.faults.v1
    kind: labels
    entity: sensor
    event_time: at
    event_id: fault_id
    labels: {source: readings, event_id_field: reading, label_field: failed}
    contract:
      version: 1
      fields:
        fault_id: {type: string, pattern: "^f[0-9]{8}$"}
        reading: {type: int}
        sensor: {type: string, pattern: "^[A-Z]{2}-[0-9]{3}$"}
        failed: {type: bool}
        at: {type: timestamp}
features:
  sensor_stats:
    entity: sensor
    source: readings
    ttl_s: 1d
    fields: [temperature, mode]
    aggregations:
      - {field: temperature, function: mean, windows: [10m, 1h]}
model:
  name: failure
  task: classification
  label: {source: faults, field: failed}
  features: [sensor_stats]
  metric: f1
"""


@pytest.fixture(scope="module")
def generic_spec() -> ProjectSpec:
    return parse_spec(GENERIC)


def test_generic_scenario_for_any_spec(generic_spec: ProjectSpec) -> None:
    assert scenario_for(generic_spec) == "generic"
    data = generate(generic_spec, 1500, drift_at=1000, seed=4)
    assert data.scenario == "generic"
    assert data.counts() == {"readings": 1500, "faults": 1500}
    for name, events in data.sources.items():
        for event in events.events():
            assert contract_violations(generic_spec.sources[name], event) == [], event
    readings = data.sources["readings"].columns
    assert sorted(column(data, "faults", "reading")) == sorted(readings["reading_id"])  # type: ignore[type-var]
    sent = list(data.sources["readings"].events())
    assert any("pressure" not in e for e in sent)
    assert any(e["ok"] is None for e in sent)


def test_generic_drift_moves_numbers_and_flips_labels(generic_spec: ProjectSpec) -> None:
    data = generate(generic_spec, 4000, drift_at=2000, seed=8)
    temperature = np.array(column(data, "readings", "temperature"), dtype=float)
    assert temperature[2000:].mean() > temperature[:2000].mean() + 10
    labels = dict(
        zip(column(data, "faults", "reading"), column(data, "faults", "failed"), strict=True)
    )
    failed = np.array([labels[r] for r in column(data, "readings", "reading_id")])
    hot_before = temperature[:2000] > np.median(temperature[:2000])
    hot_after = temperature[2000:] > np.median(temperature[2000:])
    assert failed[:2000][hot_before].mean() > failed[:2000][~hot_before].mean()
    assert failed[2000:][hot_after].mean() < failed[2000:][~hot_after].mean()


def test_generic_is_reproducible(generic_spec: ProjectSpec) -> None:
    a = generate(generic_spec, 300, seed=1)
    b = generate(generic_spec, 300, seed=1)
    assert list(a.sources["readings"].events()) == list(b.sources["readings"].events())


@pytest.mark.parametrize(
    "pattern",
    [r"^[A-Z]{2}$", r"[a-f0-9]{8}", r"(foo|bar)-\d+", r"\w{3,5}@example\.com", r"[^,]{4}x?"],
)
def test_pattern_sampler_matches(pattern: str) -> None:
    sampler = PatternSampler(FieldSpec(type="string", pattern=pattern), np.random.default_rng(0))
    for _ in range(200):
        assert re.fullmatch(pattern, sampler.sample())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"events": 0}, "at least 1 event"),
        ({"events": 10, "drift_at": 11}, "drift_at between 0 and 10"),
        ({"events": 10, "days": 0}, "at least 1 day"),
    ],
)
def test_bad_arguments_are_refused(spec: ProjectSpec, kwargs: dict[str, Any], message: str) -> None:
    events = kwargs.pop("events")
    with pytest.raises(GenerationError, match=message):
        generate(spec, events, **kwargs)
