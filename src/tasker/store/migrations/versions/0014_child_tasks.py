"""sub-workflows: a task created by another task's step knows its parent

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06

A step with `task:` creates a child task in the transaction that parks the step
(`tasker.store.completion`); the child's row names its parent task and step, so that its settling
wakes the parent step, cancelling the parent cancels it, and both show their links. A partial
index finds a task's children: only child tasks enter it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_CHILDREN = "parent_task_id IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("tasker_tasks") as batch:
        batch.add_column(sa.Column("parent_task_id", _ID, nullable=True))
        batch.add_column(sa.Column("parent_step_id", _ID, nullable=True))
    op.create_index(
        "ix_tasker_tasks_children",
        "tasker_tasks",
        ["parent_task_id", "parent_step_id"],
        postgresql_where=sa.text(_CHILDREN),
        sqlite_where=sa.text(_CHILDREN),
    )


def downgrade() -> None:
    op.drop_index("ix_tasker_tasks_children", table_name="tasker_tasks")
    # Plain DROP COLUMN: a batch would recreate tasker_tasks, and dropping the old table would
    # cascade to every step through their foreign key.
    op.drop_column("tasker_tasks", "parent_step_id")
    op.drop_column("tasker_tasks", "parent_task_id")
