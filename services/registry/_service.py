"""The registry's domain operations: register, move aliases, roll back, read.

Every mutation is one database transaction that also writes the events it
causes into the outbox (`_outbox.enqueue`); after the commit it hands their
rows to the `Outbox`, which publishes them and survives a broker outage or a
crash in between (`_outbox.py`, docs/adr/0011-registry-outbox.md).

Blocking work (database, hashing, ONNX checks, file I/O) runs in threads; the
event loop only waits.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, InitVar, dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from mlbus.errors import InvalidInput, NotFound, PermanentError
from mlbus.events import (
    ModelPublished,
    ModelRegistered,
    ModelSignature,
    new_event_id,
)
from mlbus.onnx_policy import ArtifactPolicy
from mlbus.profiles import ReferenceProfile
from mlbus.registry_types import (
    AliasChange,
    AliasChangeKind,
    GateDecision,
    Lineage,
    ModelSummary,
    ModelVersionInfo,
    Registration,
)
from mlbus.spec import ModelSpec
from mlbus.telemetry import meter, tracer

from . import _store as db
from ._artifacts import ArtifactStore, sha256_hex
from ._gates import CHAMPION, Champion, GateVerdict, decide
from ._onnx import validate_onnx
from ._outbox import EventSink, Outbox, OutboxTiming, enqueue

log = logging.getLogger(__name__)
T = TypeVar("T")
_tracer = tracer(__name__)
_meter = meter(__name__)
_registered = _meter.create_counter("mlbus.registry.versions_registered", unit="{version}")
_moves = _meter.create_counter("mlbus.registry.alias_moves", unit="{move}")
_refused = _meter.create_counter("mlbus.registry.registrations_refused", unit="{registration}")

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
ALIAS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")
GATE_ACTOR = "registry:gates"


@dataclass(frozen=True)
class NewVersion:
    """What a caller hands over to register a version (bytes xor a store location)."""

    model: str
    content: bytes | None = None
    location: str | None = None
    expected_sha256: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    dataset_fingerprint: str | None = None
    feature_views: Mapping[str, int] = field(default_factory=dict)
    run_id: str | None = None
    code_version: str | None = None
    reference_profile: ReferenceProfile | None = None
    description: str = ""
    champion_version: int | None = None
    champion_metrics: Mapping[str, float] | None = None
    evaluation_window: str | None = None
    alias: str | None = None
    reason: str = ""
    actor: str = ""


@dataclass
class _Committed:
    """What a mutating transaction returns: its answer and the outbox rows it wrote."""

    outbox_ids: list[int]


@dataclass(eq=False)
class Registry:
    """The registry: one store, one artifact store, one outbox publisher (built from the
    `sink` its events go to and the `outbox_timing`), the gates' spec and the artifact limits."""

    store: db.RegistryStore
    artifacts: ArtifactStore
    sink: InitVar[EventSink | None]
    _: KW_ONLY
    spec: ModelSpec | None = None
    max_artifact_bytes: int = 64 << 20
    policy: ArtifactPolicy = field(default_factory=ArtifactPolicy)
    outbox_timing: InitVar[OutboxTiming | None] = None
    outbox: Outbox = field(init=False)

    def __post_init__(self, sink: EventSink | None, outbox_timing: OutboxTiming | None) -> None:
        self.outbox = Outbox(self.store, sink, outbox_timing or OutboxTiming())

    # ── lifecycle ────────────────────────────────────────────────────────────

    async def start(self) -> None:
        """Start the outbox publisher (it first publishes what a previous run left)."""
        await self.outbox.start()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Publish what is pending (within `grace_s`), then stop. Idempotent."""
        await self.outbox.stop(grace_s)

    async def publish_pending(self) -> int:
        """Publish every outbox event not yet published, oldest first; return how many."""
        return await self.outbox.publish_pending()

    # ── mutations ────────────────────────────────────────────────────────────

    async def register(self, new: NewVersion) -> Registration:
        """Validate, store and record a new version; let the gates (or `alias`) promote it.

        Idempotent per training run: a version registered with the same `run_id` and
        the same artifact is answered again (a retry after a lost answer or an outage)
        — no second version, no second event; the same run with another artifact is
        refused."""
        with _tracer.start_as_current_span("registry.register") as span:
            span.set_attribute("mlbus.model", new.model)
            try:
                _check_model_name(new.model)
                if new.alias is not None:
                    _check_alias(new.alias)
                    _require_reason(new.reason, f"setting {new.alias!r} at registration")
                data = await self._artifact_bytes(new)
                signature = await asyncio.to_thread(validate_onnx, data, self.policy)
                stored = await asyncio.to_thread(self.artifacts.put, data)
            except (InvalidInput, NotFound) as exc:
                _refused.add(1)
                log.info("registration of %s refused: %s", new.model, exc)
                raise
            registration, committed = await self._in_transaction(
                lambda s: self._record(
                    s, new, signature, stored.location, stored.sha256, len(data)
                ),
            )
            span.set_attribute("mlbus.model.version", registration.version.version)
        if not committed.outbox_ids:  # the run registered it before: nothing new
            log.info(
                "run %s already registered %s v%d: answered again",
                new.run_id,
                new.model,
                registration.version.version,
            )
            return registration
        _registered.add(1)
        log.info(
            "registered %s v%d (sha256 %s…): %s",
            new.model,
            registration.version.version,
            stored.sha256[:12],
            registration.version.gate.reason,
        )
        await self.outbox.announce(committed.outbox_ids)
        return registration

    async def _artifact_bytes(self, new: NewVersion) -> bytes:
        if (new.content is None) == (new.location is None):
            raise InvalidInput("give the artifact as bytes or as a store location, not both")
        if new.content is not None:
            data = new.content
        else:
            data = await asyncio.to_thread(self.artifacts.read_unverified, new.location or "")
        if len(data) > self.max_artifact_bytes:
            raise InvalidInput(
                f"artifact is {len(data)} bytes, above the limit of {self.max_artifact_bytes} "
                "(MLBUS_REGISTRY_MAX_ARTIFACT_MB)"
            )
        if new.expected_sha256 is not None:
            actual = await asyncio.to_thread(sha256_hex, data)
            if actual != new.expected_sha256.lower():
                raise InvalidInput(
                    f"sha256 mismatch: the artifact hashes to {actual}, "
                    f"the caller expected {new.expected_sha256}"
                )
        return data

    def _record(
        self,
        session: Session,
        new: NewVersion,
        signature: ModelSignature,
        location: str,
        sha256: str,
        size_bytes: int,
    ) -> tuple[Registration, _Committed]:
        model = db.lock_model(session, new.model, create=True)
        assert model is not None
        if new.run_id is not None:  # under the model's lock: one version per run
            earlier = db.version_of_run(session, new.model, new.run_id)
            if earlier is not None:
                return self._registered_before(session, earlier, sha256), _Committed([])
        model.latest_version += 1
        now = datetime.now(UTC)
        actor = new.actor or "anonymous"
        row = db.VersionRow(
            model=new.model,
            version=model.latest_version,
            location=location,
            sha256=sha256,
            size_bytes=size_bytes,
            signature=signature.model_dump(mode="json"),
            params=dict(new.params),
            metrics={k: float(v) for k, v in new.metrics.items()},
            dataset_fingerprint=new.dataset_fingerprint,
            feature_views=dict(new.feature_views),
            run_id=new.run_id,
            code_version=new.code_version,
            created_at=now,
            created_by=actor,
            description=new.description,
            reference_profile=None
            if new.reference_profile is None
            else new.reference_profile.model_dump_json(),
            evaluation_window=new.evaluation_window,
        )
        if new.alias is None:
            verdict = self._gate(session, new)
            row.gate_evaluated = True
            row.gate_passed = verdict.passed
            row.gate_reason = verdict.reason
            row.compared_with_version = verdict.compared_with_version
        else:
            verdict = GateVerdict(True, new.reason, None)
            row.gate_reason = f"gates not consulted: {new.alias!r} set explicitly ({new.reason})"
        session.add(row)
        session.flush()

        outbox = [
            enqueue(
                session,
                ModelRegistered(
                    model=new.model,
                    version=row.version,
                    artifact_uri=self.artifacts.uri(location),
                    sha256=sha256,
                    size_bytes=size_bytes,
                    signature=signature,
                    metrics=row.metrics,
                    run_id=new.run_id,
                    dataset_fingerprint=new.dataset_fingerprint,
                ),
            )
        ]
        changes: list[AliasChange] = []
        if new.alias is not None:
            changes.append(self._move(session, row, new.alias, "set", new.reason, actor, outbox))
        elif verdict.passed:
            changes.append(
                self._move(session, row, verdict.alias, "gate", verdict.reason, GATE_ACTOR, outbox)
            )
        info = self._info(session, row)
        return Registration(
            version=info, promoted=bool(changes), alias_changes=tuple(changes)
        ), _Committed(outbox)

    def _registered_before(self, session: Session, row: db.VersionRow, sha256: str) -> Registration:
        """The answer to a repeated registration of `row`'s run: the version as it is now.
        Its alias moves were announced the first time, so none are repeated;
        `promoted` says whether that registration promoted it."""
        if row.sha256 != sha256:
            raise InvalidInput(
                f"run {row.run_id} already registered {row.model} v{row.version} with "
                f"another artifact (sha256 {row.sha256[:12]}…, this one {sha256[:12]}…)"
            )
        promoted = row.gate_passed if row.gate_evaluated else True  # else: an explicit alias
        return Registration(version=self._info(session, row), promoted=promoted)

    def _gate(self, session: Session, new: NewVersion) -> GateVerdict:
        current = db.find_alias(session, new.model, CHAMPION)
        champion = None
        if current is not None:
            champion_row = db.find_version(session, new.model, current.version)
            if champion_row is not None:
                champion = Champion(champion_row.version, champion_row.metrics)
        return decide(
            self.spec,
            new.model,
            new.metrics,
            champion,
            champion_version=new.champion_version,
            champion_metrics=new.champion_metrics or None,
        )

    async def set_alias(
        self, model: str, alias: str, version: int, *, reason: str, actor: str = ""
    ) -> AliasChange:
        """Point `alias` at `version` (manual promotion, canary, shadow, …)."""
        _check_alias(alias)
        _require_reason(reason, f"moving {alias!r}")

        def target(session: Session) -> db.VersionRow:
            row = self._version_row(session, model, version)
            current = db.find_alias(session, model, alias)
            if current is not None and current.version == version:
                raise PermanentError(f"{model}:{alias} already points to v{version}")
            return row

        return await self._move_alias(model, alias, "set", target, reason=reason, actor=actor)

    async def rollback(
        self, model: str, alias: str, *, reason: str, actor: str = ""
    ) -> AliasChange:
        """Move `alias` back to the version it held before its current one."""
        _check_alias(alias)
        _require_reason(reason, f"rolling back {alias!r}")

        def target(session: Session) -> db.VersionRow:
            current = db.find_alias(session, model, alias)
            if current is None:
                raise NotFound(f"{model} has no alias {alias!r}")
            arrival = next(
                (
                    h
                    for h in db.history(session, model, alias)
                    if h.kind != "rollback" and h.version == current.version
                ),
                None,
            )
            if arrival is None or arrival.previous_version is None:
                raise PermanentError(
                    f"{model}:{alias} has no earlier version to roll back to "
                    f"(it points to v{current.version} since it was first set)"
                )
            return self._version_row(session, model, arrival.previous_version)

        return await self._move_alias(model, alias, "rollback", target, reason=reason, actor=actor)

    async def _move_alias(
        self,
        model: str,
        alias: str,
        kind: AliasChangeKind,
        target: Callable[[Session], db.VersionRow],
        *,
        reason: str,
        actor: str,
    ) -> AliasChange:
        """With the model locked, point `alias` at the version `target` picks; once
        committed, hand the move's event to the outbox."""

        def work(session: Session) -> tuple[AliasChange, _Committed]:
            self._locked_model(session, model)
            row = target(session)
            outbox: list[int] = []
            change = self._move(session, row, alias, kind, reason, actor or "anonymous", outbox)
            return change, _Committed(outbox)

        change, committed = await self._in_transaction(work)
        moved = "rolled back to" if kind == "rollback" else "→"
        log.info("%s:%s %s v%d (%s)", model, alias, moved, change.version, reason)
        await self.outbox.announce(committed.outbox_ids)
        return change

    def _move(
        self,
        session: Session,
        row: db.VersionRow,
        alias: str,
        kind: AliasChangeKind,
        reason: str,
        actor: str,
        outbox: list[int],
    ) -> AliasChange:
        """Point `alias` at `row`, record the move and queue its event (same transaction)."""
        now = datetime.now(UTC)
        current = db.find_alias(session, row.model, alias)
        previous = None if current is None else current.version
        if current is None:
            session.add(
                db.AliasRow(model=row.model, alias=alias, version=row.version, updated_at=now)
            )
        else:
            current.version = row.version
            current.updated_at = now
        event = ModelPublished(
            model=row.model,
            alias=alias,
            version=row.version,
            previous_version=previous,
            artifact_uri=self.artifacts.uri(row.location),
            sha256=row.sha256,
            signature=ModelSignature.model_validate(row.signature),
            reason=reason,
            actor=actor,
            event_id=new_event_id(),
            occurred_at=now,
        )
        history = db.AliasHistoryRow(
            model=row.model,
            alias=alias,
            version=row.version,
            previous_version=previous,
            kind=kind,
            reason=reason,
            actor=actor,
            at=now,
            event_id=event.event_id,
        )
        session.add(history)
        outbox.append(enqueue(session, event))
        _moves.add(1, {"alias": alias, "kind": kind})
        return _change(history)

    # ── reads ────────────────────────────────────────────────────────────────

    async def get_version(self, model: str, version: int | None = None) -> ModelVersionInfo:
        def work(session: Session) -> ModelVersionInfo:
            if version is None:
                row = db.latest_version(session, model)
                if row is None:
                    raise NotFound(f"no model named {model!r}")
            else:
                row = self._version_row(session, model, version)
            return self._info(session, row)

        return await self._in_transaction(work)

    async def resolve_alias(self, model: str, alias: str) -> ModelVersionInfo:
        def work(session: Session) -> ModelVersionInfo:
            current = db.find_alias(session, model, alias)
            if current is None:
                known = db.aliases_of(session, model)
                hint = f"; it has {', '.join(sorted(known))}" if known else ""
                raise NotFound(f"{model} has no alias {alias!r}{hint}")
            return self._info(session, self._version_row(session, model, current.version))

        return await self._in_transaction(work)

    async def list_models(self) -> list[ModelSummary]:
        def work(session: Session) -> list[ModelSummary]:
            return [
                ModelSummary(
                    model=m.name,
                    latest_version=m.latest_version,
                    aliases=db.aliases_of(session, m.name),
                    created_at=m.created_at,
                )
                for m in db.models(session)
            ]

        return await self._in_transaction(work)

    async def list_versions(self, model: str, limit: int = 0) -> list[ModelVersionInfo]:
        def work(session: Session) -> list[ModelVersionInfo]:
            if session.get(db.ModelRow, model) is None:
                raise NotFound(f"no model named {model!r}")
            aliases = db.aliases_of(session, model)
            return [self._info(session, r, aliases) for r in db.versions_of(session, model, limit)]

        return await self._in_transaction(work)

    async def lineage(self, model: str, version: int) -> Lineage:
        def work(session: Session) -> Lineage:
            row = self._version_row(session, model, version)
            moves = db.history(session, model, version=version)
            return Lineage(
                version=self._info(session, row), alias_history=tuple(map(_change, moves))
            )

        return await self._in_transaction(work)

    async def alias_history(
        self, model: str, alias: str | None = None, limit: int = 0
    ) -> list[AliasChange]:
        def work(session: Session) -> list[AliasChange]:
            if session.get(db.ModelRow, model) is None:
                raise NotFound(f"no model named {model!r}")
            return [_change(h) for h in db.history(session, model, alias, limit=limit or None)]

        return await self._in_transaction(work)

    async def artifact(self, model: str, version: int) -> tuple[ModelVersionInfo, bytes]:
        """A version and its artifact's bytes, verified against the recorded sha256."""

        def work(session: Session) -> tuple[ModelVersionInfo, str]:
            row = self._version_row(session, model, version)
            return self._info(session, row), row.location

        info, location = await self._in_transaction(work)
        data = await asyncio.to_thread(self.artifacts.read, location, info.sha256)
        return info, data

    # ── helpers ──────────────────────────────────────────────────────────────

    async def _in_transaction(self, work: Callable[[Session], T]) -> T:
        """`work` in one retried transaction, on a worker thread."""
        return await asyncio.to_thread(self.store.run, work)

    def _locked_model(self, session: Session, model: str) -> db.ModelRow:
        row = db.lock_model(session, model)
        if row is None:
            raise NotFound(f"no model named {model!r}")
        return row

    def _version_row(self, session: Session, model: str, version: int) -> db.VersionRow:
        row = db.find_version(session, model, version)
        if row is None:
            if session.get(db.ModelRow, model) is None:
                raise NotFound(f"no model named {model!r}")
            raise NotFound(f"{model} has no version {version}")
        return row

    def _info(
        self, session: Session, row: db.VersionRow, aliases: Mapping[str, int] | None = None
    ) -> ModelVersionInfo:
        if aliases is None:
            aliases = db.aliases_of(session, row.model)
        return ModelVersionInfo(
            model=row.model,
            version=row.version,
            artifact_uri=self.artifacts.uri(row.location),
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            signature=ModelSignature.model_validate(row.signature),
            metrics=row.metrics,
            params=row.params,
            dataset_fingerprint=row.dataset_fingerprint,
            feature_views=row.feature_views,
            run_id=row.run_id,
            code_version=row.code_version,
            created_at=row.created_at,
            created_by=row.created_by,
            description=row.description,
            aliases=tuple(sorted(a for a, v in aliases.items() if v == row.version)),
            reference_profile=None
            if row.reference_profile is None
            else ReferenceProfile.model_validate_json(row.reference_profile),
            gate=GateDecision(
                evaluated=row.gate_evaluated,
                passed=row.gate_passed,
                reason=row.gate_reason,
                compared_with_version=row.compared_with_version,
            ),
            evaluation_window=row.evaluation_window,
        )


def _change(row: db.AliasHistoryRow) -> AliasChange:
    return AliasChange.model_validate(
        {
            "model": row.model,
            "alias": row.alias,
            "version": row.version,
            "previous_version": row.previous_version,
            "reason": row.reason,
            "actor": row.actor,
            "kind": row.kind,
            "at": row.at,
            "event_id": row.event_id,
        }
    )


def _check_model_name(name: str) -> None:
    if not MODEL_NAME.match(name):
        raise InvalidInput(
            f"model name {name!r} must be 1-200 letters, digits, '_', '.', '-' "
            "and start with a letter or digit"
        )


def _check_alias(alias: str) -> None:
    if not ALIAS_NAME.match(alias):
        raise InvalidInput(
            f"alias {alias!r} must be 1-100 letters, digits, '_', '.', '-' and start with a letter"
        )


def _require_reason(reason: str, doing: str) -> None:
    if not reason.strip():
        raise InvalidInput(f"a reason is required when {doing}")
