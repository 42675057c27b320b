"""The label join: predictions wait in Redis for the label of the event they scored.

A prediction that names the event it scored (`PredictionLogged.scored_event_id`,
e.g. a transaction id) is kept as `version|score|time` under that id. When a label
event of the spec's labels source arrives (`labels.event_id_field` names the
labelled event, `labels.label_field` holds the label), the pending prediction
is looked up and turned into an error for the performance detector: the
squared error of the score (classification, Brier) or |y - ŷ| (regression),
the metric the version's profile measured its holdout with, in the group of its
label (a classifier's positives and negatives are tested apart, ADR 0031).

Bounded twice: entries live in time buckets (`<p>:drift:pending:<model>:<n>`,
one hash per bucket of ttl/8) that expire `ttl_s` after the bucket closes, and
no more than `max_entries` are kept per model (beyond that new predictions are
not kept, and counted). One script call per batch writes, one per batch reads.
Writes are buffered and go out at the consumer's commit (`flush`), so a lookup
reads the buffer first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import redis.asyncio as aioredis
from pydantic_core import to_json

from mlbus.driftstats import outcome_error, outcome_group
from mlbus.errors import RetryableError
from mlbus.events import Scalar
from mlbus.profiles import ErrorMetric
from mlbus.redis_failures import REDIS_DOWN

BUCKETS_PER_TTL = 8

# KEYS: live buckets, newest first. ARGV[1] expire-at (s), ARGV[2] max entries,
# ARGV[3] a JSON array of field, value pairs (one argument: packing each pair as its own
# argument cost the client more than the rest of the drift work). Returns how many pairs
# were not kept (full).
_ADD = """
local total = 0
for _, key in ipairs(KEYS) do
  total = total + redis.call('HLEN', key)
end
local flat = cjson.decode(ARGV[3])
local room = tonumber(ARGV[2]) - total
local pairs = #flat / 2
local kept = math.max(0, math.min(room, pairs))
for i = 0, kept - 1 do
  redis.call('HSET', KEYS[1], flat[1 + 2 * i], flat[2 + 2 * i])
end
if kept > 0 then
  redis.call('EXPIREAT', KEYS[1], ARGV[1])
end
return pairs - kept
"""

# KEYS: live buckets, newest first; ARGV: event ids. Returns one value (or false) per id.
_LOOKUP = """
local out = {}
for i, id in ipairs(ARGV) do
  local found = false
  for _, key in ipairs(KEYS) do
    found = redis.call('HGET', key, id)
    if found then break end
  end
  out[i] = found
end
return out
"""

_FORGET = """
for _, key in ipairs(KEYS) do
  redis.call('HDEL', key, unpack(ARGV))
end
return #ARGV
"""


class Pending(NamedTuple):
    """A prediction waiting for its label: which version made it, its score, and when.

    Kept as `version|score|at` (`PendingPredictions.keep` writes it, `decode` reads it).

    `at` (epoch seconds of the prediction) tells whether the label is evidence of a
    drift detected since (the armed retraining counts those); entries written before
    it existed have none and are not counted.
    """

    version: int
    score: float
    at: float | None = None

    @classmethod
    def decode(cls, raw: bytes | str) -> Pending:
        text = raw.decode() if isinstance(raw, bytes) else raw
        version, score, *rest = text.split("|")
        return cls(int(version), float(score), float(rest[0]) if rest else None)


class Outcome(NamedTuple):
    """A joined label: the prediction's error and the outcome group it is tested in."""

    group: str
    error: float


def label_outcome(
    label: Scalar, score: float, *, metric: ErrorMetric, positive: str
) -> Outcome | None:
    """The outcome of one prediction given its label (`outcome_error`, `outcome_group`:
    the definitions the trainer's holdout errors use); None when the label cannot be read.

    brier (a classifier): the label is 1 when it reads as the model's positive class
    (booleans as "true"/"false", anything else as its string), else 0; absolute (a
    regressor): the label must be a finite number.
    """
    if label is None:
        return None
    if metric == "absolute":
        if isinstance(label, bool) or not isinstance(label, int | float):
            return None
        actual = float(label)
        if not math.isfinite(actual):
            return None
    else:
        text = ("true" if label else "false") if isinstance(label, bool) else str(label)
        actual = 1.0 if text == positive else 0.0
    return Outcome(outcome_group(metric, actual), outcome_error(metric, actual, score))


