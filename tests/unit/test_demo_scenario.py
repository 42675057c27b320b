"""The demo's scenario plan, its settings and the stack catalogue (no broker, no Redis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mlbus.config import MlbusSettings
from mlbus.demo import DemoConfig, DemoSizes, LoopRecord, plan_scenario
from mlbus.demo._run import build_summary
from mlbus.demo._scenario import check_first_training, request_field_refs
from mlbus.demo._stack import demo_catalogue
from mlbus.example import GenerationError, fraud_spec_path
from mlbus.runtime import ServiceSpec
from mlbus.spec import ProjectSpec, load_spec

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SMALL = DemoSizes(payments=6_000, bootstrap=1_500, days=8, drift_age=timedelta(hours=120))


@pytest.fixture(scope="module")
def spec() -> ProjectSpec:
    return load_spec(fraud_spec_path())


@pytest.mark.parametrize(
    "sizes",
    [DemoSizes(), DemoSizes(payments=8_000, bootstrap=2_000)],  # the demo's, the Ctrl-C test's
    ids=["default", "ctrl-c-e2e"],
)
def test_the_plan_fits_at_every_hour_of_the_week(spec: ProjectSpec, sizes: DemoSizes) -> None:
    # The drift point is a fixed age before now: how many live payments precede it follows
    # the weekday and hour the demo starts at (the example's rhythm). A plan that does not
    # fit is refused (GenerationError), so `mlbus demo` would fail on some days. (The
    # count steps once a day, just after midnight: one hour a day covers the week.)
    monday = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
    for day in range(7):
        plan_scenario(spec, sizes, now=monday + timedelta(days=day), seed=7)


def test_plan_places_every_payment_in_the_past_and_the_drift_at_its_age(
    spec: ProjectSpec,
) -> None:
    plan = plan_scenario(spec, SMALL, now=NOW, seed=3)
    times = [p.event_time for p in plan.payments]
    assert len(times) == 6_000
    assert times == sorted(times)
    assert max(times) <= NOW - SMALL.end_gap
    onset = NOW - SMALL.drift_age
    assert plan.payments[plan.drift_at].event_time >= onset
    assert plan.payments[plan.drift_at - 1].event_time < onset
    assert plan.drift_time == plan.payments[plan.drift_at].event_time
    assert len(plan.bootstrap) == 1_500
    assert plan.live[0].index == 1_500


def test_labels_are_known_for_every_payment_but_only_past_ones_are_sent(
    spec: ProjectSpec,
) -> None:
    plan = plan_scenario(spec, SMALL, now=NOW, seed=3)
    assert len(plan.labels_by_index) == len(plan.payments)  # the generator labels every payment
    unsent = [p for p in plan.payments if p.label is None]
    assert len(unsent) == plan.not_yet_labelled
    assert unsent, "payments of the last hours have verdicts still in the future"
    for payment in plan.payments:
        if payment.label is not None:
            assert payment.label["transaction_id"] == payment.event_id
            sent_at = datetime.fromisoformat(str(payment.label["ts"]).replace("Z", "+00:00"))
            assert sent_at <= NOW
            assert payment.is_fraud == payment.label["is_fraud"]


def test_scoring_fields_are_the_payments_own_raw_features(spec: ProjectSpec) -> None:
    refs = request_field_refs(spec)
    assert refs == {
        "card_activity.amount": "amount",
        "card_activity.merchant_category": "merchant_category",
        "card_activity.country": "country",
        "card_activity.channel": "channel",
    }
    payment = plan_scenario(spec, SMALL, now=NOW, seed=3).payments[0]
    assert payment.request_fields["card_activity.amount"] == payment.event["amount"]
    assert payment.entity_id == payment.event["card_id"]


def test_the_same_seed_gives_the_same_plan(spec: ProjectSpec) -> None:
    first = plan_scenario(spec, SMALL, now=NOW, seed=5)
    again = plan_scenario(spec, SMALL, now=NOW, seed=5)
    other = plan_scenario(spec, SMALL, now=NOW, seed=6)
    assert [p.event for p in first.payments[:50]] == [p.event for p in again.payments[:50]]
    assert first.drift_at == again.drift_at
    assert [p.event for p in first.payments[:50]] != [p.event for p in other.payments[:50]]


def test_bad_sizes_are_clear_errors(spec: ProjectSpec) -> None:
    with pytest.raises(GenerationError, match="too close to the 5,500 bootstrap payments"):
        plan_scenario(spec, DemoSizes(payments=6_000, bootstrap=5_500), now=NOW, seed=3)
    with pytest.raises(GenerationError, match="within the 2 days"):
        DemoSizes(days=2, drift_age=timedelta(days=3))
    with pytest.raises(GenerationError, match="payments >= 1"):
        DemoSizes(payments=0)
    with pytest.raises(GenerationError, match="lookback shorter than the drift's age"):
        DemoConfig(sizes=SMALL, retrain_lookback=timedelta(hours=130))
    with pytest.raises(GenerationError, match="with a UTC offset"):
        plan_scenario(spec, SMALL, now=NOW.replace(tzinfo=None), seed=3)


def test_a_bootstrap_short_of_min_rows_labels_is_refused_before_anything_starts(
    spec: ProjectSpec,
) -> None:
    short = plan_scenario(spec, DemoSizes(payments=8_000, bootstrap=2_000), now=NOW, seed=7)
    labelled = sum(1 for p in short.bootstrap if p.label is not None)
    # a spec that needs one labelled row more than the bootstrap carries
    strict = spec.model_copy(
        update={"model": spec.model.model_copy(update={"min_rows": labelled + 1})}
    )
    with pytest.raises(GenerationError, match=rf"{labelled:,} labels .* model.min_rows"):
        check_first_training(short, strict)
    check_first_training(
        short,
        spec.model_copy(update={"model": spec.model.model_copy(update={"min_rows": labelled})}),
    )  # exactly enough


def test_config_hands_the_lookback_to_the_drift_service() -> None:
    env = DemoConfig(retrain_lookback=timedelta(hours=100)).service_env()
    assert env["MLBUS_DRIFT_RETRAIN_LOOKBACK_S"] == "360000"
    assert env["MLBUS_KAFKA_SESSION_TIMEOUT_S"] == "6"
    assert "MLBUS_DRIFT_RETRAIN_LOOKBACK_S" not in DemoConfig(retrain_lookback=None).service_env()


def test_catalogue_gives_free_ports_and_leaves_the_registry_s_address_to_the_supervisor() -> None:
    """The Supervisor moves a server whose preferred port was taken meanwhile and names the
    registry's real address; the catalogue must not override it (a demo run's services
    once asked a port the registry had been moved away from)."""
    catalogue = (
        ServiceSpec("registry", "mlbus.registry", grpc_port=8002),
        ServiceSpec("inference", "mlbus.inference", grpc_port=8001),
        ServiceSpec("trainer", "mlbus.trainer", needs_spec=True, calls_registry=True),
    )
    services = {s.name: s for s in demo_catalogue({"EXTRA": "1"}, catalogue)}
    ports = [services[n].grpc_port for n in ("registry", "inference")]
    assert None not in ports
    assert len(set(ports)) == 2
    assert services["trainer"].grpc_port is None
    assert services["trainer"].needs_spec
    moved = "127.0.0.1:28097"  # where the Supervisor found the registry a port
    settings = MlbusSettings(data_dir=Path("/tmp/x"))
    env = services["trainer"].environment(settings, None, 9999, moved)
    assert env["MLBUS_TRAINER_REGISTRY_ADDRESS"] == moved
    assert not any(k.endswith("_REGISTRY_ADDRESS") for k, _ in services["trainer"].extra_env)
    assert env["EXTRA"] == "1"
    assert env["MLBUS_TELEMETRY_METRICS_PORT"] == "9999"


def test_summary_of_a_run_that_stopped_before_serving(spec: ProjectSpec) -> None:
    plan = plan_scenario(spec, SMALL, now=NOW, seed=3)
    record = LoopRecord(phase_seconds={"bootstrap": 1.5})
    record.notes.append("training failed at dataset: too few rows")
    summary = build_summary(
        spec, plan, record, MlbusSettings(data_dir=Path("/tmp/x")), 3, None, 12.34
    )
    assert summary.initial_version is None
    assert summary.requests_total == 0
    assert summary.detection is None
    assert summary.total_seconds == 12.3
    assert all(s.auc is None for s in summary.segments)
    assert "training failed at dataset: too few rows" in summary.notes
    assert any("dated in the future" in n for n in summary.notes)
    assert summary.model_dump(mode="json")["phase_seconds"] == {"bootstrap": 1.5}
