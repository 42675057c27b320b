"""The outcomes service's state in Redis.

    <p>:outcomes:pending:<model>:<scored event id>    hash  "<version>|<alias>" → "<score>|<at>"
                                                      (expires pending_ttl_s after the prediction)
    <p>:outcomes:<group>:state:<topic>:<partition>    hash  "offset" → last applied offset of
                                                      the labels' partition; "cell|<model>|
                                                      <version>|<alias>|<bucket>" and "arm|<exp>|
                                                      <side>" → aggregate JSON (outcomestats);
                                                      "trace|<exp>" → the evidence's traceparent
    <p>:outcomes:<group>:partitions                   set   the state keys above (read without SCAN)
    <p>:outcomes:<group>:experiments                  hash  experiment id → ExperimentRecord JSON
    <p>:outcomes:<group>:status                       string the status `mlbus experiments status`
                                                      and the console read (JSON), written at each
                                                      evaluation (key named in mlbus.outcomesstatus)

A partition's aggregates, its offset and the deletion of the pending
predictions its labels used are written in one MULTI/EXEC, so a replayed label
is either fully counted once or not at all (the consumer skips offsets at or
below the saved one). Aggregates add, so the windows and the experiments are the
sums over every partition's hash.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import redis.asyncio as aioredis

from mlbus import outcomesstatus
from mlbus.config import RedisSettings
from mlbus.errors import RetryableError
from mlbus.redis_client import single_redis_client
from mlbus.redis_failures import REDIS_DOWN

Status = Literal["running", "decided", "ended"]


@dataclass
class ExperimentRecord:
    """One champion-vs-challenger comparison, shared by every replica."""

    experiment_id: str
    model: str
    alias: str
    champion_version: int
    challenger_version: int
    started_at: float
    """epoch seconds: predictions made from then on are its evidence."""
    status: Status = "running"
    p_value: float = 1.0
    looks: int = 0
    tau: float | None = None
    verdict: str | None = None
    decided_at: float | None = None
    decision_event_id: str | None = None
    acted: bool = False
    action_outcome: str | None = None
    ended_reason: str | None = None
    last: dict[str, Any] = field(default_factory=dict)
    """The latest look: difference, interval, per-arm values and counts."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> ExperimentRecord:
        return cls(**json.loads(raw))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def experiment_id(model: str, alias: str, challenger: int, champion: int) -> str:
    return f"{model}:{alias}:v{challenger}-vs-v{champion}"


@dataclass(frozen=True, slots=True)
class PendingPrediction:
    version: int
    alias: str
    score: float
    at: float

    @property
    def field(self) -> str:
        return f"{self.version}|{self.alias}"

    def encode(self) -> str:
        return f"{self.score!r}|{self.at!r}"  # exact: compared with an experiment's start

    @classmethod
    def decode(cls, name: bytes | str, value: bytes | str) -> PendingPrediction:
        name_s = name.decode() if isinstance(name, bytes) else name
        value_s = value.decode() if isinstance(value, bytes) else value
        version, alias = name_s.split("|", 1)
        score, at = value_s.split("|", 1)
        return cls(int(version), alias, float(score), float(at))


LABELLED = "_labelled"
"""The field left in a scored event's hash once a label used its predictions."""

# KEYS[1] the partition's state, KEYS[2] the set of states, KEYS[3..] used predictions.
# ARGV[1] the new offset, ARGV[2] ttl, ARGV[3] n fields, then n (field, value) pairs, then
# fields to drop. Refused (0) when the stored offset is ahead: another replica owns the
# partition. Used predictions are replaced by a marker that lives as long as they would
# have, so a later label of the same event is told apart from one of an unknown event.
_SAVE = """
local stored = tonumber(redis.call('HGET', KEYS[1], 'offset') or '-1')
if stored > tonumber(ARGV[1]) then return 0 end
local n = tonumber(ARGV[3])
for i = 0, n - 1 do redis.call('HSET', KEYS[1], ARGV[4 + 2 * i], ARGV[5 + 2 * i]) end
for i = 4 + 2 * n, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
redis.call('SADD', KEYS[2], KEYS[1])
for i = 3, #KEYS do
  redis.call('DEL', KEYS[i])
  redis.call('HSET', KEYS[i], '_labelled', '1')
  redis.call('EXPIRE', KEYS[i], ARGV[2])
end
return 1
"""

# KEYS: scored events' hashes. ARGV[1] ttl, then per key: n, then n (field, value) pairs.
# A hash already labelled is left alone (a replayed prediction does not bring it back).
_KEEP = """
local ttl = tonumber(ARGV[1])
local pos = 2
for _, key in ipairs(KEYS) do
  local n = tonumber(ARGV[pos])
  pos = pos + 1
  if redis.call('HEXISTS', key, '_labelled') == 0 then
    for i = 0, n - 1 do redis.call('HSET', key, ARGV[pos + 2 * i], ARGV[pos + 2 * i + 1]) end
    redis.call('EXPIRE', key, ttl)
  end
  pos = pos + 2 * n
end
return #KEYS
"""


