"""The project spec: the example loads, names resolve, every error says file, line, path, what."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlbus.errors import ConfigError
from mlbus.example import fraud_spec_path
from mlbus.spec import (
    ProjectSpec,
    SpecError,
    duration_label,
    format_duration,
    load_spec,
    parse_duration,
    parse_spec,
    parse_timestamp,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "fraud" / "mlbus.yaml"


@pytest.fixture(scope="module")
def text() -> str:
    return EXAMPLE.read_text()


@pytest.fixture(scope="module")
def spec() -> ProjectSpec:
    return load_spec(EXAMPLE)


def error_for(text: str) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_spec(text, filename="mlbus.yaml")
    return caught.value


def edited(text: str, old: str, new: str) -> str:
    assert old in text, f"test edit target not found: {old!r}"
    return text.replace(old, new, 1)


# ── the example ──────────────────────────────────────────────────────────────


def test_example_loads_with_both_sources_and_a_label_link(spec: ProjectSpec) -> None:
    assert set(spec.sources) == {"transactions", "chargebacks"}
    assert spec.data_sources().keys() == {"transactions"}
    chargebacks = spec.sources["chargebacks"]
    assert chargebacks.labels is not None
    assert chargebacks.labels.source == "transactions"
    assert spec.topics() == {
        "payments.transactions.v1": "transactions",
        "payments.chargebacks.v1": "chargebacks",
    }
    assert spec.training_source() == "transactions"
    assert spec.model_entity() == "card_id"


def test_packaged_fraud_spec_is_the_example(text: str) -> None:
    assert fraud_spec_path().read_text() == text


def test_feature_names_follow_one_rule(spec: ProjectSpec) -> None:
    names = spec.features["card_activity"].feature_names()
    assert names[:4] == ("amount", "merchant_category", "country", "channel")
    for expected in ("count_10m", "count_24h", "amount_sum_1h", "amount_mean_7d"):
        assert expected in names
    assert "country_distinct_count_24h" in names
    refs = [f.ref for f in spec.model_features()]
    assert refs == [f"card_activity.{name}" for name in names]


def test_feature_defs_carry_types_windows_and_kinds(spec: ProjectSpec) -> None:
    amount_sum = spec.feature("card_activity.amount_sum_1h")
    assert (amount_sum.function, amount_sum.window_s, amount_sum.kind) == ("sum", 3600, "numeric")
    country = spec.feature("card_activity.country")
    assert country.kind == "categorical"
    assert country.values is not None
    assert "US" in country.values
    assert spec.feature("card_activity.count_10m").dtype == "int"
    assert spec.features["card_activity"].windows_s() == (600, 3600, 86400, 604800)
    with pytest.raises(KeyError):
        spec.feature("card_activity.nope")


def test_drift_tests_per_feature_with_override(spec: ProjectSpec) -> None:
    assert spec.drift.tests_for(spec.feature("card_activity.count_10m")) == ("psi",)
    assert spec.drift.tests_for(spec.feature("card_activity.amount")) == ("psi", "ks")
    assert spec.drift.tests_for(spec.feature("card_activity.channel")) == ("jensen_shannon",)


def test_durations_are_parsed_into_seconds(spec: ProjectSpec) -> None:
    contract = spec.sources["transactions"].contract
    assert (contract.allowed_skew_s, contract.max_lateness_s) == (300, 30 * 86400)
    assert spec.features["card_activity"].ttl_s == 7 * 86400
    assert spec.model.evaluation_window_s == 86400


def test_the_replay_horizon_covers_the_longest_ttl_and_window_plus_a_day(
    text: str, spec: ProjectSpec
) -> None:
    # card_activity: ttl 7d, count_7d; an entity's values live 7 d past its last event
    assert spec.replay_horizon_s() == (7 + 7 + 1) * 86400
    shorter = parse_spec(edited(text, "windows: [7d]", "windows: [2d]"), filename="mlbus.yaml")
    assert shorter.replay_horizon_s() == (7 + 2 + 1) * 86400


def test_drift_phases_keep_a_wall_clock_named_by_its_iana_zone(
    spec: ProjectSpec, text: str
) -> None:
    assert spec.drift.timezone == "UTC"  # the example's rhythm keeps UTC hours
    unset = edited(text, "  timezone: UTC ", "  # timezone: UTC ")
    assert parse_spec(unset).drift.timezone == "UTC"  # the default
    berlin = edited(text, "  timezone: UTC ", "  timezone: Europe/Berlin ")
    assert parse_spec(berlin).drift.timezone == "Europe/Berlin"
    err = error_for(edited(text, "  timezone: UTC ", "  timezone: CEST+1 "))
    assert "drift.timezone: unknown time zone 'CEST+1'" in str(err)
    assert "expected an IANA name such as" in str(err)


def test_drift_phases_are_hours_unless_the_spec_or_the_data_says_finer(
    spec: ProjectSpec, text: str
) -> None:
    assert spec.drift.phase_minutes == "auto"
    halves = edited(text, "  phase_minutes: auto ", "  phase_minutes: 30 ")
    assert parse_spec(halves).drift.phase_minutes == 30
    err = error_for(edited(text, "  phase_minutes: auto ", "  phase_minutes: 20 "))
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "phase_minutes:" in row)
    assert f"mlbus.yaml:{line}: drift.phase_minutes: expected 'auto', 60, 30 or 15, got 20" in str(
        err
    )


def test_gates_compare_in_the_metric_direction(spec: ProjectSpec) -> None:
    model = spec.model
    assert model.gate_failures({"auc": 0.9}, {"auc": 0.8}) == []
    assert any("min_improvement" in r for r in model.gate_failures({"auc": 0.802}, {"auc": 0.8}))
    assert any("at least 0.7" in r for r in model.gate_failures({"auc": 0.65}))


def test_promote_to_defaults_to_champion_and_canary_needs_canary_traffic(
    spec: ProjectSpec, text: str
) -> None:
    assert spec.model.gates.promote_to == "champion"
    canary = edited(text, "  gates:\n", "  gates:\n    promote_to: canary\n")
    assert parse_spec(canary).model.gates.promote_to == "canary"
    silent = edited(canary, "  canary_weight: 0.1\n", "  canary_weight: 0.0\n")
    err = error_for(silent)
    assert "canary_weight" in str(err)
    assert "promote_to" in str(err)


def test_serving_model_defaults_to_the_model_name(text: str) -> None:
    without = edited(text, "serving:\n  model: fraud_detector\n", "serving:\n")
    assert parse_spec(without).serving.model == "fraud_detector"


def test_fingerprint_is_stable_and_sensitive(spec: ProjectSpec, text: str) -> None:
    assert spec.fingerprint() == load_spec(EXAMPLE).fingerprint()
    changed = parse_spec(edited(text, "  threshold: 0.5", "  threshold: 0.6"))
    assert changed.fingerprint() != spec.fingerprint()


# ── error messages: file, line, path, expectation, given value ──────────────


def test_wrong_number_names_file_line_path_expectation_and_value(text: str) -> None:
    err = error_for(edited(text, "          min: 0.01\n", "          min: abc\n"))
    line = text.splitlines().index("          min: 0.01") + 1
    assert str(err) == (
        f"mlbus.yaml:{line}: sources.transactions.contract.fields.amount.min: "
        "expected a number, got 'abc'"
    )
    assert isinstance(err, ConfigError)


def test_unknown_key_lists_allowed_keys_and_suggests(text: str) -> None:
    err = error_for(edited(text, "    ttl_s: 7d", "    ttl: 7d"))
    message = str(err)
    assert "features.card_activity.ttl: unknown field 'ttl'" in message
    assert "did you mean 'ttl_s'?" in message
    assert "features.card_activity.ttl_s: required field is missing" in message
    assert message.startswith("invalid spec mlbus.yaml (2 problems):")


def test_bad_literal_lists_choices(text: str) -> None:
    err = error_for(edited(text, "    kind: labels", "    kind: label"))
    assert "sources.chargebacks.kind: expected 'data' or 'labels', got 'label'" in str(err)


def test_bad_duration_names_the_window_by_index(text: str) -> None:
    err = error_for(edited(text, "windows: [10m, 1h, 24h]", "windows: [10m, 1x, 24h]"))
    assert "features.card_activity.aggregations[0].windows[1]: expected a duration" in str(err)
    assert "got '1x'" in str(err)


def test_window_longer_than_ttl_is_refused(text: str) -> None:
    err = error_for(edited(text, "windows: [7d]", "windows: [8d]"))
    assert "aggregations[2].windows[0]: expected a window no longer than ttl_s" in str(err)


def test_yaml_booleans_get_a_quoting_hint(text: str) -> None:
    err = error_for(edited(text, '["US", "CA",', "[US, NO,"))
    assert "fields.country.values[1]: expected a string, got False" in str(err)
    assert "quote the value" in str(err)


def test_field_rules_must_fit_the_type(text: str) -> None:
    err = error_for(edited(text, '          pattern: "^card_[0-9]{6}$"\n', "          min: 3\n"))
    assert "fields.card_id.min: expected only on int or float fields, got it on string" in str(err)


def test_union_members_merge_into_one_expectation(text: str) -> None:
    err = error_for(edited(text, "    card_activity.amount: 0.0", "    card_activity.amount: [1]"))
    assert str(err).endswith(
        "serving.defaults['card_activity.amount']: expected true or false, a whole number, "
        "a number or a string, got a list"
    )


def test_bad_mapping_key_says_it_is_the_key(text: str) -> None:
    err = error_for(edited(text, "      auc: 0.7 ", "      aucc: 0.7 "))
    assert "model.gates.minimums.aucc: invalid key: expected 'auc', 'log_loss'" in str(err)


def test_negative_bound_on_positive_field(text: str) -> None:
    err = error_for(edited(text, "  holdout_fraction: 0.2", "  holdout_fraction: 1.5"))
    assert "model.holdout_fraction: expected a value < 1.0, got 1.5" in str(err)


# ── cross references ─────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "    entity: card_id\n    event_time: ts\n    event_id: transaction_id",
            "    entity: card\n    event_time: ts\n    event_id: transaction_id",
            "sources.transactions.entity: expected one of the contract's fields",
        ),
        (
            "    event_time: ts\n    event_id: transaction_id",
            "    event_time: amount\n    event_id: transaction_id",
            (
                "sources.transactions.event_time: expected a field of type 'timestamp', "
                "got 'amount' of type float"
            ),
        ),
        (
            "      source: transactions\n      event_id_field",
            "      source: chargebacks\n      event_id_field",
            (
                "sources.chargebacks.labels.source: expected a data source, "
                "got the labels source 'chargebacks'"
            ),
        ),
        (
            "    source: transactions\n    version: 1\n    ttl_s",
            "    source: payments\n    version: 1\n    ttl_s",
            "features.card_activity.source: expected one of the sources",
        ),
        (
            "      - field: amount                   # amount_sum_1h",
            "      - field: amont",
            (
                "features.card_activity.aggregations[1].field: expected a field of source "
                "'transactions'"
            ),
        ),
        (
            "        function: distinct_count\n        windows: [24h]",
            "        function: sum\n        windows: [24h]",
            (
                "aggregations[4].field: expected an int or float field for sum, "
                "got 'country' of type enum"
            ),
        ),
        (
            "  features: [card_activity]",
            "  features: [card_activity.amont_sum_1h]",
            (
                "model.features[0]: expected a view or view.feature (did you mean "
                "'card_activity.amount_sum_1h'"
            ),
        ),
        (
            "    field: is_fraud",
            "    field: reason",
            "model.label.field: expected a field of source 'chargebacks'",
        ),
        (
            "  metric: auc",
            "  metric: rmse",
            (
                "model.metric: expected a classification metric ('auc', 'f1' or 'log_loss'), "
                "got 'rmse'"
            ),
        ),
        (
            "    card_activity.count_10m: [psi]",
            "    card_activity.count_10m: [chi2]",
            "drift.features['card_activity.count_10m']: expected tests for a numeric feature",
        ),
        (
            "  model: fraud_detector\n  canary_weight",
            "  model: other\n  canary_weight",
            "serving.model: expected the model's name 'fraud_detector', got 'other'",
        ),
        (
            "    card_activity.channel: pos\n",
            "    card_activity.channel: fax\n",
            "serving.defaults['card_activity.channel']: expected one of",
        ),
        (
            "    card_activity.channel: pos\n",
            "",
            (
                "serving.defaults: expected a default for every raw model feature "
                "(missing_features: default), missing card_activity.channel"
            ),
        ),
        (
            "    card_activity.channel: pos\n",
            "    card_activity.channel: pos\n    card_activity.count_10m: 0\n",
            (
                "serving.defaults['card_activity.count_10m']: 'card_activity.count_10m' is a "
                "window aggregate: it is never missing"
            ),
        ),
        (
            "  min_samples: 500",
            "  min_samples: 5000",
            "drift.min_samples: expected min_samples <= window_size (2000), got 5000",
        ),
    ],
)
def test_cross_reference_errors_name_the_exact_field(
    text: str, old: str, new: str, expected: str
) -> None:
    err = error_for(edited(text, old, new))
    assert expected in str(err)
    assert str(err).count("mlbus.yaml:") >= 1
    assert all(issue.line is not None for issue in err.issues)


def test_cross_reference_error_carries_the_line(text: str) -> None:
    err = error_for(edited(text, "  metric: auc", "  metric: rmse"))
    assert err.issues[0].line == text.splitlines().index("  metric: auc") + 1
    assert err.issues[0].loc == "model.metric"


def test_label_source_needs_the_data_source_event_id(text: str) -> None:
    broken = edited(text, "    event_id: transaction_id\n", "")
    err = error_for(broken)
    assert "sources.chargebacks.labels.source: expected the labelled source 'transactions' " in str(
        err
    )


def test_duplicate_keys_are_errors_not_silent_overrides(text: str) -> None:
    err = error_for(edited(text, "  threshold: 0.5\n", "  threshold: 0.5\n  threshold: 0.4\n"))
    line = text.splitlines().index("  threshold: 0.5") + 1
    assert str(err) == (
        f"mlbus.yaml:{line + 1}: model.threshold: expected each key once, "
        f"got 'threshold' again (first on line {line})"
    )


# ── file-level failures are one clear line ───────────────────────────────────


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match=r"nope\.yaml: no such file") as caught:
        load_spec(path)
    assert "\n" not in str(caught.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path)


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path, text: str) -> None:
    path = tmp_path / "mlbus.yaml"
    path.write_text(edited(text, "  task: classification", "  task: [classification"))
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:")
    assert "invalid YAML" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "the file is empty"),
        (
            "- a\n- b\n",
            "expected a mapping at the top level (project:, sources:, model:, …), got a list",
        ),
        ("just text\n", "got 'just text'"),
    ],
)
def test_wrong_top_level(content: str, expected: str) -> None:
    err = error_for(content)
    assert expected in str(err)
    assert str(err).startswith("mlbus.yaml: ")


# ── durations and timestamps ─────────────────────────────────────────────────

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(UNITS)))
def test_duration_with_unit(amount: int, unit: str) -> None:
    assert parse_duration(f"{amount}{unit}") == amount * UNITS[unit]
    assert parse_duration(f" {amount}{unit.upper()} ") == amount * UNITS[unit]


@given(st.integers(min_value=0, max_value=10**9))
def test_duration_round_trips_through_its_label(seconds: int) -> None:
    assert parse_duration(seconds) == seconds
    assert parse_duration(str(seconds)) == seconds
    assert parse_duration(format_duration(seconds)) == seconds
    assert parse_duration(duration_label(seconds)) == seconds


@given(
    st.lists(
        st.tuples(st.integers(0, 1000), st.sampled_from(sorted(UNITS))), min_size=1, max_size=4
    )
)
def test_compound_durations_add_up(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{u}" for n, u in parts)
    assert parse_duration(text) == sum(n * UNITS[u] for n, u in parts)


VALID = re.compile(r"[0-9]+|(?:[0-9]+[wdhms])+")


@given(st.text().filter(lambda s: not VALID.fullmatch(s.strip().lower().replace(" ", ""))))
def test_garbage_durations_are_refused_with_the_expectation(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", [-1, True, 1.5, None, "1x", "m", "10 minutes"])
def test_invalid_duration_values(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


def test_timestamps_need_an_offset() -> None:
    assert parse_timestamp("2025-01-01T00:00:00.250Z").microsecond == 250_000
    with pytest.raises(ValueError, match="UTC offset"):
        parse_timestamp("2025-01-01T00:00:00")
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_timestamp(1735689600)
