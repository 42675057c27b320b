"""The drift service's durable state, in Redis: monitors with their offsets, policy, detections.

Keys (`<p>` is `MLBUS_REDIS_KEY_PREFIX`, `<g>` the consumer group):

    <p>:drift:<g>:partition:<topic>:<partition>  hash: `offset` (last record applied) and
                                                 `monitor:<model>:<version>` → MonitorState JSON
    <p>:drift:<g>:status                         hash: `<model>:<version>:<topic>:<partition>`
                                                 → the monitor's status (`mlbus drift status`)
    <p>:drift:<g>:detections                     list, newest first: recent detections
    <p>:drift:policy:<model>                     last alarm + RetrainPolicy state (all replicas)
    <p>:drift:claim:<detection event id>         the decision on one detection (idempotent)
    <p>:drift:armed:<model>                      the armed retraining trigger (ArmedTrigger JSON):
                                                 waits for labels of the drift, then fires once

The status, detections and armed keys are what `mlbus drift status` and the
console read: they are named once, in `mlbus.driftstatus`, for this writer and
those readers.

A partition's monitors and its offset are written together by one script, and
only forward: a writer whose offset is behind the stored one (a replica that
lost the partition) changes nothing. See docs/adr/0017-drift-service-state.md.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import WatchError

from mlbus import driftstatus
from mlbus.config import RedisSettings
from mlbus.driftstats import PolicyState, RetrainPolicy
from mlbus.errors import RetryableError
from mlbus.redis_client import single_redis_client
from mlbus.redis_failures import REDIS_DOWN

CLAIM_TTL_S = 7 * 86_400

T = TypeVar("T")

# KEYS[1] partition hash; ARGV[1] offset; ARGV[2..] field, value pairs.
# Returns 1 when written, 0 when the stored offset is ahead (another replica owns it now).
_SAVE_PARTITION = """
local stored = tonumber(redis.call('HGET', KEYS[1], 'offset') or '-1')
local offset = tonumber(ARGV[1])
if stored > offset then
  return 0
