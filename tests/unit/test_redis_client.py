"""One factory builds every Redis client: `cluster` picks the cluster client everywhere."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from mlbus.config import RedisSettings
from mlbus.errors import ConfigError
from mlbus.redis_client import redis_client, single_redis_client


async def test_cluster_settings_give_a_cluster_client_with_the_settings_timeouts() -> None:
    settings = RedisSettings(url="redis://127.0.0.1:1/0", cluster=True, socket_timeout_s=0.7)
    client = redis_client(settings)
    assert isinstance(client, RedisCluster)
    kwargs = client.get_connection_kwargs()
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.7, 0.7)
    await client.aclose()


async def test_single_settings_give_a_single_client_and_options_win() -> None:
    settings = RedisSettings(url="redis://127.0.0.1:1/3", socket_timeout_s=0.7)
    client = redis_client(settings, socket_timeout=None, decode_responses=True)
    assert isinstance(client, aioredis.Redis)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] is None
    assert kwargs["socket_connect_timeout"] == 0.7
    assert kwargs["decode_responses"] is True
    assert kwargs["db"] == 3
    await client.aclose()


async def test_single_redis_client_ignores_cluster() -> None:
    settings = RedisSettings(url="redis://127.0.0.1:1/0", cluster=True)
    client = single_redis_client(settings)
    assert type(client) is aioredis.Redis
    await client.aclose()


def test_a_cluster_url_with_a_db_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid Redis Cluster URL"):
        redis_client(RedisSettings(url="redis://127.0.0.1:1/2", cluster=True))


def test_no_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no Redis configured"):
        redis_client(RedisSettings(url=None))
