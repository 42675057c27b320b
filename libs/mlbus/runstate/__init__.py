"""What a running `mlbus up` tells other processes, through its data folder.

`mlbus up` (the shell's `mlbus.runtime`) writes the run state; services and
commands read it here, so the format has one home and no service imports the
shell:

    settings = discover(load_settings(MlbusSettings))   # fills unset broker/Redis addresses
    state = live_state(settings.data)                   # full RunState, or None
    report = await check_run(state, settings)           # each component's health
"""

from mlbus.runstate._health import Health, StatusReport, check_run, kafka_health, redis_ping
from mlbus.runstate._state import (
    INSTANCE_PREFIX_PATTERN,
    BrokerState,
    RedisState,
    RunState,
    ServiceState,
    ServiceStatus,
    discover,
    instance_prefix,
    live_state,
    pid_alive,
    read_state,
    remove_state,
    with_key_prefix,
    write_state,
)

__all__ = [
    "INSTANCE_PREFIX_PATTERN",
    "BrokerState",
    "Health",
    "RedisState",
    "RunState",
    "ServiceState",
    "ServiceStatus",
    "StatusReport",
    "check_run",
    "discover",
    "instance_prefix",
    "kafka_health",
    "live_state",
    "pid_alive",
    "read_state",
    "redis_ping",
    "remove_state",
    "with_key_prefix",
    "write_state",
]
