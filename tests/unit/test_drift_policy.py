"""RetrainPolicy: a cooldown and an hourly cap turn drift storms into few retrainings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mlbus.driftstats import PolicyState, RetrainPolicy
from mlbus.spec import DriftSpec

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_the_first_trigger_is_allowed_and_recorded() -> None:
    policy = RetrainPolicy(DriftSpec(cooldown_s=600, max_retrains_per_hour=2))
    assert policy.decide(PolicyState(), T0) == (True, "allowed")
    state = policy.record(PolicyState(), T0)
    assert state.last_trigger == T0
    assert state.recent == (T0,)


def test_cooldown_refuses_until_it_has_passed() -> None:
    policy = RetrainPolicy(DriftSpec(cooldown_s=600, max_retrains_per_hour=10))
    state = policy.record(PolicyState(), T0)
    allowed, reason = policy.decide(state, T0 + timedelta(seconds=599))
    assert not allowed
    assert reason.startswith("cooldown")
    assert "599s ago" in reason
    assert policy.decide(state, T0 + timedelta(seconds=600))[0]


def test_hourly_cap_refuses_beyond_n_in_a_sliding_hour() -> None:
    policy = RetrainPolicy(DriftSpec(cooldown_s=60, max_retrains_per_hour=2))
    state = PolicyState()
    fired = []
    for minute in range(0, 130, 5):  # a drift storm: a detection every 5 minutes
        now = T0 + timedelta(minutes=minute)
        allowed, reason = policy.decide(state, now)
        if allowed:
            state = policy.record(state, now)
            fired.append(minute)
        else:
            assert reason.startswith("hourly cap")
    assert fired == [0, 5, 60, 65, 120, 125]
    assert state.recent == (T0 + timedelta(minutes=120), T0 + timedelta(minutes=125))


def test_a_zero_cap_disables_retraining_and_a_clock_going_back_stays_in_cooldown() -> None:
    assert not RetrainPolicy(DriftSpec(max_retrains_per_hour=0)).decide(PolicyState(), T0)[0]
    policy = RetrainPolicy(DriftSpec(cooldown_s=60, max_retrains_per_hour=5))
    state = policy.record(PolicyState(), T0)
    allowed, reason = policy.decide(state, T0 - timedelta(minutes=10))
    assert not allowed
    assert reason.startswith("cooldown")


def test_state_round_trips_json_and_naive_times_are_utc() -> None:
    policy = RetrainPolicy(DriftSpec(cooldown_s=60, max_retrains_per_hour=5))
    state = policy.record(PolicyState(), datetime(2026, 11, 30, 12, 0))  # naive: read as UTC
    assert state.last_trigger == T0
    assert PolicyState.model_validate_json(state.model_dump_json()) == state
