"""task rollups count the steps of the tasks they hold, by state

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

`/health/status` reports the steps of the tasks created in its window by state. Counted from the
raw tables that is a join of every task of the window to its steps (0.7 s at 1,000,000 tasks,
docs/benchmarks.md); a task in a final state never changes again, nor do its steps, so the rollup
of final tasks now also holds their steps by state (`step_states`, JSON {state: count}) and the
status reads it like the other figures.

The rows rolled up before this revision have no step counts, so the task rollups are emptied and
their cursor rewound: the next report reads the task transitions once more (the step rollups, the
larger part, are kept).
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _rewind() -> None:
    op.execute(sa.text("DELETE FROM tasker_task_rollups"))
    op.execute(
        sa.text(
            "UPDATE tasker_rollup_cursors SET last_id = 0, gaps = '[]', updated_at = :now "
            "WHERE source = 'task_transitions'"
        ).bindparams(now=datetime.now(UTC))
    )


def upgrade() -> None:
    _rewind()
    with op.batch_alter_table("tasker_task_rollups") as batch:
        batch.add_column(sa.Column("step_states", sa.Text(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("tasker_task_rollups") as batch:
        batch.drop_column("step_states")
