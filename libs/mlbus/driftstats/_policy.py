"""When a detection may become a retraining: a cooldown and an hourly cap, per model. Pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import AwareDatetime, BaseModel, ConfigDict

from mlbus.spec import DriftSpec

HOUR = timedelta(hours=1)


class PolicyState(BaseModel):
    """The retrainings a policy remembers: the last one and those of the past hour."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    last_trigger: AwareDatetime | None = None
    recent: tuple[AwareDatetime, ...] = ()


class RetrainPolicy:
    """At most one retraining per `spec.cooldown_s`, and `spec.max_retrains_per_hour` per hour.

    A clock that went backwards (now before the last trigger) counts as inside
    the cooldown: a skewed clock must not open the gate.
    """

    def __init__(self, spec: DriftSpec) -> None:
        self.cooldown = timedelta(seconds=spec.cooldown_s)
        self.max_per_hour = spec.max_retrains_per_hour

    def decide(self, state: PolicyState, now: datetime) -> tuple[bool, str]:
        """(allowed, reason): why a trigger at `now` may or may not fire."""
        now = _aware(now)
        if self.max_per_hour == 0:
            return False, "retraining disabled: max_retrains_per_hour is 0"
        if state.last_trigger is not None:
            elapsed = now - state.last_trigger
            if elapsed < self.cooldown:
                return False, (
                    f"cooldown: last retraining {elapsed.total_seconds():.0f}s ago, "
                    f"cooldown {self.cooldown.total_seconds():.0f}s"
                )
        in_hour = _within_hour(state.recent, now)
        if len(in_hour) >= self.max_per_hour:
            return False, (
                f"hourly cap: {len(in_hour)} retrainings in the past hour, "
                f"max_retrains_per_hour {self.max_per_hour}"
            )
        return True, "allowed"

    def record(self, state: PolicyState, now: datetime) -> PolicyState:
        """The state after a trigger fired at `now` (older than an hour is forgotten)."""
        now = _aware(now)
        return PolicyState(last_trigger=now, recent=(*_within_hour(state.recent, now), now))


def _within_hour(times: tuple[datetime, ...], now: datetime) -> tuple[datetime, ...]:
    return tuple(t for t in times if now - t < HOUR)


def _aware(at: datetime) -> datetime:
    """A naive datetime is read as UTC (the services stamp UTC everywhere)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
