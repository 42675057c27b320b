"""The embedded runtime: broker, Redis and supervised services on one machine.

Other commands find the running `mlbus up` through its data folder:

    settings = discover(load_settings(MlbusSettings))   # fills unset broker/Redis addresses
    state = live_state(settings.data)                   # full RunState, or None
"""

from mlbus.runtime._embedded import EmbeddedBroker, EmbeddedRedis, local_redis_url
from mlbus.runtime._health import Health, StatusReport, check_run, kafka_health, redis_ping
from mlbus.runtime._process import die_with_parent, free_port, port_open
from mlbus.runtime._services import SERVICES, ServiceSpec
from mlbus.runtime._state import (
    AlreadyRunningError,
    BrokerState,
    RedisState,
    RunState,
    ServiceState,
    discover,
    live_state,
    pid_alive,
    read_state,
)
from mlbus.runtime._supervisor import RestartPolicy, StartupError, Supervisor

__all__ = [
    "SERVICES",
    "AlreadyRunningError",
    "BrokerState",
    "EmbeddedBroker",
    "EmbeddedRedis",
    "Health",
    "RedisState",
    "RestartPolicy",
    "RunState",
    "ServiceSpec",
    "ServiceState",
    "StartupError",
    "StatusReport",
    "Supervisor",
    "check_run",
    "die_with_parent",
    "discover",
    "free_port",
    "kafka_health",
    "live_state",
    "local_redis_url",
    "pid_alive",
    "port_open",
    "read_state",
    "redis_ping",
]
