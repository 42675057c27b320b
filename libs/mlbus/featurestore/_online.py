"""The online store: one Redis hash per (view, view version, entity).

    store = OnlineStore.from_settings(settings.redis)
    row = await store.get("card_activity", 1, "card_000042")      # one HGETALL
    row.values["amount_sum_1h"], row.age_s
    rows = await store.get_many("card_activity", 1, ids)            # one pipeline
    vectors = await store.get_features(ids, ["card_activity.count_10m"], {"card_activity": 1},
                                       at_ms=event_ms, views=aggregators)

Hash layout (`<prefix>:fv:<view>:<version>:<entity>`): one field per feature,
its value tagged with its type (`i42`, `f1.5`, `sfoo`, `b1`, `n` for null) so
reads decode without the spec. An aggregate is stored as its step function of
time (`w[[until_ms, value], …, [null, empty]]`, ADR 0020) and every read
evaluates it at the read's time (`at_ms`, default now): a count falls as its
window passes, with no write. Raw fields hold the entity's latest event's
values. `__ts` is the event time of the latest event counted (the watermark),
`__eid` that event, `__n` how many events the state has counted; a value's
age is `at - __ts`. The hash expires after the view's TTL without updates.

Steps are exact for any time after `__ts`. A read at or before it (a request
naming an earlier event time, a burst scored out of order) or of a view that
counts the scored event itself is answered from the window state
(`<prefix>:fs:…`) by the view's `ViewAggregator` when `get_features` is given
the views (`views=`), in a second round trip for those entities only.

Redis Cluster (`RedisSettings.cluster`, `MLBUS_REDIS_CLUSTER=true`): the same
keys, read through `redis.asyncio.cluster.RedisCluster`. Every read is a
single-key command (HGETALL/HMGET/GET) and the pipelines are non-transactional,
so redis-py's cluster pipeline splits them by node (one round trip per node, in
parallel) and no CROSSSLOT can arise; a key's slot is CRC16 of the whole key,
so one entity's views spread over the cluster. The feature service's batch
write is the one multi-key step; it has its own cluster path (ADR 0012).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster

from mlbus.config import RedisSettings
from mlbus.errors import InvalidInput, RetryableError
from mlbus.events import Scalar
from mlbus.featurestore._windows import Steps, ViewAggregator, value_at
from mlbus.redis_client import RedisClient, redis_client_at
from mlbus.redis_failures import REDIS_DOWN

TS_FIELD = b"__ts"
EVENT_ID_FIELD = b"__eid"
COUNTED_FIELD = b"__n"
Pipeline = aioredis.client.Pipeline | ClusterPipeline


def encode_value(value: Scalar) -> bytes:
    """A feature value as stored in the online hash (type-tagged, decodable without the spec)."""
    if value is None:
        return b"n"
    if value is True:
        return b"b1"
    if value is False:
        return b"b0"
    if isinstance(value, int):
        return b"i%d" % value
    if isinstance(value, float):
        return b"f" + repr(value).encode()
    return b"s" + value.encode()


def encode_steps(steps: Steps) -> bytes:
    """An aggregate as stored in the online hash: its step function of time (ADR 0020).

    Numbers (the usual case) as `x<until>:<value>;…;:<empty>` — read without a JSON
    parse, which would cost most of a 100-entity read; anything else as `w<JSON>`."""
    parts = []
    for until, value in steps:
        if value is not None and (type(value) is not int and type(value) is not float):
            return b"w" + json.dumps(steps, separators=(",", ":")).encode()
        parts.append(
            (b"" if until is None else b"%d" % until)
            + b":"
            + (
                b""
                if value is None
                else b"%d" % value
                if type(value) is int
                else repr(value).encode()
            )
        )
    return b"x" + b";".join(parts)


def _numbers_at(data: bytes, at_ms: int) -> Scalar:
    """`value_at` of an `x`-encoded step function, reading only up to the step in force."""
    for step in data[1:].split(b";"):
        until, _, value = step.partition(b":")
        if not until or at_ms < int(until):
            if not value:
                return None
            try:
                return int(value)
            except ValueError:
                return float(value)
    return None


_I, _F, _S, _B, _W, _X = ord("i"), ord("f"), ord("s"), ord("b"), ord("w"), ord("x")


def decode_value(data: bytes, at_ms: int | None = None) -> Scalar:
    """A stored value; an aggregate's steps are evaluated at `at_ms` (default now)."""
    tag = data[0]
    if tag == _F:
        return float(data[1:])
    if tag == _I:
        return int(data[1:])
    if tag == _S:
        return data[1:].decode()
    if tag == _B:
        return data[1:] == b"1"
    if tag == _X:
        return _numbers_at(data, _now_ms() if at_ms is None else at_ms)
    if tag == _W:
        return value_at(json.loads(data[1:]), _now_ms() if at_ms is None else at_ms)
    return None


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class FeatureKeys:
    """Every Redis key the feature store uses, under one prefix."""

    prefix: str = "mlbus"

    def online(self, view: str, version: int, entity_id: str) -> str:
        return f"{self.prefix}:fv:{view}:{version}:{entity_id}"

    def state(self, view: str, version: int, entity_id: str) -> str:
        return f"{self.prefix}:fs:{view}:{version}:{entity_id}"

    def spool(self, view: str, version: int) -> str:
        """Offline rows not yet in Parquet (a list, oldest first)."""
        return f"{self.prefix}:fspool:{view}:{version}"

    def spool_lock(self, view: str, version: int) -> str:
        return f"{self.prefix}:fspool-lock:{view}:{version}"

    def state_marker(self) -> str:
        """Present while the window state here is complete (written after a rebuild or on
        a new deployment, never by a batch): missing means Redis lost it (ADR 0012)."""
        return f"{self.prefix}:fs-marker"

    def state_rebuild_lock(self) -> str:
        return f"{self.prefix}:fs-rebuild-lock"

    def state_rebuild_progress(self) -> str:
        """A hash (`replayed`, `total`) while a rebuild runs (`mlbus features rebuild`)."""
        return f"{self.prefix}:fs-rebuild-progress"

    def consistency(self, view: str, version: int) -> str:
        """Served-vs-offline counters (`mlbus.featurestore._consistency`)."""
        return f"{self.prefix}:consistency:{view}:{version}"

    def consistency_examples(self, view: str, version: int) -> str:
        return f"{self.prefix}:consistency-examples:{view}:{version}"


