"""One way to build a Redis client from the settings, so `cluster` means the same everywhere.

    client = redis_client(settings.redis)                   # timeouts from the settings
    client = redis_client(settings.redis, decode_responses=True)

With `cluster` the URL names any node of a Redis Cluster (db 0) and the other
nodes are discovered; without it, a single Redis (or one behind a proxy).
Socket timeouts default to `socket_timeout_s`; other options go to redis-py as given.

`single_redis_client` is for state a Redis Cluster cannot hold as it is laid out:
Lua scripts over keys in different slots, scripts inside pipelines, WATCH
transactions (the drift and outcomes services' stores). It always talks to the
one node the URL names, as those stores always have; making them cluster-ready
takes hash tags in their key layouts first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from mlbus.errors import ConfigError

if TYPE_CHECKING:
    from mlbus.config import RedisSettings

RedisClient: TypeAlias = aioredis.Redis | RedisCluster


def redis_client(settings: RedisSettings, **options: Any) -> RedisClient:
    """A client of the configured Redis (ConfigError when none is configured)."""
    options.setdefault("socket_timeout", settings.socket_timeout_s)
    options.setdefault("socket_connect_timeout", settings.socket_timeout_s)
    return redis_client_at(settings.require_url(), cluster=settings.cluster, **options)


def redis_client_at(url: str, *, cluster: bool = False, **options: Any) -> RedisClient:
    """A client of the Redis at `url`; `cluster`: `url` names a node of a Redis Cluster."""
    if cluster:
        try:
            return RedisCluster.from_url(url, **options)
        except (RedisClusterException, ValueError) as exc:  # e.g. a db other than 0
            raise ConfigError(f"invalid Redis Cluster URL {url!r}: {exc}") from exc
    return aioredis.Redis.from_url(url, **options)


def single_redis_client(settings: RedisSettings, **options: Any) -> aioredis.Redis:
    """A client of the one Redis node the URL names, whatever `cluster` says (see above)."""
    options.setdefault("socket_timeout", settings.socket_timeout_s)
    options.setdefault("socket_connect_timeout", settings.socket_timeout_s)
    return aioredis.Redis.from_url(settings.require_url(), **options)
