"""The labeling loop's one home: which predictions ask for a label, the queue, the answer.

- `labeling_request(...)`: the spec's rule (`outcomes.labeling`) for one scored event:
  disagreement between champion and shadow, a score in the band around the
  threshold, or the unbiased hash sample — with a priority (higher first).
- `LabelQueue`: the bounded, de-duplicated, prioritised queue in Redis, written
  by the outcomes service, read by `mlbus labels`:

      <p>:labeling:<model>:queue     zset  scored event id → priority
      <p>:labeling:<model>:due       zset  scored event id → requested at (epoch s)
      <p>:labeling:<model>:items     hash  scored event id → the request (JSON)
      <p>:labeling:<model>:counts    hash  requested, answered, expired, dropped
      <p>:labeling:<model>:seen      zset  scored event id → first asked (epoch s): an event
                                           is asked once, even when its prediction is
                                           replayed after an answer or a drop; kept 2×expire_s

- `read_queue(...)`, `read_request(...)`, `submit_label(...)`: what `mlbus labels`
  and the console use to read the queue and send an answer; `answer_record(...)`:
  the answer checked and made a record, shared by `submit_label` and the outcomes
  service's gRPC `mlbus.labeling.v1.Labeling`, which sends it with its own producer.
- `label_record(...)`: the JSON a submitted answer becomes, on the spec's label
  source topic, checked against that source's contract first, so ingestion
  accepts it like any producer's label and the trainer and drift use it with
  no special path.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, cast

from mlbus.errors import InvalidInput, NotFound
from mlbus.events import LabelingRequested, Scalar
from mlbus.redis_client import RedisClient, redis_client
from mlbus.spec import LabelingSpec, ProjectSpec

if TYPE_CHECKING:
    from mlbus.config import KafkaSettings, RedisSettings

Reason = Literal["band", "disagreement", "sample"]


def _sampled(event_id: str, rate: float) -> bool:
    if rate <= 0:
        return False
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


def labeling_request(
    rules: LabelingSpec,
    *,
    event_id: str,
    threshold: float,
    champion: float,
    shadow: float | None = None,
) -> tuple[Reason, float] | None:
    """(reason, priority) when this event should be labelled, else None.

    Priorities: disagreement 2 + |gap|, band 1 + closeness to the threshold (0..1),
    sample 0.5 — so a full queue keeps the most informative requests.
    """
    if shadow is not None and rules.disagreement is not None:
        gap = abs(champion - shadow)
        if gap >= rules.disagreement:
            return "disagreement", 2.0 + gap
    if rules.band is not None:
        distance = abs(champion - threshold)
        if distance <= rules.band:
            return "band", 1.0 + (1.0 - distance / rules.band)
    if _sampled(event_id, rules.sample_rate):
        return "sample", 0.5
    return None


# KEYS: queue, due, items, counts, seen. ARGV: max_open, then (id, priority, at, item) quads.
# Returns the ids queued now (new ones; an event asked before is left alone).
_OFFER = """
local queued = {}
local max_open = tonumber(ARGV[1])
for i = 2, #ARGV, 4 do
  local id = ARGV[i]
  if redis.call('ZSCORE', KEYS[5], id) == false then
    redis.call('ZADD', KEYS[5], ARGV[i + 2], id)
    redis.call('ZADD', KEYS[1], ARGV[i + 1], id)
    redis.call('ZADD', KEYS[2], ARGV[i + 2], id)
    redis.call('HSET', KEYS[3], id, ARGV[i + 3])
    redis.call('HINCRBY', KEYS[4], 'requested', 1)
    table.insert(queued, id)
  end
end
while redis.call('ZCARD', KEYS[1]) > max_open do
  local lowest = redis.call('ZPOPMIN', KEYS[1])
  redis.call('ZREM', KEYS[2], lowest[1])
  redis.call('HDEL', KEYS[3], lowest[1])
  redis.call('HINCRBY', KEYS[4], 'dropped', 1)
  for j, id in ipairs(queued) do
    if id == lowest[1] then table.remove(queued, j) break end
  end
