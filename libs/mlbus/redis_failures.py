"""What a Redis outage raises, in one place: every service catches the same set.

Transient: the server or a cluster node is unreachable, or slots move in a failover.
redis-py's cluster client reports "no node reachable" and "slots not covered" as a
bare RedisClusterException; its other uses are bad URLs (turned into ConfigError
when a client is built) and cross-slot transactions, which mlbus never sends.
`OSError` covers the built-in ConnectionError and TimeoutError.
"""

from __future__ import annotations

from redis.exceptions import ClusterDownError, RedisClusterException
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

REDIS_DOWN: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterDownError,
    RedisClusterException,
)