class PendingPredictions:
    """Predictions waiting for labels, in Redis (shared by replicas, survives restarts)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        ttl_s: int,
        max_entries: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.bucket_s = max(60, math.ceil(ttl_s / BUCKETS_PER_TTL))
        self._clock = clock
        self._add = client.register_script(_ADD)
        self._lookup = client.register_script(_LOOKUP)
        self._forget = client.register_script(_FORGET)
        self._buffer: dict[str, dict[str, str]] = {}  # model → event id → encoded
        self._joined: dict[str, list[str]] = {}
        self.not_kept = 0

    def _buckets(self, model: str) -> tuple[list[str], int]:
        """Keys of the live buckets of `model`, newest first, and the newest's expiry time."""
        now = int(self._clock())
        newest = now // self.bucket_s
        count = math.ceil(self.ttl_s / self.bucket_s) + 1
        keys = [
            f"{self.prefix}:drift:pending:{model}:{n}" for n in range(newest, newest - count, -1)
        ]
        return keys, (newest + 1) * self.bucket_s + self.ttl_s

    def keep(self, model: str, version: int, kept: Iterable[tuple[str, float, float]]) -> None:
        """Keep predictions of one version for the join: (event id, score, epoch seconds
        logged), encoded at once (one per prediction: no record built) and written at
        `flush`."""
        prefix = f"{version}|"
        self._buffer.setdefault(model, {}).update(
            {event_id: f"{prefix}{score!r}|{at:.3f}" for event_id, score, at in kept}
        )

    async def lookup(self, model: str, event_ids: Sequence[str]) -> dict[str, Pending]:
        """The pending predictions among `event_ids` (buffered ones first, then Redis)."""
        found: dict[str, Pending] = {}
        buffered = self._buffer.get(model, {})
        missing = []
        for event_id in event_ids:
            if event_id in buffered:
                found[event_id] = Pending.decode(buffered[event_id])
            else:
                missing.append(event_id)
        if missing:
            keys, _ = self._buckets(model)
            try:
                values = await self._lookup(keys=keys, args=missing)
            except REDIS_DOWN as exc:
                raise RetryableError(f"Redis unreachable joining labels: {exc}") from exc
            for event_id, value in zip(missing, values, strict=True):
                if value:
                    found[event_id] = Pending.decode(value)
        return found

    def joined(self, model: str, event_id: str) -> None:
        """A label used this prediction: forget it after the next state save."""
        self._joined.setdefault(model, []).append(event_id)

    async def flush(self) -> int:
        """Write buffered predictions; returns how many were not kept (max_entries reached)."""
        buffer, self._buffer = self._buffer, {}
        dropped = 0
        try:
            for model, entries in buffer.items():
                keys, expire_at = self._buckets(model)
                flat = [text for entry in entries.items() for text in entry]
                # pydantic's encoder: ~4× quicker than json.dumps on thousands of strings
                args: list[bytes | int] = [expire_at, self.max_entries, to_json(flat)]
                dropped += int(await self._add(keys=keys, args=args))
        except REDIS_DOWN as exc:
            for model, entries in buffer.items():  # keep them for the next try
                self._buffer.setdefault(model, {}).update(entries)
            raise RetryableError(f"Redis unreachable keeping predictions: {exc}") from exc
        self.not_kept += dropped
        return dropped

    async def forget_joined(self) -> None:
        """Delete predictions whose label arrived (best effort: they expire anyway)."""
        joined, self._joined = self._joined, {}
        for model, ids in joined.items():
            keys, _ = self._buckets(model)
            try:
                for start in range(0, len(ids), 1000):  # Lua's unpack has a stack limit
                    await self._forget(keys=keys, args=ids[start : start + 1000])
            except REDIS_DOWN:
                return
