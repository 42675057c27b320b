"""The embedded runtime: broker, Redis and supervised services on one machine."""

from mlbus.runtime._embedded import EmbeddedBroker, EmbeddedRedis, local_redis_url
from mlbus.runtime._process import free_port, port_open

__all__ = ["EmbeddedBroker", "EmbeddedRedis", "free_port", "local_redis_url", "port_open"]
