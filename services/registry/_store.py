"""Storage: the registry's tables (SQLAlchemy 2) and the transaction they are written in.

One database holds everything: models, versions, aliases, the alias history
and the event outbox. SQLite (a file in the data folder) by default,
PostgreSQL by URL; the schema is created and upgraded by Alembic
(`migrations/`) at start, never by `create_all`.

Concurrency: every mutation of a model first locks its row in
`registry_models` (`SELECT … FOR UPDATE` on PostgreSQL; SQLite transactions
begin `IMMEDIATE`, which serializes writers). Version numbers come from that
row's `latest_version`, so concurrent registrations of one name get
consecutive numbers. Two transactions creating the same model at once collide
on its primary key; `RegistryStore.run` retries the loser from the start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from mlbus.errors import ConfigError, RetryableError

log = logging.getLogger(__name__)

T = TypeVar("T")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ModelRow(Base):
    __tablename__ = "registry_models"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    latest_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class VersionRow(Base):
    __tablename__ = "registry_model_versions"
    __table_args__ = (UniqueConstraint("model", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(ForeignKey("registry_models.name"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    location: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    signature: Mapped[dict[str, Any]] = mapped_column(JSON)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, float]] = mapped_column(JSON)
    dataset_fingerprint: Mapped[str | None] = mapped_column(String(200))
    feature_views: Mapped[dict[str, int]] = mapped_column(JSON)
    run_id: Mapped[str | None] = mapped_column(String(200))
    code_version: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    reference_profile: Mapped[str | None] = mapped_column(Text)
    evaluation_window: Mapped[str | None] = mapped_column(String(200))
    gate_evaluated: Mapped[bool] = mapped_column(Boolean, default=False)
    gate_passed: Mapped[bool] = mapped_column(Boolean, default=False)
    gate_reason: Mapped[str] = mapped_column(Text, default="")
    compared_with_version: Mapped[int | None] = mapped_column(Integer)


class AliasRow(Base):
    __tablename__ = "registry_aliases"

    model: Mapped[str] = mapped_column(ForeignKey("registry_models.name"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AliasHistoryRow(Base):
    __tablename__ = "registry_alias_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(ForeignKey("registry_models.name"), index=True)
    alias: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    previous_version: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    event_id: Mapped[str] = mapped_column(String(200))


class OutboxRow(Base):
    """An event committed with the change it reports, published after the commit."""

    __tablename__ = "registry_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(200), unique=True)
    event_type: Mapped[str] = mapped_column(String(200))
    key: Mapped[str] = mapped_column(String(200))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    traceparent: Mapped[str | None] = mapped_column(String(200))
    """The trace of the change (e.g. the trainer's registration), continued when published."""


def create_registry_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets serialized writers, PostgreSQL the psycopg driver."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"MLBUS_REGISTRY_DATABASE_URL is not a database URL: {exc}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy issues BEGIN itself, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock up front

    return engine


class RegistryStore:
    """The registry database: migrations, transactions with retry, and queries."""

    MAX_ATTEMPTS = 5

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_registry_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def upgrade(self) -> None:
        """Bring the schema to the newest revision (idempotent)."""
        from .migrations import upgrade

        upgrade(self.engine)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def run(self, work: Callable[[Session], T]) -> T:
        """`work` in one transaction, retried when a concurrent writer won a race."""
        for attempt in range(1, self.MAX_ATTEMPTS + 1):
            try:
                with self.transaction() as session:
                    return work(session)
            except (IntegrityError, OperationalError) as exc:
                if attempt == self.MAX_ATTEMPTS or not _is_race(exc):
                    raise
                log.debug("retrying a registry transaction after %s", type(exc.orig).__name__)
                time.sleep(0.01 * attempt)
            except DBAPIError as exc:
                raise RetryableError(f"registry database error: {exc.orig}") from exc
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        self.engine.dispose()


def _is_race(exc: DBAPIError) -> bool:
    if isinstance(exc, IntegrityError):
        return True  # a concurrent insert of the same key (model row, alias row)
    text = str(exc.orig).lower()
    return "locked" in text or "deadlock" in text or "could not serialize" in text


# ── queries ──────────────────────────────────────────────────────────────────


def lock_model(session: Session, name: str, *, create: bool = False) -> ModelRow | None:
    """The model's row, locked for this transaction; created first when `create`."""
    row = session.scalars(
        select(ModelRow).where(ModelRow.name == name).with_for_update()
    ).one_or_none()
    if row is None and create:
        row = ModelRow(name=name, latest_version=0, created_at=datetime.now(UTC))
        session.add(row)
        session.flush()  # a concurrent creator makes this raise IntegrityError → retry
    return row


def find_version(session: Session, name: str, version: int) -> VersionRow | None:
    return session.scalars(
        select(VersionRow).where(VersionRow.model == name, VersionRow.version == version)
    ).one_or_none()


def version_of_run(session: Session, name: str, run_id: str) -> VersionRow | None:
    """The version a training run registered (the first, were there several)."""
    return session.scalars(
        select(VersionRow)
        .where(VersionRow.model == name, VersionRow.run_id == run_id)
        .order_by(VersionRow.version)
        .limit(1)
    ).one_or_none()


def latest_version(session: Session, name: str) -> VersionRow | None:
    return session.scalars(
        select(VersionRow)
        .where(VersionRow.model == name)
        .order_by(VersionRow.version.desc())
        .limit(1)
    ).one_or_none()


def versions_of(session: Session, name: str, limit: int | None = None) -> Sequence[VersionRow]:
    query = select(VersionRow).where(VersionRow.model == name).order_by(VersionRow.version.desc())
    if limit:
        query = query.limit(limit)
    return session.scalars(query).all()


def models(session: Session) -> Sequence[ModelRow]:
    return session.scalars(select(ModelRow).order_by(ModelRow.name)).all()


def aliases_of(session: Session, name: str) -> dict[str, int]:
    rows = session.scalars(select(AliasRow).where(AliasRow.model == name)).all()
    return {row.alias: row.version for row in rows}


def find_alias(session: Session, name: str, alias: str) -> AliasRow | None:
    return session.get(AliasRow, (name, alias))


def history(
    session: Session,
    name: str,
    alias: str | None = None,
    version: int | None = None,
    limit: int | None = None,
) -> Sequence[AliasHistoryRow]:
    """Alias moves, newest first."""
    query = select(AliasHistoryRow).where(AliasHistoryRow.model == name)
    if alias:
        query = query.where(AliasHistoryRow.alias == alias)
    if version is not None:
        query = query.where(
            (AliasHistoryRow.version == version) | (AliasHistoryRow.previous_version == version)
        )
    query = query.order_by(AliasHistoryRow.id.desc())
    if limit:
        query = query.limit(limit)
    return session.scalars(query).all()


def pending_events(session: Session, limit: int = 100) -> Sequence[OutboxRow]:
    return session.scalars(
        select(OutboxRow)
        .where(OutboxRow.published_at.is_(None))
        .order_by(OutboxRow.id)
        .limit(limit)
    ).all()


def count_rows(session: Session, table: type[Base]) -> int:
    return int(session.scalar(select(func.count()).select_from(table)) or 0)