end
return queued
"""

# KEYS: queue, due, items, counts. ARGV[1]: the counter; ARGV[2..]: ids. Returns how many left.
_REMOVE = """
local n = 0
for i = 2, #ARGV do
  if redis.call('HDEL', KEYS[3], ARGV[i]) == 1 then
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
    n = n + 1
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[4], ARGV[1], n) end
return n
"""


class LabelQueue:
    """One model's labeling queue in Redis (layout above)."""

    def __init__(self, client: RedisClient, *, prefix: str, model: str) -> None:
        self.client = client
        base = f"{prefix}:labeling:{model}"
        self.keys = [
            f"{base}:queue",
            f"{base}:due",
            f"{base}:items",
            f"{base}:counts",
            f"{base}:seen",
        ]
        self._offer = client.register_script(_OFFER)
        self._remove = client.register_script(_REMOVE)

    async def offer(self, requests: list[LabelingRequested], max_open: int) -> list[str]:
        """Queue new requests; returns the scored event ids that entered the queue."""
        if not requests:
            return []
        args: list[str | float] = [max_open]
        for request in requests:
            args += [
                request.scored_event_id,
                request.priority,
                request.occurred_at.timestamp(),
                request.model_dump_json(),
            ]
        queued = await self._offer(keys=self.keys, args=args)
        return [q.decode() if isinstance(q, bytes) else str(q) for q in queued]

    async def answered(self, event_ids: list[str]) -> int:
        """Requests whose label arrived leave the queue (counted once)."""
        if not event_ids:
            return 0
        return int(await self._remove(keys=self.keys, args=["answered", *event_ids]))

    async def expire(self, now_s: float, expire_s: float) -> int:
        """Requests older than `expire_s` leave the queue unanswered."""
        await self.client.zremrangebyscore(self.keys[4], "-inf", now_s - 2 * expire_s)
        old = await self.client.zrangebyscore(self.keys[1], "-inf", now_s - expire_s)
        if not old:
            return 0
        ids = [o.decode() if isinstance(o, bytes) else str(o) for o in old]
        return int(await self._remove(keys=self.keys, args=["expired", *ids]))

    async def counts(self) -> dict[str, Any]:
        raw = {
            (k.decode() if isinstance(k, bytes) else str(k)): int(v)
            for k, v in (await self.client.hgetall(self.keys[3])).items()
        }
        counts: dict[str, Any] = {
            name: raw.get(name, 0) for name in ("requested", "answered", "expired", "dropped")
        }
        closed = counts["answered"] + counts["expired"]
        counts["open"] = int(await self.client.zcard(self.keys[0]))
        counts["answer_rate"] = counts["answered"] / closed if closed else None
        return counts

    async def top(self, limit: int) -> list[dict[str, Any]]:
        """The waiting requests, highest priority first."""
        ids = cast(list[bytes], await self.client.zrevrange(self.keys[0], 0, max(0, limit - 1)))
        if not ids:
            return []
        items = await self.client.hmget(self.keys[2], ids)
        return [json.loads(item) for item in items if item is not None]

    async def item(self, event_id: str) -> dict[str, Any] | None:
        raw = await self.client.hget(self.keys[2], event_id)
        return None if raw is None else dict(json.loads(raw))


def parse_label(text: str, field_type: str) -> Scalar:
    """The label value typed as the label field of the spec's labels source."""
    lowered = text.strip().lower()
    if field_type == "bool":
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise InvalidInput(f"value: expected true or false for the label, got {text!r}")
    if field_type == "int":
        try:
            return int(text)
        except ValueError:
            raise InvalidInput(f"value: expected an integer label, got {text!r}") from None
    if field_type == "float":
        try:
            return float(text)
        except ValueError:
            raise InvalidInput(f"value: expected a number for the label, got {text!r}") from None
    return text


def label_record(
    spec: ProjectSpec,
    *,
    scored_event_id: str,
    value: str,
    entity_id: str,
    extra: Mapping[str, Scalar] | None = None,
    now: datetime | None = None,
) -> tuple[str, bytes, bytes]:
    """(topic, key, value) of the label a person submitted, checked against the contract.

    Raises InvalidInput naming every problem the contract finds (a field the
    labels source requires that the answer lacks: pass it in `extra`).
    """
    from mlbus.contracts import Accepted, SourceContracts

    source_name = spec.model.label.source
    source = spec.sources[source_name]
    link = source.labels
    if link is None:
        raise InvalidInput(f"source {source_name!r} names no labelled event")
    if not scored_event_id.strip():
        raise InvalidInput("scored_event_id is empty: name the event the label is for")
    if not value.strip():
        raise InvalidInput("value is empty: give the label")
    if not entity_id.strip():
        raise InvalidInput("entity_id is empty: name the entity, or leave it unset")
    field_type = source.contract.fields[spec.model.label.field].type
    at = now or datetime.now(UTC)
    own = {link.event_id_field, spec.model.label.field, source.entity, source.event_time}
    if source.event_id is not None:
        own.add(source.event_id)
    # An extra field must not quietly replace the event, the value or the entity given.
    clash = sorted(own & set(extra or {}))
    if clash:
        raise InvalidInput(
            f"fields {clash} are set by the answer itself (scored event id, value, entity, "
            "time, label id); pass only the labels source's other fields"
        )
    record: dict[str, Scalar] = {
        link.event_id_field: scored_event_id,
        spec.model.label.field: parse_label(value, field_type),
        source.entity: entity_id,
        source.event_time: at.isoformat(),
    }
    if source.event_id is not None:
        record[source.event_id] = str(uuid.uuid4())
    for name, spec_field in source.contract.fields.items():
        if name not in record and spec_field.nullable:
            record[name] = None  # what the person does not know stays empty
    record.update(extra or {})
    raw = json.dumps(record).encode()
    outcome = SourceContracts(spec).for_source(source_name).validate(raw, now_s=at.timestamp())
    if not isinstance(outcome, Accepted):
        reasons = "; ".join(r.message for r in outcome.reasons)
        raise InvalidInput(f"the label breaks the {source_name!r} contract: {reasons}")
    return source.topic, entity_id.encode(), raw