end
redis.call('HSET', KEYS[1], 'offset', ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
"""

MonitorKey = tuple[str, int]
"""(model, version)."""


@dataclass(frozen=True)
class StoredPartition:
    """A partition's saved state: the last offset applied and its monitors' state JSON."""

    offset: int = -1
    monitors: dict[MonitorKey, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PartitionSnapshot:
    """What one partition writes at a commit."""

    topic: str
    partition: int
    offset: int
    monitors: dict[MonitorKey, str]
    statuses: dict[MonitorKey, str]


@dataclass(frozen=True)
class Claim:
    """What was decided for one detection: publish the alarm? request retraining? why not?"""

    alarm: bool
    trigger: bool
    reason: str
    published: bool = False

    def to_json(self) -> str:
        return json.dumps(
            {
                "alarm": self.alarm,
                "trigger": self.trigger,
                "reason": self.reason,
                "published": self.published,
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Claim:
        doc = json.loads(text)
        return cls(
            bool(doc["alarm"]), bool(doc["trigger"]), str(doc["reason"]), bool(doc["published"])
        )


def decide_claim(
    *,
    policy_doc: dict[str, Any],
    now: datetime,
    cooldown_s: float,
    retrain: RetrainPolicy | None,
    arm: bool = False,
) -> tuple[Claim, dict[str, Any]]:
    """The decision for a new detection of a model, and the model's policy document after it.

    One alarm per `cooldown_s` per model (every replica, every partition and version
    share it), so one drift episode is one `drift.detected`; a fired alarm asks for
    retraining when `retrain` (the spec's RetrainPolicy, None for `trigger: alert`) allows.
    With `arm`, an allowed retraining is armed, not fired: the policy records it only
    when it fires (`advance_trigger`), so it is not recorded here.
    """
    last_alarm = policy_doc.get("last_alarm")
    if last_alarm is not None:
        since_s = (now - datetime.fromisoformat(last_alarm)).total_seconds()
        if since_s < cooldown_s:
            reason = f"cooldown: the last alarm was {since_s:.0f}s ago (cooldown_s {cooldown_s:g})"
            return Claim(alarm=False, trigger=False, reason=reason), policy_doc
    updated = {**policy_doc, "last_alarm": now.isoformat()}
    if retrain is None:
        return Claim(alarm=True, trigger=False, reason="trigger is alert"), updated
    state = PolicyState.model_validate(policy_doc.get("retrain") or {})
    allowed, reason = retrain.decide(state, now)
    if allowed and arm:
        return Claim(alarm=True, trigger=True, reason="armed: waiting for labels"), updated
    if allowed:
        updated["retrain"] = retrain.record(state, now).model_dump(mode="json")
    return Claim(alarm=True, trigger=allowed, reason=reason), updated


# ── the armed retraining trigger (one per model, shared by replicas) ─────────


@dataclass(frozen=True)
class FireDecision:
    """What the RetrainPolicy said when an armed trigger's evidence was complete."""

    allowed: bool
    reason: str
    by_deadline: bool
    """The maximum wait passed before enough labels arrived."""


@dataclass(frozen=True)
class ArmedTrigger:
    """A retraining a detection asked for, waiting for labelled evidence of the drift.

    `since` is the detection window's start (the predictions' clock): labels of
    predictions made at or after it count. `first_label_time` is the earliest event
    time of the labels of predictions made after the detection (`window_end`), in the
    labels' clock, which the trainer filters on: where the training window starts.
    """

    detection_id: str
    model: str
    version: int
    since: datetime
    window_end: datetime
    armed_at: datetime
    deadline: datetime
    min_labels: int
    traceparent: list[tuple[str, str]] = field(default_factory=list)
    """The drift.detected span's trace context, so the training request continues it."""
    labels: int = 0
    first_label_time: datetime | None = None
    decision: FireDecision | None = None
    firing_until: datetime | None = None
    """A replica is publishing the request until then (a lease: it may have crashed)."""

    def evidence(self, joined: Sequence[tuple[float, datetime]]) -> tuple[int, datetime | None]:
        """Of labels joined as (prediction time, label event time): how many count, and
        the earliest event time of those of predictions made after the detection.

        Labels of predictions made before `since` are no evidence of the drift. The
        training window starts at the first label of a prediction made after
        `window_end`: the detection window (window_size records of one partition,
        several times as much traffic) also holds predictions from before the drift.
        """
        since, detected = self.since.timestamp(), self.window_end.timestamp()
        counted = sum(1 for at, _ in joined if at >= since)
        drifted = [label_time for at, label_time in joined if at >= detected]
        return counted, min(drifted) if drifted else None

    def to_json(self) -> str:
        doc = {
            "detection_id": self.detection_id,
            "model": self.model,
            "version": self.version,
            "since": self.since.isoformat(),
            "window_end": self.window_end.isoformat(),
            "armed_at": self.armed_at.isoformat(),
            "deadline": self.deadline.isoformat(),
            "min_labels": self.min_labels,
            "traceparent": [list(pair) for pair in self.traceparent],
            "labels": self.labels,
            "first_label_time": _iso(self.first_label_time),
            "decision": None if self.decision is None else vars(self.decision),
            "firing_until": _iso(self.firing_until),
        }
        return json.dumps(doc)

    @classmethod
    def from_json(cls, text: str | bytes) -> ArmedTrigger:
        doc = json.loads(text)
        decision = doc.get("decision")
        return cls(
            detection_id=str(doc["detection_id"]),
            model=str(doc["model"]),
            version=int(doc["version"]),
            since=datetime.fromisoformat(doc["since"]),
            window_end=datetime.fromisoformat(doc["window_end"]),
            armed_at=datetime.fromisoformat(doc["armed_at"]),
            deadline=datetime.fromisoformat(doc["deadline"]),
            min_labels=int(doc["min_labels"]),
            traceparent=[(str(k), str(v)) for k, v in doc.get("traceparent") or []],
            labels=int(doc.get("labels", 0)),
            first_label_time=_from_iso(doc.get("first_label_time")),
            decision=None if decision is None else FireDecision(**decision),
            firing_until=_from_iso(doc.get("firing_until")),
        )


def advance_trigger(
    armed: ArmedTrigger,
    policy_doc: dict[str, Any],
    *,
    labels: int,
    first_label_time: datetime | None,
    now: datetime,
    lease_s: float,
    retrain: RetrainPolicy | None,
) -> tuple[ArmedTrigger, dict[str, Any], FireDecision | None]:
    """Add evidence to an armed trigger; decide to fire when it is complete or too late.

    Returns the trigger and policy document to store, and the decision when the
    caller is the one to publish (it holds the lease until `firing_until`). The
    RetrainPolicy is asked (and records the retraining) at firing time, so the
    cooldown and hourly cap count from when the request goes out. Decided once: a
    replica that takes over after an expired lease publishes the same decision.
    """
    first = armed.first_label_time
    if first_label_time is not None and (first is None or first_label_time < first):
        first = first_label_time
    armed = replace(armed, labels=armed.labels + labels, first_label_time=first)
    if armed.firing_until is not None and armed.firing_until > now:
        return armed, policy_doc, None  # another replica is publishing it
    decision = armed.decision
    if decision is None:
        enough = armed.labels >= armed.min_labels
        if not enough and now < armed.deadline:
            return armed, policy_doc, None
        allowed, reason = True, "allowed"
        if retrain is not None:
            state = PolicyState.model_validate(policy_doc.get("retrain") or {})
            allowed, reason = retrain.decide(state, now)
            if allowed:
                retrained = retrain.record(state, now).model_dump(mode="json")
                policy_doc = {**policy_doc, "retrain": retrained}
        decision = FireDecision(allowed=allowed, reason=reason, by_deadline=not enough)
    armed = replace(armed, decision=decision, firing_until=now + timedelta(seconds=lease_s))
    return armed, policy_doc, decision


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _from_iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(eq=False)
class DriftStore:
    """The drift service's Redis access (`mlbus drift status` reads the same keys): a
    client, the key space it writes in (`prefix`, `group`) and how many detections it keeps."""

    client: aioredis.Redis
    _: KW_ONLY
    prefix: str = "mlbus"
    group: str = driftstatus.DEFAULT_GROUP
    detections_kept: int = 50
    _save: AsyncScript = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._save = self.client.register_script(_SAVE_PARTITION)

    @classmethod
    def from_settings(
        cls, redis: RedisSettings, *, group: str, detections_kept: int = 50
    ) -> DriftStore:
        client = single_redis_client(redis)  # multi-key scripts: not on a cluster yet
        return cls(client, prefix=redis.key_prefix, group=group, detections_kept=detections_kept)

    async def aclose(self) -> None:
        await self.client.aclose()

    # ── keys ─────────────────────────────────────────────────────────────────

    def partition_key(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:drift:{self.group}:partition:{topic}:{partition}"

    @property
    def status_key(self) -> str:
        return driftstatus.status_key(self.prefix, self.group)

    @property
    def detections_key(self) -> str:
        return driftstatus.detections_key(self.prefix, self.group)

    def policy_key(self, model: str) -> str:
        return f"{self.prefix}:drift:policy:{model}"

    def claim_key(self, detection_id: str) -> str:
        return f"{self.prefix}:drift:claim:{detection_id}"

    def armed_key(self, model: str) -> str:
        return driftstatus.armed_key(self.prefix, model)

    # ── partitions ───────────────────────────────────────────────────────────

    async def load_partition(self, topic: str, partition: int) -> StoredPartition:
        try:
            raw = await self.client.hgetall(self.partition_key(topic, partition))
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable loading drift state: {exc}") from exc
        offset = -1
        monitors: dict[MonitorKey, str] = {}
        for name, value in raw.items():
            key, text = _text(name), _text(value)
            if key == "offset":
                offset = int(text)
            elif key.startswith("monitor:"):
                model, _, version = key.removeprefix("monitor:").rpartition(":")
                monitors[(model, int(version))] = text
        return StoredPartition(offset, monitors)

    async def stored_offset(self, topic: str, partition: int) -> int:
        try:
            value = await self.client.hget(self.partition_key(topic, partition), "offset")
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable reading drift state: {exc}") from exc
        return -1 if value is None else int(value)

    async def save(self, snapshots: Sequence[PartitionSnapshot]) -> list[bool]:
        """Write each partition's monitors with its offset; False where another replica is ahead."""
        if not snapshots:
            return []
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for snap in snapshots:
                    args: list[str | int] = [snap.offset]
                    for (model, version), state in snap.monitors.items():
                        args += [f"monitor:{model}:{version}", state]
                    await self._save(
                        keys=[self.partition_key(snap.topic, snap.partition)],
                        args=args,
                        client=pipe,
                    )
                statuses = _status_fields(snapshots)
                if statuses:
                    pipe.hset(self.status_key, mapping=statuses)  # type: ignore[arg-type]
                results = await pipe.execute()
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable saving drift state: {exc}") from exc
        return [bool(r) for r in results[: len(snapshots)]]

    async def save_statuses(self, snapshots: Sequence[PartitionSnapshot]) -> None:
        """Only the monitors' status (for `mlbus drift status`), e.g. of an idle partition."""
        statuses = _status_fields(snapshots)
        if not statuses:
            return
        try:
            await self.client.hset(self.status_key, mapping=statuses)  # type: ignore[arg-type]
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable saving drift status: {exc}") from exc

    # ── detections and the per-model policy ──────────────────────────────────

    async def claim(
        self,
        detection_id: str,
        model: str,
        *,
        now: datetime,
        cooldown_s: float,
        retrain: RetrainPolicy | None,
        arm: bool = False,
    ) -> Claim:
        """Decide a detection once: a replay (same id) gets the first decision back."""
        claim_key, policy_key = self.claim_key(detection_id), self.policy_key(model)

        async def decide(pipe: Pipeline) -> Claim:
            existing = await pipe.get(claim_key)
            if existing is not None:
                await pipe.reset()  # type: ignore[no-untyped-call]
                return Claim.from_json(existing)
            raw_policy = await pipe.get(policy_key)
            policy_doc = json.loads(raw_policy) if raw_policy else {}
            claim, updated = decide_claim(
                policy_doc=policy_doc, now=now, cooldown_s=cooldown_s, retrain=retrain, arm=arm
            )
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.set(claim_key, claim.to_json(), ex=CLAIM_TTL_S)
            pipe.set(policy_key, json.dumps(updated))
            await pipe.execute()
            return claim

        return await self._watched((claim_key, policy_key), decide, "deciding a detection")

    async def arm(self, trigger: ArmedTrigger) -> ArmedTrigger:
        """Arm `trigger` unless its model has one armed already (kept: it started earlier)."""
        key = self.armed_key(trigger.model)
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(key, trigger.to_json(), nx=True)
                pipe.get(key)
                _, stored = await pipe.execute()
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable arming a retraining: {exc}") from exc
        return ArmedTrigger.from_json(stored)

    async def armed(self, model: str) -> ArmedTrigger | None:
        try:
            raw = await self.client.get(self.armed_key(model))
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable reading the armed trigger: {exc}") from exc
        return None if raw is None else ArmedTrigger.from_json(raw)

    async def advance(
        self,
        model: str,
        *,
        joined: Sequence[tuple[float, datetime]],
        clock: Callable[[], datetime],
        lease_s: float,
        retrain: RetrainPolicy | None,
    ) -> tuple[ArmedTrigger, FireDecision | None] | None:
        """`advance_trigger` on the stored trigger, atomically with the model's policy.

        The evidence is counted against the trigger read inside the transaction, and
        the time is read after it: a caller's earlier view may be of a trigger since
        fired and replaced, and a time from before a retry may precede the firing that
        made it retry (the RetrainPolicy would see the clock go backwards and refuse).
        """
        armed_key, policy_key = self.armed_key(model), self.policy_key(model)

        async def add_evidence(pipe: Pipeline) -> tuple[ArmedTrigger, FireDecision | None] | None:
            raw = await pipe.get(armed_key)
            if raw is None:
                await pipe.reset()  # type: ignore[no-untyped-call]
                return None
            raw_policy = await pipe.get(policy_key)
            policy_doc = json.loads(raw_policy) if raw_policy else {}
            stored = ArmedTrigger.from_json(raw)
            labels, first_label_time = stored.evidence(joined)
            armed, updated, decision = advance_trigger(
                stored,
                policy_doc,
                labels=labels,
                first_label_time=first_label_time,
                now=clock(),
                lease_s=lease_s,
                retrain=retrain,
            )
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.set(armed_key, armed.to_json())
            if updated is not policy_doc:
                pipe.set(policy_key, json.dumps(updated))
            await pipe.execute()
            return armed, decision

        return await self._watched(
            (armed_key, policy_key), add_evidence, "advancing the armed trigger"
        )

    async def disarm(self, model: str, detection_id: str) -> None:
        """Drop the model's armed trigger once fired (only if it is still this detection's)."""
        key = self.armed_key(model)

        async def drop(pipe: Pipeline) -> None:
            raw = await pipe.get(key)
            if raw is None or ArmedTrigger.from_json(raw).detection_id != detection_id:
                await pipe.reset()  # type: ignore[no-untyped-call]
                return
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.delete(key)
            await pipe.execute()

        await self._watched((key,), drop, "disarming a retraining")

    async def _watched(
        self, keys: Sequence[str], attempt: Callable[[Pipeline], Awaitable[T]], doing: str
    ) -> T:
        """`attempt` on a pipeline that WATCHes `keys`: it reads, then writes in MULTI/EXEC.

        When another replica changed a key in between (a claim decided, evidence
        added), EXEC fails with WatchError and the attempt runs again on what is
        stored now. Redis down is a RetryableError naming what was being done.
        """
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(*keys)
                        return await attempt(pipe)
                    except WatchError:
                        continue
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable {doing}: {exc}") from exc

    async def mark_published(self, detection_id: str, claim: Claim) -> None:
        published = Claim(claim.alarm, claim.trigger, claim.reason, published=True)
        try:
            await self.client.set(self.claim_key(detection_id), published.to_json(), ex=CLAIM_TTL_S)
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable recording a detection: {exc}") from exc

    async def record_detection(self, summary: dict[str, Any]) -> None:
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.lpush(self.detections_key, json.dumps(summary))
                pipe.ltrim(self.detections_key, 0, self.detections_kept - 1)
                await pipe.execute()
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable recording a detection: {exc}") from exc


def _status_fields(snapshots: Sequence[PartitionSnapshot]) -> dict[str, str]:
    now = datetime.now(UTC).isoformat()
    return {
        f"{model}:{version}:{snap.topic}:{snap.partition}": json.dumps(
            {
                "model": model,
                "version": version,
                "source": f"{snap.topic}:{snap.partition}",
                "offset": snap.offset,
                "updated_at": now,
                "status": json.loads(status),
            }
        )
        for snap in snapshots
        for (model, version), status in snap.statuses.items()
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
