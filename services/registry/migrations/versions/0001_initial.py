"""Initial registry schema: models, versions, aliases, alias history, event outbox.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Revision files are loaded by path and never import the registry's code: a
# later change to the models must not rewrite history. UTC datetimes are
# stored as `DateTime(timezone=True)` (what `_store.UTCDateTime` wraps).
UTCDateTime = sa.DateTime(timezone=True)

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "registry_models",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_registry_models")),
    )
    op.create_table(
        "registry_model_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("location", sa.String(500), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("signature", sa.JSON(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("dataset_fingerprint", sa.String(200), nullable=True),
        sa.Column("feature_views", sa.JSON(), nullable=False),
        sa.Column("run_id", sa.String(200), nullable=True),
        sa.Column("code_version", sa.String(200), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("reference_profile", sa.Text(), nullable=True),
        sa.Column("evaluation_window", sa.String(200), nullable=True),
        sa.Column("gate_evaluated", sa.Boolean(), nullable=False),
        sa.Column("gate_passed", sa.Boolean(), nullable=False),
        sa.Column("gate_reason", sa.Text(), nullable=False),
        sa.Column("compared_with_version", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["model"],
            ["registry_models.name"],
            name=op.f("fk_registry_model_versions_model_registry_models"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_model_versions")),
        sa.UniqueConstraint("model", "version", name=op.f("uq_registry_model_versions_model")),
    )
    op.create_index(op.f("ix_registry_model_versions_model"), "registry_model_versions", ["model"])
    op.create_index(
        op.f("ix_registry_model_versions_sha256"), "registry_model_versions", ["sha256"]
    )
    op.create_table(
        "registry_aliases",
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("alias", sa.String(100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.ForeignKeyConstraint(
            ["model"],
            ["registry_models.name"],
            name=op.f("fk_registry_aliases_model_registry_models"),
        ),
        sa.PrimaryKeyConstraint("model", "alias", name=op.f("pk_registry_aliases")),
    )
    op.create_table(
        "registry_alias_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("alias", sa.String(100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("previous_version", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.ForeignKeyConstraint(
            ["model"],
            ["registry_models.name"],
            name=op.f("fk_registry_alias_history_model_registry_models"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_alias_history")),
    )
    op.create_index(op.f("ix_registry_alias_history_model"), "registry_alias_history", ["model"])
    op.create_table(
        "registry_outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("event_type", sa.String(200), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("published_at", UTCDateTime, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_registry_outbox_event_id")),
    )
    op.create_index(op.f("ix_registry_outbox_published_at"), "registry_outbox", ["published_at"])


def downgrade() -> None:
    op.drop_table("registry_outbox")
    op.drop_table("registry_alias_history")
    op.drop_table("registry_aliases")
    op.drop_table("registry_model_versions")
    op.drop_table("registry_models")
