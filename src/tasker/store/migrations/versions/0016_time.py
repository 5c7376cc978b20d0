"""time: delayed starts, deadlines, durable waits, signals, schedules and single-holder jobs

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06

- `tasker_tasks.starts_at` (a delayed start: its first steps' `run_at`) and `deadline_at` (past it
  the task ends in `error`, `deadline_exceeded`), with a partial index over unfinished tasks that
  have a deadline, which the deadline sweep reads;
- `tasker_steps.wait`: what a parked step sleeps or waits for (`tasker.domain.waits`);
- `tasker_signals`: signals sent to tasks, kept so that one that arrives before its step waits is
  not lost, unique by (task, name, idempotency key);
- `tasker_schedules`: cron schedules, each tick creating one task;
- `tasker_jobs`: a lease row per job that one worker at a time does for all (schedules,
  deadlines).

Nullable columns only: PostgreSQL adds them without rewriting the tables.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")
_TIME = sa.DateTime(timezone=True)
_DEADLINED = "deadline_at IS NOT NULL AND status IN ('pending', 'in_progress')"


def upgrade() -> None:
    with op.batch_alter_table("tasker_tasks") as batch:
        batch.add_column(sa.Column("starts_at", _TIME, nullable=True))
        batch.add_column(sa.Column("deadline_at", _TIME, nullable=True))
    op.create_index(
        "ix_tasker_tasks_deadlines",
        "tasker_tasks",
        ["deadline_at"],
        postgresql_where=sa.text(_DEADLINED),
        sqlite_where=sa.text(_DEADLINED),
    )
    with op.batch_alter_table("tasker_steps") as batch:
        batch.add_column(sa.Column("wait", _JSON, nullable=True))
    op.create_table(
        "tasker_signals",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("task_id", _ID, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("payload", _JSON, nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("sender", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasker_signals")),
        sa.UniqueConstraint(
            "task_id",
            "name",
            "idempotency_key",
            name=op.f("uq_tasker_signals_task_id_name_idempotency_key"),
        ),
    )
    op.create_index(
        op.f("ix_tasker_signals_task_id_name_id"), "tasker_signals", ["task_id", "name", "id"]
    )
    op.create_table(
        "tasker_schedules",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("task_name", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("cron", sa.String(255), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("context", _JSON, nullable=False),
        sa.Column("catch_up", sa.String(8), nullable=False),
        sa.Column("paused", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("next_at", _TIME, nullable=False),
        sa.Column("last_at", _TIME, nullable=True),
        sa.Column("last_task_id", _ID, nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasker_schedules")),
        sa.UniqueConstraint(
            "namespace",
            "task_name",
            "name",
            name=op.f("uq_tasker_schedules_namespace_task_name_name"),
        ),
    )
    op.create_index(op.f("ix_tasker_schedules_next_at"), "tasker_schedules", ["next_at"])
    op.create_table(
        "tasker_jobs",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(128), nullable=True),
        sa.Column("lease_until", _TIME, nullable=True),
        sa.Column("last_run_at", _TIME, nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_tasker_jobs")),
    )


def downgrade() -> None:
    op.drop_table("tasker_jobs")
    op.drop_index(op.f("ix_tasker_schedules_next_at"), table_name="tasker_schedules")
    op.drop_table("tasker_schedules")
    op.drop_index(op.f("ix_tasker_signals_task_id_name_id"), table_name="tasker_signals")
    op.drop_table("tasker_signals")
    # Plain DROP COLUMN, not a batch that recreates the table (see 0012 and 0014).
    op.drop_column("tasker_steps", "wait")
    op.drop_index("ix_tasker_tasks_deadlines", table_name="tasker_tasks")
    op.drop_column("tasker_tasks", "deadline_at")
    op.drop_column("tasker_tasks", "starts_at")
