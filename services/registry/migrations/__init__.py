"""Alembic migrations of the registry database, run programmatically at start.

No alembic.ini: `upgrade(engine)` builds the Config in code and points it at
this package's folder, so it works from a source checkout and from an
installed wheel alike (env.py, script.py.mako and versions/ ship as package
data). To write a new revision during development:

    alembic -c /dev/null -x url=sqlite:///dev.sqlite revision -m "…"   # or copy 0001
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from .._store import Base

SCRIPT_LOCATION = Path(__file__).resolve().parent


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("path_separator", "os")
    config.attributes["engine"] = engine
    config.attributes["target_metadata"] = Base.metadata
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply every migration up to `revision` (idempotent)."""
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        revision: str | None = MigrationContext.configure(connection).get_current_revision()
        return revision
