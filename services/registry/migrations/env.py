"""Alembic environment: runs the migrations on the engine handed over by `upgrade()`.

Alembic loads this file by path, outside the package, so it imports nothing
from the registry: `upgrade()` passes the engine and the metadata in
`config.attributes`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine, MetaData

engine = context.config.attributes.get("engine")
metadata = context.config.attributes.get("target_metadata")
if not isinstance(engine, Engine) or not isinstance(metadata, MetaData):
    raise RuntimeError("run registry migrations through mlbus.registry.migrations.upgrade()")

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
