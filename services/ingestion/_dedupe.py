"""Which event ids were already accepted: a Redis key per id, expiring after the horizon.

Keys are `<prefix>:ingest:seen:<source>:<event_id>` with a TTL of the
horizon, so the horizon needs no clean-up job, survives a restart of the
service, and is shared by every ingestion replica (see docs/adr/0010).
One script call per batch asks (`EXISTS` per key, answering with the positions
of the keys found: a reply of a few bytes instead of one entry per key), one
script call (`SET … EX` per key) per batch remembers.

With hiredis installed, commands are packed by hiredis (C) as redis-py's own
synchronous client does, rather than by the asyncio client's Python loop: the
two calls carry every id of a batch, and packing them cost more than the rest
of the round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from mlbus.errors import RetryableError

if TYPE_CHECKING:
    from mlbus.config import RedisSettings

_SEEN = """
local found = {}
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    found[#found + 1] = i
  end
end
return found
"""

_REMEMBER = """
for _, key in ipairs(KEYS) do
  redis.call('SET', key, '1', 'EX', ARGV[1])
end
return #KEYS
"""

SeenKey = tuple[str, str]
"""(source name, event id)."""


class SeenIds(Protocol):
    async def seen(self, keys: Sequence[SeenKey]) -> set[SeenKey]:
        """The keys among `keys` accepted within the horizon."""
        ...

    async def remember(self, keys: Sequence[SeenKey]) -> None:
        """Record `keys` as accepted now."""
        ...

    async def close(self) -> None: ...


class NoDedupe:
    """`dedupe_horizon_s=0`: every valid event is published."""

    async def seen(self, keys: Sequence[SeenKey]) -> set[SeenKey]:
        return set()

    async def remember(self, keys: Sequence[SeenKey]) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisSeenIds:
    """The de-duplication horizon in Redis (works with any Redis-protocol server)."""

    _CHUNK = 1_000

    def __init__(self, redis: RedisSettings, *, horizon_s: int) -> None:
        from mlbus.redis_client import redis_client

        if horizon_s <= 0:
            raise ValueError("horizon_s must be > 0; use NoDedupe to turn de-duplication off")
        options: dict[str, Any] = {}
        packed = _hiredis_packed_connection()
        if packed is not None:  # a rediss:// or unix:// URL, or a cluster, picks its own class
            options["connection_class"] = packed
        self._redis = redis_client(redis, **options)
        self._cluster = redis.cluster
        self._prefix = f"{redis.key_prefix}:ingest:seen:"
        self.horizon_s = horizon_s
        self._remember = self._redis.register_script(_REMEMBER)
        self._seen = self._redis.register_script(_SEEN)

    def _chunks(self, keys: Sequence[SeenKey]) -> list[Sequence[SeenKey]]:
        """At most _CHUNK keys per script call; on a Redis Cluster, one source's (one slot) each:
        a script's keys must share a slot there."""
        groups: list[Sequence[SeenKey]] = [keys]
        if self._cluster:
            by_source: dict[str, list[SeenKey]] = {}
            for item in keys:
                by_source.setdefault(item[0], []).append(item)
            groups = list(by_source.values())
        return [
            group[start : start + self._CHUNK]
            for group in groups
            for start in range(0, len(group), self._CHUNK)
        ]

    def key(self, item: SeenKey) -> str:
        # The {source} hash tag keeps one source's keys in one Redis Cluster slot (MGET, script).
        return f"{self._prefix}{{{item[0]}}}:{item[1]}"

    async def seen(self, keys: Sequence[SeenKey]) -> set[SeenKey]:
        from redis.exceptions import RedisError

        found: set[SeenKey] = set()
        try:
            for chunk in self._chunks(keys):
                # Keys stay declared in KEYS (one `{source}` slot), as MGET had them.
                positions = await self._seen(keys=[self.key(k) for k in chunk])
                found.update(chunk[int(i) - 1] for i in positions)
        except RedisError as exc:
            raise RetryableError(f"de-duplication store unavailable: {exc}") from exc
        return found

    async def remember(self, keys: Sequence[SeenKey]) -> None:
        from redis.exceptions import RedisError

        if not keys:
            return
        try:
            for chunk in self._chunks(keys):
                # One script call, one reply: a pipeline of SETs costs a reply parse per key.
                await self._remember(keys=[self.key(k) for k in chunk], args=[self.horizon_s])
        except RedisError as exc:
            raise RetryableError(f"de-duplication store unavailable: {exc}") from exc

    async def ping(self) -> None:
        from redis.exceptions import RedisError

        try:
            await self._redis.ping()
        except RedisError as exc:
            raise RetryableError(f"de-duplication store unavailable: {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()


def _hiredis_packed_connection() -> type[Any] | None:
    """redis-py's asyncio TCP connection, packing commands with redis-py's hiredis
    serializer (what its synchronous connection uses when hiredis is installed);
    None without hiredis, and the default connection is used."""
    try:
        from redis.asyncio.connection import Connection
        from redis.connection import HiredisRespSerializer
        from redis.utils import HIREDIS_AVAILABLE
    except ImportError:  # pragma: no cover - another redis-py layout: keep its default
        return None
    if not HIREDIS_AVAILABLE:  # pragma: no cover - the test environment has hiredis
        return None
    serializer = HiredisRespSerializer()

    class HiredisPackedConnection(Connection):
        def pack_command(self, *args: Any) -> list[bytes]:
            packed: list[bytes] = serializer.pack(*args)
            return packed

    return HiredisPackedConnection
