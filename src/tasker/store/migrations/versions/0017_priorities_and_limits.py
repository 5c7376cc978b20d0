"""priorities, rate limits per time window and fair share per key

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07

- `tasker_tasks.priority` and `tasker_steps.priority` (copied from the task, so that a claim reads
  it from the step), with a second claim index holding only the claimable steps whose priority is
  above 0, in the order of `tasker.domain.priorities.claim_key`: a store where no task has a
  priority writes nothing more per step than before;
- `tasker_tasks.concurrency_key` and `tasker_steps.concurrency_key` (a template's fair-share key,
  evaluated at creation), with a partial index over the running steps that have one, and
  `tasker_key_limits` (the most steps in flight per key, per template);
- rate limits per time window on `tasker_dependent_systems`, and `tasker_rate_starts`, the sliding
  window of when each step of a rate-limited system started;
- `ix_tasker_tasks_priority_id` over tasks with a priority: the task list sorted by priority (the
  tasks of priority 0 come from the primary key; a task update writes no entry of it for them).

Columns are added and dropped in place (no batch copy of the tables, see 0012 and 0014); the new
columns have constant defaults: PostgreSQL adds them without rewriting the tables.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)
_CLAIMABLE = "state IN ('ready', 'waiting_retry')"
_PRIORITIZED = f"{_CLAIMABLE} AND priority > 0"
_KEYED_RUNNING = "state = 'in_progress' AND concurrency_key IS NOT NULL"
_PRIORITY_KEY = {
    "postgresql": "(run_at AT TIME ZONE 'UTC') - priority * interval '1 minute'",
    "sqlite": "julianday(run_at) - priority / 1440.0",
}


def upgrade() -> None:
    for table in ("tasker_tasks", "tasker_steps"):
        op.add_column(
            table, sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        op.add_column(table, sa.Column("concurrency_key", sa.String(255), nullable=True))
    op.create_index(
        op.f("ix_tasker_tasks_priority_id"),
        "tasker_tasks",
        ["priority", "id"],
        postgresql_where=sa.text("priority > 0"),
        sqlite_where=sa.text("priority > 0"),
    )
    dialect = op.get_bind().dialect.name
    op.execute(
        f"CREATE INDEX ix_tasker_steps_prioritized ON tasker_steps"
        f" (({_PRIORITY_KEY[dialect]}), id) WHERE {_PRIORITIZED}"
    )
    op.create_index(
        "ix_tasker_steps_keyed_running",
        "tasker_steps",
        ["concurrency_key"],
        postgresql_where=sa.text(_KEYED_RUNNING),
        sqlite_where=sa.text(_KEYED_RUNNING),
    )
    systems = "tasker_dependent_systems"
    op.add_column(systems, sa.Column("rate_limit", sa.Integer(), nullable=True))
    op.add_column(systems, sa.Column("rate_per_seconds", sa.Float(), nullable=True))
    op.add_column(systems, sa.Column("rate_horizon", _TIME, nullable=True))
    op.add_column(
        systems,
        sa.Column("rate_deferrals", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.create_table(
        "tasker_rate_starts",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("system", sa.String(128), nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasker_rate_starts")),
    )
    op.create_index(op.f("ix_tasker_rate_starts_system_at"), "tasker_rate_starts", ["system", "at"])
    op.create_table(
        "tasker_key_limits",
        sa.Column("scope", sa.String(200), nullable=False),
        sa.Column("max_in_flight", sa.Integer(), nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_tasker_key_limits")),
    )


def downgrade() -> None:
    op.drop_table("tasker_key_limits")
    op.drop_table("tasker_rate_starts")
    # Plain DROP COLUMN, not a batch that recreates the table (see 0012 and 0014).
    for column in ("rate_deferrals", "rate_horizon", "rate_per_seconds", "rate_limit"):
        op.drop_column("tasker_dependent_systems", column)
    op.drop_index("ix_tasker_steps_keyed_running", table_name="tasker_steps")
    op.drop_index("ix_tasker_steps_prioritized", table_name="tasker_steps")
    op.drop_index(op.f("ix_tasker_tasks_priority_id"), table_name="tasker_tasks")
    for table in ("tasker_steps", "tasker_tasks"):
        op.drop_column(table, "concurrency_key")
        op.drop_column(table, "priority")