def new_request(
    *,
    model: str,
    version: int,
    scored_event_id: str,
    entity_id: str | None,
    reason: Reason,
    priority: float,
    scores: Mapping[str, float],
    features: Mapping[str, Scalar],
    predicted_at: datetime,
) -> LabelingRequested:
    """The request event; its id is derived from the scored event (one request per event)."""
    return LabelingRequested(
        event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"mlbus:labeling:{model}:{scored_event_id}")),
        model=model,
        version=version,
        scored_event_id=scored_event_id,
        entity_id=entity_id,
        reason=reason,
        priority=priority,
        scores=dict(scores),
        features=dict(features),
        predicted_at=predicted_at,
    )


async def read_queue(redis: RedisSettings, model: str, limit: int) -> dict[str, Any]:
    """The queue's counts and its `limit` most urgent open requests."""
    client = redis_client(redis)
    try:
        queue = LabelQueue(client, prefix=redis.key_prefix, model=model)
        return {"model": model, "counts": await queue.counts(), "open": await queue.top(limit)}
    finally:
        await client.aclose()


async def answer_record(
    spec: ProjectSpec,
    queue: LabelQueue | None,
    *,
    scored_event_id: str,
    value: str,
    entity_id: str | None,
    extra: Mapping[str, Scalar] | None = None,
) -> tuple[str, bytes, bytes]:
    """(topic, key, value) of a person's answer; the entity comes from the queued request
    when not given. Raises InvalidInput (naming the field) or NotFound (no entity known)."""
    if entity_id is None and queue is not None and scored_event_id.strip():
        item = await queue.item(scored_event_id)
        entity_id = None if item is None else item.get("entity_id")
    if entity_id is None:
        raise NotFound(
            f"no labeling request waits for scored event {scored_event_id!r} (answered, "
            "expired, dropped or never asked), so its entity is unknown: name it (entity_id)"
        )
    return label_record(
        spec, scored_event_id=scored_event_id, value=value, entity_id=entity_id, extra=extra
    )


async def read_request(
    redis: RedisSettings, model: str, scored_event_id: str
) -> dict[str, Any] | None:
    """One open request (None once it was answered, expired or dropped, or never asked)."""
    client = redis_client(redis)
    try:
        return await LabelQueue(client, prefix=redis.key_prefix, model=model).item(scored_event_id)
    finally:
        await client.aclose()


async def submit_label(
    kafka: KafkaSettings,
    redis: RedisSettings | None,
    spec: ProjectSpec,
    *,
    scored_event_id: str,
    value: str,
    entity_id: str | None,
    extra: dict[str, Any],
) -> tuple[str, bytes]:
    """Produce the label; the entity comes from the queued request when not given."""
    from aiokafka import AIOKafkaProducer

    # unchanged: this client never had a socket timeout (STYLE wants one; its own change)
    no_timeout = {"socket_timeout": None, "socket_connect_timeout": None}
    client = None if redis is None else redis_client(redis, **no_timeout)
    try:
        queue = (
            None
            if client is None or redis is None
            else LabelQueue(client, prefix=redis.key_prefix, model=spec.model.name)
        )
        topic, key, raw = await answer_record(
            spec,
            queue,
            scored_event_id=scored_event_id,
            value=value,
            entity_id=entity_id,
            extra=extra,
        )
    finally:
        if client is not None:
            await client.aclose()
    producer = AIOKafkaProducer(**kafka.client_kwargs())
    await producer.start()
    try:
        await producer.send_and_wait(topic, raw, key=key)
    finally:
        await producer.stop()
    return topic, raw
