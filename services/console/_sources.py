"""Everything the console reads, each through the contract that owns it.

- the registry over gRPC (`mlbus.registry_client`), read-only unless a person's
  token comes with a promotion or a rollback;
- Redis through `mlbus.featurestore` (online values, consistency counters),
  `mlbus.driftstatus` (the drift service's published state),
  `mlbus.outcomesstatus` (the outcomes service's) and `mlbus.labeling` (the
  labeling queue, and a person's label sent on to the labels source topic);
- span files through `mlbus.telemetry.spans`;
- the run state of `mlbus up` (`mlbus.runstate`) for component health.

Kafka topics are read by `_topics.TopicReader`. No service is imported.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlbus.config import MlbusSettings
from mlbus.driftstatus import read_drift_state
from mlbus.errors import InvalidInput, RetryableError
from mlbus.featurestore import OnlineFeatures, OnlineStore, ViewConsistency, read_consistency
from mlbus.labeling import read_queue, read_request, submit_label
from mlbus.outcomesstatus import read_outcomes_status
from mlbus.redis_failures import REDIS_DOWN
from mlbus.registry_client import (
    AliasChange,
    Lineage,
    ModelSummary,
    ModelVersionInfo,
    RegistryClient,
)
from mlbus.runstate import StatusReport, check_run, live_state
from mlbus.spec import ProjectSpec, load_spec
from mlbus.telemetry.spans import SpanFileTail, SpanRecord, Trace, assemble_trace, span_files

from ._settings import ConsoleSettings

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 2.0
SEND_TIMEOUT_S = 10.0
"""A label's trip to Kafka: a producer's start, the send and its acknowledgement."""


@dataclass(frozen=True)
class EntityFeatures:
    entity_id: str
    views: tuple[OnlineFeatures, ...]


HEALTH_CHECK = "grpc.health.v1.Health/Check"
"""Root span of every gRPC health check (`mlbus status`, the console's refresh)."""


def kind_of(trace: Trace) -> str:
    """ "loop" (training and registration in one trace: drift → retraining → reload),
    "data" (a record across services), or "probe" (the console's own reads, one service)."""
    services = set(trace.services)
    if trace.root_name == HEALTH_CHECK or "mlbus-console" in services or len(services) < 2:
        return "probe"
    if {"mlbus-trainer", "mlbus-registry"} <= services:
        return "loop"
    return "data"


DEFAULT_MAX_SPANS = 50_000
"""Spans the console keeps (`MLBUS_CONSOLE_MAX_SPANS`). Measured on the soak's span files,
a kept span costs ~1.3 kB with its share of the assembled trace, so ~67 MB; at the soak's
~70 spans/s (3 MB/min) that is the last twelve minutes or so."""
READ_CHUNK_BYTES = 4 << 20
"""Read per step of a file that grew a lot (a console started on a day of spans); the cap
is applied after each step, so memory holds the cap and one step, not the whole file."""
EVICTED_REMEMBERED = 10_000
"""Ids of dropped traces remembered, so a late span of one (a parent flushed after its
children) is dropped too instead of starting a trace without its beginning."""


@dataclass(frozen=True)
class SpanView:
    """What one read of the span files left: the traces kept, newest first, and what was not."""

    traces: list[Trace]
    kinds: dict[str, list[Trace]]
    health_checks: int
    """Health checks as root spans: counted, not kept."""
    dropped_traces: int
    """Traces dropped, oldest first, to keep at most `max_spans` spans."""
    max_spans: int


class _KeptTrace:
    __slots__ = ("kind", "spans", "start_ns", "trace")

    def __init__(self) -> None:
        self.spans: dict[str, SpanRecord] = {}
        self.start_ns = sys.maxsize
        self.trace: Trace | None = None
        """Assembled at the end of the read that changed it (None until then)."""
        self.kind = "probe"


class SpanCache:
    """Traces from the span files, each file read only where it grew since the last read.

    Every file has a `SpanFileTail`; a read parses the lines appended since the last,
    and only the traces that received spans are assembled again. At most `max_spans`
    spans are kept: past that, whole traces go, the oldest (by start) first, and a
    late span of a trace already dropped is dropped too, so a kept trace never misses
    its beginning. A file that went away, or was replaced or truncated, starts the
    cache over from byte 0 of every file (what a console started now would hold).

    Health checks as root spans (processes before probes went untraced wrote one
    every few seconds per service) are counted, not kept: they would be most of
    the traces and none of the loop.
    """

    def __init__(self, folder: Path, max_spans: int = DEFAULT_MAX_SPANS) -> None:
        self.folder = folder
        self.max_spans = max_spans
        self._lock = threading.Lock()
        self._tails: dict[Path, SpanFileTail] = {}
        self._kept: dict[str, _KeptTrace] = {}
        self._kept_spans = 0
        self._evicted: dict[str, None] = {}
        self._health_checks = 0
        self._dropped_traces = 0
        self._forgotten_bytes = 0
        self._changed = True
        self._view: SpanView | None = None

    @property
    def bytes_read(self) -> int:
        """Bytes read from the span files since the cache was made (the work it did)."""
        return self._forgotten_bytes + sum(tail.bytes_read for tail in self._tails.values())

    @property
    def kinds(self) -> dict[str, list[Trace]]:
        return self.view().kinds

    @property
    def health_checks(self) -> int:
        return self.view().health_checks

    @property
    def dropped_traces(self) -> int:
        return self.view().dropped_traces

    def view(self) -> SpanView:
        """The last read (by the collector's refresh); read now if never read."""
        view = self._view
        if view is None:
            with self._lock:
                view = self._view or self._read()
        return view

    def latest(self) -> list[Trace]:
        """The traces as last read (by the collector's refresh); read now if never read."""
        return self.view().traces

    def traces(self) -> list[Trace]:
        """The kept traces, newest first, after reading what the files gained."""
        with self._lock:
            return self._read().traces

    def _read(self) -> SpanView:
        files = span_files(self.folder)
        if not set(self._tails) <= set(files):  # a file went away: its spans go with it
            self._start_over()
        for path in files:
            tail = self._tails.setdefault(path, SpanFileTail(path))
            while True:
                records = tail.read(READ_CHUNK_BYTES)
                if tail.restarted:  # replaced or truncated: what was read from it is void
                    self._start_over()
                    return self._read()  # once: a new tail never restarts
                self._keep(records)
                self._evict()
                if tail.at_end:
                    break
        if self._changed or self._view is None:
            self._view = self._assemble()
            self._changed = False
        return self._view

    def _start_over(self) -> None:
        self._forgotten_bytes = self.bytes_read
        self._tails.clear()
        self._kept.clear()
        self._evicted.clear()
        self._kept_spans = self._health_checks = self._dropped_traces = 0
        self._changed = True

    def _keep(self, records: list[SpanRecord]) -> None:
        for record in records:
            if _health_check(record):
                self._health_checks += 1
                self._changed = True
                continue
            if record.trace_id in self._evicted:
                continue
            kept = self._kept.get(record.trace_id)
            if kept is None:
                kept = self._kept[record.trace_id] = _KeptTrace()
            if record.span_id in kept.spans:  # a span written twice counts once (as read_spans)
                continue
            kept.spans[record.span_id] = record
            kept.start_ns = min(kept.start_ns, record.start_ns)
            kept.trace = None
            self._kept_spans += 1
            self._changed = True

    def _evict(self) -> None:
        if self._kept_spans <= self.max_spans:
            return
        for trace_id in sorted(self._kept, key=lambda t: self._kept[t].start_ns):
            gone = self._kept.pop(trace_id)
            self._kept_spans -= len(gone.spans)
            self._dropped_traces += 1
            self._evicted[trace_id] = None
            if self._kept_spans <= self.max_spans:
                break
        while len(self._evicted) > EVICTED_REMEMBERED:
            del self._evicted[next(iter(self._evicted))]
        self._changed = True

    def _assemble(self) -> SpanView:
        kinds: dict[str, list[Trace]] = {"loop": [], "data": [], "probe": []}
        traces: list[Trace] = []
        for trace_id, kept in sorted(
            self._kept.items(), key=lambda item: item[1].start_ns, reverse=True
        ):
            if kept.trace is None:  # received spans in this read
                kept.trace = assemble_trace(trace_id, kept.spans.values())
                kept.kind = kind_of(kept.trace)
            traces.append(kept.trace)
            kinds[kept.kind].append(kept.trace)
        return SpanView(
            traces=traces,
            kinds=kinds,
            health_checks=self._health_checks,
            dropped_traces=self._dropped_traces,
            max_spans=self.max_spans,
        )


def _health_check(record: SpanRecord) -> bool:
    return record.parent_span_id is None and record.name == HEALTH_CHECK


class ConsoleSources:
    """The console's read paths (and the two writes a token allows), one object per process."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        self.registry_address = settings.registry_address or _registry_address(settings)
        self.registry = RegistryClient(self.registry_address, timeout_s=settings.registry_timeout_s)
        self.store = OnlineStore.from_settings(settings.redis)
        self.spans = SpanCache(settings.data.spans, settings.max_spans)
        state = live_state(settings.data)
        spec_path = settings.spec or (state.spec if state is not None else None)
        self.spec: ProjectSpec | None = load_spec(spec_path) if spec_path else None

    async def aclose(self) -> None:
        await self.registry.close()
        await self.store.aclose()

    # ── registry ─────────────────────────────────────────────────────────────

    async def models(self) -> list[ModelSummary]:
        return await self.registry.list_models()

    async def versions(self, model: str) -> list[ModelVersionInfo]:
        return await self.registry.list_versions(model)

    async def lineage(self, model: str, version: int) -> Lineage:
        return await self.registry.lineage(model, version)

    async def alias_history(self, model: str) -> list[AliasChange]:
        return await self.registry.alias_history(model)

    async def move_alias(
        self,
        model: str,
        alias: str,
        version: int | None,
        *,
        token: str,
        reason: str,
        actor: str,
    ) -> AliasChange:
        """Promote (`version` given) or roll back (`version` None) with the person's token.

        A client of its own per call: the token travels in that call's metadata
        and is never kept by the console.
        """
        async with RegistryClient(
            self.registry_address, token=token, timeout_s=self.settings.registry_timeout_s
        ) as client:
            if version is None:
                return await client.rollback(model, alias, reason=reason, actor=actor)
            return await client.set_alias(model, alias, version, reason=reason, actor=actor)

    async def check_token(self, token: str) -> None:
        """Raise Unauthenticated unless the registry accepts `token` for changes (a label is
        a change made on the registry's authority; the console keeps no token of its own)."""
        async with RegistryClient(
            self.registry_address, token=token, timeout_s=self.settings.registry_timeout_s
        ) as client:
            await client.check_token()

    # ── Redis ────────────────────────────────────────────────────────────────

    async def outcomes_status(self) -> dict[str, Any] | None:
        return await read_outcomes_status(self.settings.redis, self.settings.outcomes_group)

    async def labeling_queue(self, limit: int) -> dict[str, Any]:
        """The queue's counts and its `limit` most urgent open requests (`mlbus.labeling`)."""
        spec = self._spec_for("the labeling queue")
        try:
            return await read_queue(self.settings.redis, spec.model.name, limit)
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable reading the labeling queue: {exc}") from exc

    async def send_label(self, scored_event_id: str, value: str) -> str:
        """A person's label for a queued request, checked against the labels source's contract
        (InvalidInput names the problem) and sent to its topic; returns the topic."""
        spec = self._spec_for("labels")
        try:
            item = await read_request(self.settings.redis, spec.model.name, scored_event_id)
        except REDIS_DOWN as exc:
            raise RetryableError(f"Redis unreachable reading the labeling queue: {exc}") from exc
        if item is None or not item.get("entity_id"):
            raise InvalidInput(
                f"no labeling request waits for {scored_event_id!r}: it was answered, expired "
                "or dropped since the page was drawn"
            )
        from aiokafka.errors import KafkaError

        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                topic, _ = await submit_label(
                    self.settings.kafka,
                    None,
                    spec,
                    scored_event_id=scored_event_id,
                    value=value,
                    entity_id=str(item["entity_id"]),
                    extra={},
                )
        except (KafkaError, OSError, TimeoutError) as exc:
            raise RetryableError(f"the label could not be sent to Kafka: {exc}") from exc
        return topic

    def _spec_for(self, what: str) -> ProjectSpec:
        if self.spec is None:
            raise InvalidInput(f"the console runs without a spec (MLBUS_SPEC): no {what}")
        return self.spec

    async def drift_state(self, detections: int = 20) -> dict[str, Any]:
        return await read_drift_state(
            self.settings.redis, self.settings.drift_group, detections=detections
        )

    def views(self) -> list[tuple[str, int, tuple[str, ...]]]:
        """(view, version, feature names) of the spec's views the model uses."""
        if self.spec is None:
            return []
        return [
            (name, self.spec.features[name].version, self.spec.features[name].feature_names())
            for name in self.spec.model_views()
        ]

    async def entity(self, entity_id: str) -> EntityFeatures:
        rows = await asyncio.gather(
            *(self.store.get(view, version, entity_id) for view, version, _ in self.views())
        )
        return EntityFeatures(entity_id, tuple(rows))

    async def consistency(self) -> list[ViewConsistency]:
        return list(
            await asyncio.gather(
                *(
                    read_consistency(self.store, view, version, names)
                    for view, version, names in self.views()
                )
            )
        )

    async def sample_entities(self, count: int = 5) -> list[str]:
        """A few entity ids with online values (to start browsing the features page)."""
        views = self.views()
        if not views:
            return []
        view, version, _ = views[0]
        pattern = self.store.keys.online(view, version, "*")
        found: list[str] = []
        async for key in self.store.client.scan_iter(match=pattern, count=200):
            text = key.decode() if isinstance(key, bytes) else str(key)
            found.append(text[len(pattern) - 1 :])
            if len(found) >= count:
                break
        return sorted(found)

    # ── run state ────────────────────────────────────────────────────────────

    async def health(self) -> StatusReport | None:
        """Each component of the running `mlbus up` (None: the console runs without one)."""
        state = live_state(self.settings.data)
        if state is None:
            return None
        return await check_run(state, self.settings, HEALTH_TIMEOUT_S)


def _registry_address(settings: MlbusSettings) -> str:
    state = live_state(settings.data)
    found = state.grpc_address("registry") if state is not None else None
    return found or "127.0.0.1:8002"
