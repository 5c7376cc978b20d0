"""custom events, workers, api keys

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "tasker_custom_events",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("task_id", _ID, nullable=True),
        sa.Column("step_id", _ID, nullable=True),
        sa.Column("namespace", sa.String(length=64), nullable=True),
        sa.Column("payload", _JSON, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasker_tasks.id"],
            name=op.f("fk_tasker_custom_events_task_id_tasker_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasker_custom_events")),
    )
    op.create_index(
        op.f("ix_tasker_custom_events_task_id"), "tasker_custom_events", ["task_id"], unique=False
    )
    op.create_table(
        "tasker_workers",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("namespaces", _JSON, nullable=True),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("steps_run", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasker_workers")),
    )
    op.create_index(
        op.f("ix_tasker_workers_last_seen_at"), "tasker_workers", ["last_seen_at"], unique=False
    )
    op.create_table(
        "tasker_api_keys",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("permissions", _JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasker_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_tasker_api_keys_key_hash")),
        sa.UniqueConstraint("name", name=op.f("uq_tasker_api_keys_name")),
    )


def downgrade() -> None:
    op.drop_table("tasker_api_keys")
    op.drop_index(op.f("ix_tasker_workers_last_seen_at"), table_name="tasker_workers")
    op.drop_table("tasker_workers")
    op.drop_index(op.f("ix_tasker_custom_events_task_id"), table_name="tasker_custom_events")
    op.drop_table("tasker_custom_events")
