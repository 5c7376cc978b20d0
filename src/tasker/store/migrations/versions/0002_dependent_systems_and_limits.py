"""dependent systems and limits

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tasker_circuit_transitions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("system", sa.String(length=128), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=False),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasker_circuit_transitions")),
    )
    with op.batch_alter_table("tasker_circuit_transitions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_tasker_circuit_transitions_system_at"), ["system", "at"], unique=False
        )

    op.create_table(
        "tasker_dependent_systems",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column(
            "circuit_state",
            sa.String(length=16),
            server_default=sa.text("'closed'"),
            nullable=False,
        ),
        sa.Column(
            "consecutive_failures", sa.Integer(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("failure_threshold", sa.Integer(), nullable=True),
        sa.Column("cooldown_seconds", sa.Float(), nullable=True),
        sa.Column("max_cooldown_seconds", sa.Float(), nullable=True),
        sa.Column("current_cooldown_seconds", sa.Float(), nullable=True),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("open_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "probe_step_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("max_in_flight", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_tasker_dependent_systems")),
    )
    op.create_table(
        "tasker_namespace_limits",
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("max_in_flight", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("namespace", name=op.f("pk_tasker_namespace_limits")),
    )


def downgrade() -> None:
    op.drop_table("tasker_namespace_limits")
    op.drop_table("tasker_dependent_systems")
    with op.batch_alter_table("tasker_circuit_transitions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasker_circuit_transitions_system_at"))

    op.drop_table("tasker_circuit_transitions")
