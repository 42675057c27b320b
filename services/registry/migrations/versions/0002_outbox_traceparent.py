"""Outbox rows keep the trace context of the change they report.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("registry_outbox") as batch:
        batch.add_column(sa.Column("traceparent", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("registry_outbox") as batch:
        batch.drop_column("traceparent")
