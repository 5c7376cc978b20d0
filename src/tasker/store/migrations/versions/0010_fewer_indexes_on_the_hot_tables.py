"""fewer indexes on the hot tables: steps by (task_id, state), step transitions by step_id

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

Every change of a step's state is a new row version that PostgreSQL enters into every index of the
table (the state is indexed, so no update is HOT), and every transition row goes into every index
of its table: a 5-step task made 30 index entries in these two alone. Neither was needed:

- `(task_id, state)` on steps: every read of a task's steps (settling it, counting its states,
  locking it, operator actions) finds them by `task_id` through the unique `(task_id, name)` index,
  a handful of rows (thousands for a large fan-out, read whole either way);
- `step_id` on step transitions: the history reads a task's transitions by `task_id`; the analytics
  rollups, which asked for the earlier outcomes of one step, now ask by `task_id` and `step_id`.

The indexes each table keeps, and why, are listed in docs/architecture.md ("Indexes").
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_tasker_steps_task_id_state", table_name="tasker_steps")
    op.drop_index("ix_tasker_step_transitions_step_id", table_name="tasker_step_transitions")


def downgrade() -> None:
    op.create_index("ix_tasker_step_transitions_step_id", "tasker_step_transitions", ["step_id"])
    op.create_index("ix_tasker_steps_task_id_state", "tasker_steps", ["task_id", "state"])
