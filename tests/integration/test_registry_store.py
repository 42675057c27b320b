"""The registry's domain operations on a real database: SQLite and PostgreSQL, same suite.

Events are checked in the outbox and through the sink the outbox drains into
(the real-Kafka path is in test_registry_api.py). PostgreSQL tests run in a
schema of their own, dropped afterwards; they are skipped only when no
PostgreSQL server can be reached at all.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from mlbus.config import running_in_ci
from mlbus.errors import InvalidInput, NotFound, PermanentError
from mlbus.events import Event, ModelPublished, ModelRegistered
from mlbus.profiles import ReferenceProfile
from mlbus.registry import NewVersion, Registry
from mlbus.registry import _store as db
from mlbus.registry._artifacts import ArtifactCorrupted, LocalArtifactStore
from mlbus.registry.migrations import current_revision
from tests.unit.test_registry_onnx import model_spec, tiny_model

pytestmark = pytest.mark.integration

PG_HOST = os.environ.get("MLBUS_TEST_PG_HOST", "127.0.0.1:5432")
PG_DATABASE = os.environ.get("MLBUS_TEST_PG_DATABASE", "test")


def _pg_engine() -> Engine | None:
    for user in ("postgres", "root", os.environ.get("USER", "")):
        if not user:
            continue
        engine = create_engine(f"postgresql+psycopg://{user}@{PG_HOST}/{PG_DATABASE}")
        try:
            with engine.connect() as connection:
                connection.execute(text("select 1"))
            return engine
        except Exception:
            engine.dispose()
    return None


def _start_local_postgres() -> None:
    if not shutil.which("pg_ctlcluster") or not Path("/etc/postgresql").is_dir():
        return
    for version in sorted(p.name for p in Path("/etc/postgresql").iterdir()):
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            capture_output=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    engine = _pg_engine()
    if engine is None:
        _start_local_postgres()
        engine = _pg_engine()
    if engine is None:
        unreachable = f"no PostgreSQL server reachable at {PG_HOST} (database {PG_DATABASE!r})"
        if running_in_ci():  # CI machines run PostgreSQL: the same suite must pass on it
            pytest.fail(unreachable)
        pytest.skip(f"{unreachable}; the SQLite half of the suite still runs")
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.sqlite'}"
        return
    admin: Engine = request.getfixturevalue("postgres_admin")
    schema = f"registry_test_{uuid.uuid4().hex[:12]}"
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield admin.url.set(query={"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


class RecordingSink:
    """Where the outbox drains to in these tests (Kafka itself: test_registry_api.py)."""

    def __init__(self) -> None:
        self.events: list[tuple[str | bytes | None, Event]] = []
        self.trace_ids: dict[str, int] = {}
        """event_id → the trace id current while it was published (0: none)."""

    async def publish(self, event: Event, key: str | bytes | None = None) -> Any:
        self.events.append((key, event))
        self.trace_ids[event.event_id] = trace.get_current_span().get_span_context().trace_id

    def published(self) -> list[ModelPublished]:
        return [e for _, e in self.events if isinstance(e, ModelPublished)]


@pytest.fixture
async def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
async def registry(
    database_url: str, tmp_path: Path, sink: RecordingSink
) -> AsyncIterator[Registry]:
    store = db.RegistryStore(database_url)
    await asyncio.to_thread(store.upgrade)
    reg = Registry(store, LocalArtifactStore(tmp_path / "artifacts"), sink, spec=model_spec())
    await reg.start()
    try:
        yield reg
    finally:
        await reg.stop()
        store.dispose()


def counts(registry: Registry) -> dict[str, int]:
    with registry.store.transaction() as session:
        return {
            table.__tablename__: db.count_rows(session, table)
            for table in (db.ModelRow, db.VersionRow, db.AliasRow, db.AliasHistoryRow, db.OutboxRow)
        }


def pending(registry: Registry) -> int:
    with registry.store.transaction() as session:
        return len(db.pending_events(session))


# ── schema ──────────────────────────────────────────────────────────────────


async def test_migrations_build_exactly_the_models_schema_and_rerun_safely(
    registry: Registry,
) -> None:
    await asyncio.to_thread(registry.store.upgrade)  # a second start changes nothing
    assert current_revision(registry.store.engine) == "0002"
    with registry.store.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), db.Base.metadata)
    assert diff == []


async def test_an_upgrade_keeps_what_was_registered(registry: Registry, database_url: str) -> None:
    await registry.register(NewVersion(model="kept", content=tiny_model(), metrics={"auc": 0.7}))
    reopened = db.RegistryStore(database_url)
    try:
        await asyncio.to_thread(reopened.upgrade)
        with reopened.transaction() as session:
            found = db.find_version(session, "kept", 1)
            assert found is not None
            assert found.metrics == {"auc": 0.7}
    finally:
        reopened.dispose()


# ── versions ────────────────────────────────────────────────────────────────


async def test_register_records_artifact_signature_lineage_and_profile(registry: Registry) -> None:
    profile = ReferenceProfile.from_samples({"amount": [1.0, 2.0, 3.0, 4.0]})
    result = await registry.register(
        NewVersion(
            model="ext",
            content=tiny_model(),
            metrics={"auc": 0.8},
            params={"depth": 4},
            dataset_fingerprint="sha256:data",
            feature_views={"card_activity": 2},
            run_id="run-7",
            code_version="abc123",
            reference_profile=profile,
            actor="alice",
        )
    )
    info = await registry.get_version("ext", 1)
    assert info == result.version
    assert info.signature.inputs[0].name == "x"
    assert info.params == {"depth": 4}
    assert info.feature_views == {"card_activity": 2}
    assert (info.run_id, info.code_version, info.created_by) == ("run-7", "abc123", "alice")
    assert info.reference_profile == profile
    assert not result.promoted  # not the spec's model: no gates, so no automatic champion
    assert "no promotion gates" in info.gate.reason
    assert [type(e) for _, e in (await _drained(registry)).events] == [ModelRegistered]


async def test_concurrent_registrations_get_distinct_consecutive_versions(
    registry: Registry,
) -> None:
    await registry.register(NewVersion(model="busy", content=tiny_model(0.5)))
    results = await asyncio.gather(
        *(registry.register(NewVersion(model="busy", content=tiny_model(i))) for i in range(4))
    )
    assert sorted(r.version.version for r in results) == [2, 3, 4, 5]
    assert (await registry.get_version("busy")).version == 5
    fresh = await asyncio.gather(
        *(registry.register(NewVersion(model="fresh", content=tiny_model(i))) for i in range(2))
    )
    assert sorted(r.version.version for r in fresh) == [1, 2]  # racing to create the model


async def test_a_repeated_registration_of_a_run_answers_its_version_again(
    registry: Registry, sink: RecordingSink
) -> None:
    def of_run(run_id: str, scale: float = 1.0) -> NewVersion:
        return NewVersion(
            model="fraud", content=tiny_model(scale), metrics={"auc": 0.8}, run_id=run_id
        )

    first = await registry.register(of_run("run-1"))
    # the trainer retries after a lost answer, or concurrently: still one version
    again = await asyncio.gather(*(registry.register(of_run("run-1")) for _ in range(3)))
    assert first.promoted
    assert {r.version.version for r in again} == {1}
    assert all(r.promoted and r.alias_changes == () for r in again)
    assert [r.version for r in again] == [first.version] * 3
    assert counts(registry)["registry_model_versions"] == 1
    await _drained(registry)
    assert [type(e) for _, e in sink.events] == [ModelRegistered, ModelPublished]

    with pytest.raises(InvalidInput, match="already registered fraud v1 with another artifact"):
        await registry.register(of_run("run-1", scale=2.0))
    second = await registry.register(of_run("run-2", scale=2.0))  # another run: a version
    assert second.version.version == 2
    unnamed = [await registry.register(NewVersion(model="fraud", content=tiny_model()))]
    unnamed.append(await registry.register(NewVersion(model="fraud", content=tiny_model())))
    assert [r.version.version for r in unnamed] == [3, 4]  # no run id: each call is new


# ── aliases ─────────────────────────────────────────────────────────────────


async def test_alias_moves_emit_one_event_each_in_order_and_are_recorded(
    registry: Registry, sink: RecordingSink
) -> None:
    for scale in (1.0, 2.0, 3.0):
        await registry.register(NewVersion(model="ext", content=tiny_model(scale)))
    await registry.set_alias("ext", "champion", 1, reason="first", actor="alice")
    await registry.set_alias("ext", "canary", 2, reason="try v2", actor="bob")
    await registry.set_alias("ext", "champion", 3, reason="v3 is better", actor="alice")
    back = await registry.rollback("ext", "champion", reason="v3 misbehaves", actor="carol")

    assert (back.version, back.previous_version, back.kind) == (1, 3, "rollback")
    assert (await registry.resolve_alias("ext", "champion")).version == 1
    await _drained(registry)
    moves = [(e.alias, e.version, e.previous_version, e.reason) for e in sink.published()]
    assert moves == [
        ("champion", 1, None, "first"),
        ("canary", 2, None, "try v2"),
        ("champion", 3, 1, "v3 is better"),
        ("champion", 1, 3, "v3 misbehaves"),
    ]
    assert all(key == "ext" for key, _ in sink.events)
    published = sink.published()[-1]
    stored = await registry.get_version("ext", 1)
    assert (published.sha256, published.artifact_uri) == (stored.sha256, stored.artifact_uri)
    assert published.signature == stored.signature
    assert published.actor == "carol"

    history = await registry.alias_history("ext")
    assert [(h.alias, h.version, h.actor, h.kind) for h in reversed(history)] == [
        ("champion", 1, "alice", "set"),
        ("canary", 2, "bob", "set"),
        ("champion", 3, "alice", "set"),
        ("champion", 1, "carol", "rollback"),
    ]
    assert [h.event_id for h in reversed(history)] == [e.event_id for e in sink.published()]
    assert pending(registry) == 0


async def test_outbox_events_are_published_in_the_trace_of_the_change(
    registry: Registry, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlbus.registry import _service

    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    monkeypatch.setattr(_service, "_tracer", tracer)
    with tracer.start_as_current_span("trainer registration") as registration:
        await registry.register(NewVersion(model="traced", content=tiny_model()))
    with tracer.start_as_current_span("operator promotion") as promotion:
        await registry.set_alias("traced", "champion", 1, reason="go", actor="alice")
    await registry.register(NewVersion(model="traced", content=tiny_model(2.0)))  # no trace

    await _drained(registry)  # by the background publisher, outside those spans
    registered, published = [e for _, e in sink.events if e.model == "traced"][:2]  # type: ignore[attr-defined]
    assert isinstance(registered, ModelRegistered)
    assert isinstance(published, ModelPublished)
    assert sink.trace_ids[registered.event_id] == registration.get_span_context().trace_id
    assert sink.trace_ids[published.event_id] == promotion.get_span_context().trace_id
    untraced = [e for _, e in sink.events if isinstance(e, ModelRegistered) and e.version == 2]
    assert sink.trace_ids[untraced[0].event_id] not in (
        registration.get_span_context().trace_id,
        promotion.get_span_context().trace_id,
    )
    provider.shutdown()


async def test_rollback_walks_back_through_earlier_versions(registry: Registry) -> None:
    for scale in (1.0, 2.0, 3.0):
        await registry.register(NewVersion(model="ext", content=tiny_model(scale)))
    for version in (1, 2, 3):
        await registry.set_alias("ext", "champion", version, reason=f"v{version}")
    assert (await registry.rollback("ext", "champion", reason="r")).version == 2
    assert (await registry.rollback("ext", "champion", reason="r")).version == 1
    with pytest.raises(PermanentError, match="no earlier version"):
        await registry.rollback("ext", "champion", reason="r")


async def test_alias_changes_need_a_reason_and_existing_versions(registry: Registry) -> None:
    await registry.register(NewVersion(model="ext", content=tiny_model()))
    before = counts(registry)
    with pytest.raises(InvalidInput, match="reason"):
        await registry.set_alias("ext", "champion", 1, reason=" ")
    with pytest.raises(NotFound, match="no version 9"):
        await registry.set_alias("ext", "champion", 9, reason="x")
    with pytest.raises(NotFound, match="no model"):
        await registry.set_alias("nope", "champion", 1, reason="x")
    with pytest.raises(NotFound, match="no alias"):
        await registry.rollback("ext", "champion", reason="x")
    with pytest.raises(InvalidInput, match="alias"):
        await registry.set_alias("ext", "../champion", 1, reason="x")
    assert counts(registry) == before


# ── refusals leave the registry unchanged ──────────────────────────────────


async def test_refused_artifacts_leave_the_registry_unchanged(
    registry: Registry, tmp_path: Path
) -> None:
    await registry.register(NewVersion(model="ext", content=tiny_model()))
    before = counts(registry)
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(tiny_model(5.0))
    refusals = [
        (NewVersion(model="ext", content=b"PK\x03\x04 a zip, not ONNX"), "not an ONNX model"),
        (NewVersion(model="ext", content=tiny_model()[:-7]), "ONNX"),
        (
            NewVersion(model="ext", content=tiny_model(2.0), expected_sha256="0" * 64),
            "sha256 mismatch",
        ),
        (NewVersion(model="ext", location="../outside.onnx"), "inside the store"),
        (NewVersion(model="ext", location=str(outside)), "inside the store"),
        (NewVersion(model="bad name!", content=tiny_model()), "model name"),
    ]
    for new, message in refusals:
        with pytest.raises(InvalidInput, match=message):
            await registry.register(new)
    assert counts(registry) == before
    assert len(await registry.list_versions("ext")) == 1


async def test_a_tampered_artifact_is_refused_on_read(registry: Registry) -> None:
    result = await registry.register(NewVersion(model="ext", content=tiny_model()))
    info, data = await registry.artifact("ext", 1)
    assert data == tiny_model()
    assert isinstance(registry.artifacts, LocalArtifactStore)
    path = registry.artifacts.root / f"sha256/{info.sha256[:2]}/{info.sha256}.onnx"
    path.write_bytes(tiny_model(9.0))
    with pytest.raises(ArtifactCorrupted, match=result.version.sha256):
        await registry.artifact("ext", 1)


async def test_registering_a_file_already_in_the_store_by_location(registry: Registry) -> None:
    assert isinstance(registry.artifacts, LocalArtifactStore)
    incoming = registry.artifacts.root / "incoming" / "model.onnx"
    incoming.parent.mkdir(parents=True)
    incoming.write_bytes(tiny_model(4.0))
    result = await registry.register(NewVersion(model="ext", location="incoming/model.onnx"))
    _, data = await registry.artifact("ext", result.version.version)
    assert data == tiny_model(4.0)


# ── promotion gates ─────────────────────────────────────────────────────────


async def test_gates_promote_a_better_model_and_keep_a_worse_one_a_candidate(
    registry: Registry, sink: RecordingSink
) -> None:
    first = await registry.register(
        NewVersion(model="fraud", content=tiny_model(1.0), metrics={"auc": 0.80})
    )
    assert first.promoted
    worse = await registry.register(
        NewVersion(model="fraud", content=tiny_model(2.0), metrics={"auc": 0.805})
    )
    better = await registry.register(
        NewVersion(
            model="fraud",
            content=tiny_model(3.0),
            metrics={"auc": 0.86},
            champion_version=1,
            champion_metrics={"auc": 0.81},
        )
    )

    assert not worse.promoted
    assert worse.version.gate.evaluated
    assert not worse.version.gate.passed
    assert "below min_improvement" in worse.version.gate.reason
    assert worse.version.gate.compared_with_version == 1
    assert better.promoted
    assert "beats champion v1" in better.version.gate.reason
    assert "same evaluation window" in better.version.gate.reason
    assert (await registry.resolve_alias("fraud", "champion")).version == 3
    # the reason is kept with the version either way
    assert (await registry.get_version("fraud", 2)).gate.reason == worse.version.gate.reason
    await _drained(registry)
    assert [(e.version, e.previous_version, e.actor) for e in sink.published()] == [
        (1, None, "registry:gates"),
        (3, 1, "registry:gates"),
    ]


async def test_promote_to_canary_puts_a_better_version_beside_the_champion(
    database_url: str, tmp_path: Path
) -> None:
    sink = RecordingSink()
    store = db.RegistryStore(database_url)
    await asyncio.to_thread(store.upgrade)
    spec = model_spec(promote_to="canary")
    registry = Registry(store, LocalArtifactStore(tmp_path / "artifacts"), sink, spec=spec)
    await registry.start()
    try:
        first = await registry.register(
            NewVersion(model="fraud", content=tiny_model(1.0), metrics={"auc": 0.80})
        )
        better = await registry.register(
            NewVersion(model="fraud", content=tiny_model(2.0), metrics={"auc": 0.86})
        )
        assert [c.alias for c in first.alias_changes] == ["champion"]
        assert better.promoted
        assert [c.alias for c in better.alias_changes] == ["canary"]
        assert (await registry.resolve_alias("fraud", "champion")).version == 1
        assert (await registry.resolve_alias("fraud", "canary")).version == 2
        await _drained(registry)
        assert [(e.alias, e.version, e.actor) for e in sink.published()] == [
            ("champion", 1, "registry:gates"),
            ("canary", 2, "registry:gates"),
        ]
    finally:
        await registry.stop()
        store.dispose()


async def test_an_explicit_alias_at_registration_bypasses_the_gates(registry: Registry) -> None:
    await registry.register(NewVersion(model="fraud", content=tiny_model(), metrics={"auc": 0.9}))
    result = await registry.register(
        NewVersion(
            model="fraud",
            content=tiny_model(2.0),
            metrics={"auc": 0.5},
            alias="champion",
            reason="hotfix",
        )
    )
    assert result.promoted
    assert not result.version.gate.evaluated
    assert (await registry.resolve_alias("fraud", "champion")).version == 2


async def test_events_committed_without_a_sink_are_published_by_the_next_registry(
    database_url: str, tmp_path: Path
) -> None:
    """The outbox half of "nothing is lost while the broker is away": a registry with no
    sink (as after a crash before publishing) keeps its events, and the next registry
    with a sink publishes them. No broker here; the sink records what it is given.
    (The path through the real broker is in test_registry_api.py.)"""
    store = db.RegistryStore(database_url)
    await asyncio.to_thread(store.upgrade)
    artifacts = LocalArtifactStore(tmp_path / "a")
    offline = Registry(store, artifacts, None)  # a crash before publishing looks the same
    await offline.register(
        NewVersion(model="ext", content=tiny_model(), alias="champion", reason="r")
    )
    assert pending(offline) == 2

    sink = RecordingSink()
    restarted = Registry(store, artifacts, sink)
    await restarted.start()
    try:
        await _drained(restarted)
        assert [type(e).__name__ for _, e in sink.events] == ["ModelRegistered", "ModelPublished"]
        assert pending(restarted) == 0
    finally:
        await restarted.stop()
        store.dispose()


async def _drained(registry: Registry) -> RecordingSink:
    await registry.publish_pending()
    sink = registry.outbox.sink
    assert isinstance(sink, RecordingSink)
    return sink
