"""analytics rollups: attempt outcomes, durations and final tasks per 30 minutes of creation

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

`performance` and `bottlenecks` add up these rows instead of joining every attempt of the period
to its step (docs/analytics.md). They are filled incrementally from the transitions tables at
query time (tasker.store.rollups.catch_up), so the migration creates empty tables and two cursors at id 0: on a
large store the first analytics call after the upgrade reads the whole history once (2.5 minutes
for 15 million step transitions, docs/benchmarks.md).
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_STEP_PK = ["hour", "namespace", "name", "version", "step", "dependent_system"]


def _step_key() -> list[sa.Column[object]]:
    return [
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("step", sa.String(128), nullable=False),
        sa.Column("dependent_system", sa.String(128), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "tasker_step_rollups",
        *_step_key(),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("error_class", sa.String(255), nullable=False),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.Column("after_retries", sa.BigInteger(), nullable=False),
        sa.Column("first_outcomes", sa.BigInteger(), nullable=False),
        sa.Column("retry_limit", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(*_STEP_PK, "outcome", "error_class", name="pk_tasker_step_rollups"),
    )
    op.create_table(
        "tasker_step_duration_rollups",
        *_step_key(),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.Float(), nullable=False),
        sa.Column("low", sa.Float(), nullable=False),
        sa.Column("high", sa.Float(), nullable=False),
        sa.Column("buckets", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(*_STEP_PK, name="pk_tasker_step_duration_rollups"),
    )
    op.create_table(
        "tasker_task_rollups",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("tasks", sa.BigInteger(), nullable=False),
        sa.Column("started", sa.BigInteger(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.Float(), nullable=False),
        sa.Column("low", sa.Float(), nullable=True),
        sa.Column("high", sa.Float(), nullable=True),
        sa.Column("buckets", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "hour", "namespace", "name", "version", "status", name="pk_tasker_task_rollups"
        ),
    )
    cursors = op.create_table(
        "tasker_rollup_cursors",
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("gaps", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", name="pk_tasker_rollup_cursors"),
    )
    now = datetime.now(UTC)
    op.bulk_insert(
        cursors,
        [
            {"source": "step_transitions", "last_id": 0, "gaps": "[]", "updated_at": now},
            {"source": "task_transitions", "last_id": 0, "gaps": "[]", "updated_at": now},
        ],
    )


def downgrade() -> None:
    op.drop_table("tasker_rollup_cursors")
    op.drop_table("tasker_task_rollups")
    op.drop_table("tasker_step_duration_rollups")
    op.drop_table("tasker_step_rollups")