@dataclass(frozen=True, slots=True)
class OnlineFeatures:
    """One entity's values of one view, at a time. Not found: `values` empty, times None.

    `event_time_ms`: the latest event counted (the watermark); `counted`: how many
    events the state had counted (compared with the offline row to tell ingestion
    lag, ADR 0020); `exact`: the read's time is after the watermark, so the
    stored steps gave exact aggregates."""

    entity_id: str
    view: str
    version: int
    values: dict[str, Scalar]
    event_time_ms: int | None
    age_s: float | None
    counted: int | None = None
    exact: bool = True

    @property
    def found(self) -> bool:
        return self.event_time_ms is not None


@dataclass(frozen=True, slots=True)
class FeatureVector:
    """One entity's features across views, keyed `view.feature`, at one time.

    A feature with no online value (entity unknown, expired) is absent from
    both dicts; a stored null is present in `values` as None. `counted[view]`:
    the events the view's state had counted when read (absent: not found).
    """

    entity_id: str
    values: dict[str, Scalar]
    ages_s: dict[str, float]
    counted: dict[str, int] = field(default_factory=dict)


def _names(features: Sequence[str] | None) -> list[bytes] | None:
    return None if features is None else [name.encode() for name in features]


class OnlineStore:
    """Async reads (and the service's writes) of online feature values. `async with` closes it."""

    def __init__(self, client: RedisClient, *, key_prefix: str = "mlbus") -> None:
        """`client`: a single Redis or a Redis Cluster; every command sent works on both."""
        self.client = client
        self.keys = FeatureKeys(key_prefix)
        self._name_cache: dict[bytes, str] = {}
        self._field_cache: dict[bytes, str] = {}  # HGETALL field → feature name, "" if meta

    @property
    def is_cluster(self) -> bool:
        return isinstance(self.client, RedisCluster)

    @classmethod
    def from_settings(
        cls, settings: RedisSettings, *, key_prefix: str | None = None
    ) -> OnlineStore:
        return cls.from_url(
            settings.require_url(),
            key_prefix=key_prefix or settings.key_prefix,
            timeout_s=settings.socket_timeout_s,
            cluster=settings.cluster,
        )

    @classmethod
    def from_url(
        cls, url: str, *, key_prefix: str = "mlbus", timeout_s: float = 2.0, cluster: bool = False
    ) -> OnlineStore:
        """`cluster`: `url` names any node of a Redis Cluster; the others are discovered."""
        client = redis_client_at(
            url,
            cluster=cluster,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            decode_responses=False,
        )
        return cls(client, key_prefix=key_prefix)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> OnlineStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ── reads ────────────────────────────────────────────────────────────────

    async def get(
        self,
        view: str,
        version: int,
        entity_id: str,
        features: Sequence[str] | None = None,
        *,
        at_ms: int | None = None,
    ) -> OnlineFeatures:
        """One entity's values (all of the view's, or `features`) at `at_ms` (default now):
        one HGETALL or HMGET."""
        key = self.keys.online(view, version, entity_id)
        names = _names(features)
        try:
            if names is None:
                raw: Any = await self.client.hgetall(key)
            else:
                raw = await self.client.hmget(key, [TS_FIELD, COUNTED_FIELD, *names])
        except REDIS_DOWN as exc:
            raise RetryableError(f"online store unavailable: {exc}") from exc
        at = _now_ms() if at_ms is None else at_ms
        return self._decode(view, version, entity_id, raw, names, at)

    async def get_many(
        self,
        view: str,
        version: int,
        entity_ids: Sequence[str],
        features: Sequence[str] | None = None,
        *,
        at_ms: int | None = None,
    ) -> list[OnlineFeatures]:
        """Many entities' values of one view at `at_ms` (default now), in `entity_ids`
        order: one pipelined round trip."""
        names = _names(features)
        pipe = self.client.pipeline(transaction=False)
        for entity_id in entity_ids:
            key = self.keys.online(view, version, entity_id)
            if names is None:
                pipe.hgetall(key)
            else:
                pipe.hmget(key, [TS_FIELD, COUNTED_FIELD, *names])
        try:
            replies = await pipe.execute()
        except REDIS_DOWN as exc:
            raise RetryableError(f"online store unavailable: {exc}") from exc
        at = _now_ms() if at_ms is None else at_ms
        return [
            self._decode(view, version, entity_id, raw, names, at)
            for entity_id, raw in zip(entity_ids, replies, strict=True)
        ]

    async def last_event_ids(
        self, view: str, version: int, entity_ids: Sequence[str]
    ) -> dict[str, str | None]:
        """The id of the latest event each entity's online values count (`__eid`), None
        where nothing is stored: lets a caller wait until an event it sent is served."""
        pipe = self.client.pipeline(transaction=False)
        for entity_id in entity_ids:
            pipe.hget(self.keys.online(view, version, entity_id), EVENT_ID_FIELD)
        try:
            replies = await pipe.execute()
        except REDIS_DOWN as exc:
            raise RetryableError(f"online store unavailable: {exc}") from exc
        return {
            entity_id: raw.decode() if raw else None
            for entity_id, raw in zip(entity_ids, replies, strict=True)
        }

    async def get_features(
        self,
        entity_ids: Sequence[str],
        refs: Sequence[str],
        versions: Mapping[str, int],
        *,
        at_ms: int | None = None,
        views: Mapping[str, ViewAggregator] | None = None,
        current: Mapping[str, Scalar] | None = None,
    ) -> list[FeatureVector]:
        """`view.feature` refs for many entities, across views, at `at_ms` (default now):
        one round trip (pipelined), and a second one for the entities the steps cannot
        answer exactly.

        `versions` maps each view to the version to read (from the spec). `views`,
        the views' aggregators, makes every aggregate exact (ADR 0020): a read at or
        before an entity's latest event, or of a view that counts the scored event
        itself, is answered from the window state; `current` holds the scored
        event's source fields for those views (by field name).
        """
        by_view: dict[str, list[str]] = {}
        for ref in refs:
            view, dot, name = ref.partition(".")
            if not dot or not name:
                raise InvalidInput(f"expected a feature as 'view.feature', got {ref!r}")
            if view not in versions:
                raise InvalidInput(f"unknown feature view {view!r} in {ref!r}")
            by_view.setdefault(view, []).append(name)
        plan = [(view, names, _names(names)) for view, names in by_view.items()]
        commands = [
            (
                self.keys.online(view, versions[view], entity_id),
                [TS_FIELD, COUNTED_FIELD, *(encoded or ())],
            )
            for entity_id in entity_ids
            for view, _, encoded in plan
        ]
        try:
            if len(commands) == 1:  # one entity, one view: a pipeline would add ~45 µs
                replies: list[Any] = [await self.client.hmget(*commands[0])]
            else:
                pipe = self.client.pipeline(transaction=False)
                for key, fields in commands:
                    pipe.hmget(key, fields)
                replies = await pipe.execute()
        except REDIS_DOWN as exc:
            raise RetryableError(f"online store unavailable: {exc}") from exc
        at = _now_ms() if at_ms is None else at_ms
        rows: list[OnlineFeatures] = []
        position = 0
        for entity_id in entity_ids:
            for view, _, encoded in plan:
                rows.append(
                    self._decode(view, versions[view], entity_id, replies[position], encoded, at)
                )
                position += 1
        if views is not None:
            wanted = {view: names for view, names, _ in plan}
            await self._exact(rows, wanted, views, at, current or {})
        out: list[FeatureVector] = []
        rows_of = iter(rows)
        for entity_id in entity_ids:
            values: dict[str, Scalar] = {}
            ages: dict[str, float] = {}
            counted: dict[str, int] = {}
            for view, names, _ in plan:
                row = next(rows_of)
                if row.counted is not None:
                    counted[view] = row.counted
                if row.age_s is None:
                    if row.values:  # a view counting the scored event: its windows hold it
                        values.update(
                            (f"{view}.{n}", row.values[n]) for n in names if n in row.values
                        )
                    continue
                for name in names:
                    if name in row.values:
                        values[f"{view}.{name}"] = row.values[name]
                        ages[f"{view}.{name}"] = row.age_s
            out.append(FeatureVector(entity_id, values, ages, counted))
        return out

    async def _exact(
        self,
        rows: list[OnlineFeatures],
        wanted: Mapping[str, Sequence[str]],
        views: Mapping[str, ViewAggregator],
        at_ms: int,
        current: Mapping[str, Scalar],
    ) -> None:
        """Replace, in place, each row the steps cannot answer exactly by what the view's
        aggregator computes from the window state at `at_ms` (one pipelined GET)."""
        todo = [
            i
            for i, row in enumerate(rows)
            if (aggregator := views.get(row.view)) is not None
            and ((row.found and not row.exact) or aggregator.include_current)
        ]
        if not todo:
            return
        pipe = self.client.pipeline(transaction=False)
        for i in todo:
            row = rows[i]
            pipe.get(self.keys.state(row.view, row.version, row.entity_id))
        try:
            states = await pipe.execute()
        except REDIS_DOWN as exc:
            raise RetryableError(f"online store unavailable: {exc}") from exc
        for i, data in zip(todo, states, strict=True):
            row = rows[i]
            aggregator = views[row.view]
            if data is None and not aggregator.include_current:
                continue  # expired between the two reads: as not found
            state = aggregator.load(data)
            scored = current if aggregator.include_current else None
            known = aggregator.aggregates_at(state, at_ms, scored)
            if data is not None:
                known.update(aggregator.last_values(state))
            wm = state.watermark_ms
            rows[i] = OnlineFeatures(
                row.entity_id,
                row.view,
                row.version,
                {name: known[name] for name in wanted[row.view] if name in known},
                wm,
                None if wm is None else max(0.0, (at_ms - wm) / 1000),
                state.counted if data is not None else None,
                aggregator.covers(state, at_ms),
            )

    def _decode(
        self,
        view: str,
        version: int,
        entity_id: str,
        raw: Any,
        names: list[bytes] | None,
        at_ms: int,
    ) -> OnlineFeatures:
        values: dict[str, Scalar] = {}
        cache = self._name_cache
        counted: int | None = None
        if names is None:  # HGETALL: dict of every field
            ts = raw.get(TS_FIELD) if raw else None
            if ts is None:
                return OnlineFeatures(entity_id, view, version, {}, None, None)
            fields = self._field_cache
            for key, data in raw.items():
                name = fields.get(key)
                if name is None:  # "" marks `__ts`, `__eid`, `__n`: not features
                    name = fields[key] = "" if key[:2] == b"__" else key.decode()
                if not name:
                    continue
                # decode_value, inlined: this loop is the per-value cost of every read
                tag = data[0]
                if tag == _X:
                    values[name] = _numbers_at(data, at_ms)
                elif tag == _W:
                    values[name] = value_at(json.loads(data[1:]), at_ms)
                elif tag == _F:
                    values[name] = float(data[1:])
                elif tag == _I:
                    values[name] = int(data[1:])
                elif tag == _S:
                    values[name] = data[1:].decode()
                elif tag == _B:
                    values[name] = data[1:] == b"1"
                else:
                    values[name] = None
            n = raw.get(COUNTED_FIELD)
            counted = None if n is None else int(n)
        else:  # HMGET: [ts, n, *values] in `names` order
            ts = raw[0]
            if ts is None:
                return OnlineFeatures(entity_id, view, version, {}, None, None)
            counted = None if raw[1] is None else int(raw[1])
            for key, value in zip(names, raw[2:], strict=True):
                if value is None:
                    continue
                name = cache.get(key)
                if name is None:
                    name = cache[key] = key.decode()
                values[name] = decode_value(value, at_ms)
        event_ms = int(ts)
        return OnlineFeatures(
            entity_id,
            view,
            version,
            values,
            event_ms,
            max(0.0, (at_ms - event_ms) / 1000),
            counted,
            at_ms > event_ms,
        )

    # ── writes (the feature service) ─────────────────────────────────────────

    def stage_write(
        self,
        pipe: Pipeline,
        view: str,
        version: int,
        entity_id: str,
        values: Mapping[str, Scalar],
        event_time_ms: int,
        event_id: str | None,
        ttl_s: int,
        *,
        steps: Mapping[str, Steps] | None = None,
        counted: int | None = None,
    ) -> None:
        """Queue one entity's whole view on `pipe`: every raw value, each aggregate's
        `steps`, `__ts` (the watermark), `__eid`, `__n` (`counted`), the TTL."""
        key = self.keys.online(view, version, entity_id)
        mapping: dict[str | bytes, bytes] = {
            name: encode_value(value) for name, value in values.items()
        }
        for name, function in (steps or {}).items():
            mapping[name] = encode_steps(function)
        mapping[TS_FIELD] = b"%d" % event_time_ms
        mapping[EVENT_ID_FIELD] = (event_id or "").encode()
        if counted is not None:
            mapping[COUNTED_FIELD] = b"%d" % counted
        pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
        pipe.expire(key, ttl_s)