class OutcomesStore:
    """Reads and writes the layout above; Redis errors become RetryableError."""

    def __init__(self, client: aioredis.Redis, *, prefix: str, group: str, ttl_s: int) -> None:
        self.client = client
        self.prefix = prefix
        self.group = group
        self.ttl_s = ttl_s
        self.base = f"{prefix}:outcomes:{group}"
        self._save = client.register_script(_SAVE)
        self._keep = client.register_script(_KEEP)

    @classmethod
    def from_settings(cls, redis: RedisSettings, *, group: str, ttl_s: int) -> OutcomesStore:
        client = single_redis_client(redis)  # multi-key scripts: not on a cluster yet
        return cls(client, prefix=redis.key_prefix, group=group, ttl_s=ttl_s)

    async def aclose(self) -> None:
        await self.client.aclose()

    # ── keys ─────────────────────────────────────────────────────────────────

    def pending_key(self, model: str, event_id: str) -> str:
        return f"{self.prefix}:outcomes:pending:{model}:{event_id}"

    def state_key(self, topic: str, partition: int) -> str:
        return f"{self.base}:state:{topic}:{partition}"

    @property
    def partitions_key(self) -> str:
        return f"{self.base}:partitions"

    @property
    def experiments_key(self) -> str:
        return f"{self.base}:experiments"

    @property
    def status_key(self) -> str:
        return outcomesstatus.status_key(self.prefix, self.group)

    # ── pending predictions ──────────────────────────────────────────────────

    async def keep_pending(
        self, entries: Mapping[tuple[str, str], Mapping[str, PendingPrediction]]
    ) -> None:
        """Write predictions waiting for labels (idempotent: a replay writes the same)."""
        if not entries:
            return
        items = list(entries.items())
        try:
            for start in range(0, len(items), 500):
                keys: list[str] = []
                args: list[str | int] = [self.ttl_s]
                for (model, event_id), found in items[start : start + 500]:
                    keys.append(self.pending_key(model, event_id))
                    args.append(len(found))
                    for p in found.values():
                        args += [p.field, p.encode()]
                await self._keep(keys=keys, args=args)
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable keeping predictions: {exc}") from exc

    async def pending(
        self, wanted: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], list[PendingPrediction]]:
        """The pending predictions of each (model, scored event id); an empty list for an
        event already labelled, nothing for an unknown (or expired) one."""
        keys = list(dict.fromkeys(wanted))
        if not keys:
            return {}
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for model, event_id in keys:
                    pipe.hgetall(self.pending_key(model, event_id))
                values = await pipe.execute()
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable joining labels: {exc}") from exc
        return {
            key: [PendingPrediction.decode(k, v) for k, v in found.items() if _text(k) != LABELLED]
            for key, found in zip(keys, values, strict=True)
            if found
        }

    # ── partition state ──────────────────────────────────────────────────────

    async def load_partition(self, topic: str, partition: int) -> dict[str, str]:
        try:
            raw = await self.client.hgetall(self.state_key(topic, partition))
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable loading outcomes state: {exc}") from exc
        return {_text(k): _text(v) for k, v in raw.items()}

    async def save_partition(
        self,
        topic: str,
        partition: int,
        offset: int,
        fields: Mapping[str, str],
        dropped: Iterable[str],
        joined: Iterable[tuple[str, str]],
    ) -> bool:
        """Aggregates + offset, dropped cells and used predictions: all or nothing.

        False (nothing written) when the stored offset is ahead of `offset`: the
        partition moved to another replica, whose state wins.
        """
        key = self.state_key(topic, partition)
        pairs: list[str] = []
        for name, value in {**fields, "offset": str(offset)}.items():
            pairs += [name, value]
        keys = [key, self.partitions_key, *(self.pending_key(m, e) for m, e in joined)]
        args: list[str | int] = [offset, self.ttl_s, len(pairs) // 2, *pairs, *dropped]
        try:
            return bool(await self._save(keys=keys, args=args))
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable saving outcomes state: {exc}") from exc

    async def saved_offset(self, topic: str, partition: int) -> int:
        try:
            raw = await self.client.hget(self.state_key(topic, partition), "offset")
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable reading an offset: {exc}") from exc
        return -1 if raw is None else int(raw)

    async def all_partitions(self) -> list[dict[str, str]]:
        """Every partition's saved state (for the windows and the experiments)."""
        try:
            keys = sorted(await self.client.smembers(self.partitions_key))
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                values = await pipe.execute()
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable reading outcomes state: {exc}") from exc
        return [{_text(k): _text(v) for k, v in raw.items()} for raw in values]

    # ── experiments and status ───────────────────────────────────────────────

    async def experiments(self) -> dict[str, ExperimentRecord]:
        try:
            raw = await self.client.hgetall(self.experiments_key)
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable reading experiments: {exc}") from exc
        return {_text(k): ExperimentRecord.from_json(v) for k, v in raw.items()}

    async def open_experiment(self, record: ExperimentRecord) -> bool:
        """Create the record unless it exists (the first replica wins)."""
        try:
            return bool(
                await self.client.hsetnx(
                    self.experiments_key, record.experiment_id, record.to_json()
                )
            )
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable opening an experiment: {exc}") from exc

    async def save_experiment(self, record: ExperimentRecord) -> None:
        try:
            await self.client.hset(self.experiments_key, record.experiment_id, record.to_json())
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable saving an experiment: {exc}") from exc

    async def write_status(self, status: Mapping[str, Any]) -> None:
        try:
            await self.client.set(self.status_key, json.dumps(status))
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable writing the status: {exc}") from exc
