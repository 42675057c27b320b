"""The embedded runtime: broker, Redis and supervised services on one machine.

`mlbus up` is a `Supervisor`. What it tells other processes (the run state in
its data folder, `discover`, health checks) is the shared library's
`mlbus.runstate`, which services read too.
"""

from mlbus.runtime._embedded import EmbeddedBroker, EmbeddedRedis, local_redis_url
from mlbus.runtime._lock import AlreadyRunningError, RunLock
from mlbus.runtime._process import free_port, free_ports, port_open
from mlbus.runtime._services import SERVICES, ServiceSpec
from mlbus.runtime._supervisor import RestartPolicy, StartupError, Supervisor

__all__ = [
    "SERVICES",
    "AlreadyRunningError",
    "EmbeddedBroker",
    "EmbeddedRedis",
    "RestartPolicy",
    "RunLock",
    "ServiceSpec",
    "StartupError",
    "Supervisor",
    "free_port",
    "free_ports",
    "local_redis_url",
    "port_open",
]
