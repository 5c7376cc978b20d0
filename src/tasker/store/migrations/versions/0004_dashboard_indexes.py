"""dashboard indexes: keyset listings by filter, overview counts, active steps, transitions by state

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

Keyset pages of tasks read each filter's tasks in id order from an index; the overview reads the
last hour's attempts and the latest failures from the end of (to_state, at). Two indexes are
replaced by a superset that also orders by id: (created_at) and (namespace, name, version).

On a large PostgreSQL store the index builds take a while and block task creation while they run;
docs/benchmarks.md (dashboard) shows how to build them first with CREATE INDEX CONCURRENTLY.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ACTIVE = "state IN ('ready', 'waiting_retry', 'in_progress', 'error')"

_TASK_INDEXES = [
    ("ix_tasker_tasks_created_at_id", ["created_at", "id"]),
    ("ix_tasker_tasks_namespace_id", ["namespace", "id"]),
    ("ix_tasker_tasks_namespace_name_id", ["namespace", "name", "id"]),
    ("ix_tasker_tasks_namespace_name_version_id", ["namespace", "name", "version", "id"]),
    ("ix_tasker_tasks_status_id", ["status", "id"]),
    ("ix_tasker_tasks_idempotency_key", ["idempotency_key"]),
    ("ix_tasker_tasks_correlation_id", ["correlation_id"]),
    ("ix_tasker_tasks_status_finished_at", ["status", "finished_at"]),
]


def upgrade() -> None:
    # IF [NOT] EXISTS: an operator may have built these beforehand with CREATE INDEX CONCURRENTLY.
    op.drop_index("ix_tasker_tasks_created_at", table_name="tasker_tasks", if_exists=True)
    op.drop_index(
        "ix_tasker_tasks_namespace_name_version", table_name="tasker_tasks", if_exists=True
    )
    for name, columns in _TASK_INDEXES:
        op.create_index(name, "tasker_tasks", columns, unique=False, if_not_exists=True)
    op.create_index(
        "ix_tasker_steps_active",
        "tasker_steps",
        ["dependent_system", "state"],
        unique=False,
        postgresql_where=sa.text(_ACTIVE),
        sqlite_where=sa.text(_ACTIVE),
        if_not_exists=True,
    )
    op.create_index(
        "ix_tasker_step_transitions_to_state_at",
        "tasker_step_transitions",
        ["to_state", "at"],
        unique=False,
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index("ix_tasker_step_transitions_to_state_at", table_name="tasker_step_transitions")
    op.drop_index("ix_tasker_steps_active", table_name="tasker_steps")
    for name, _ in reversed(_TASK_INDEXES):
        op.drop_index(name, table_name="tasker_tasks")
    op.create_index(
        "ix_tasker_tasks_namespace_name_version",
        "tasker_tasks",
        ["namespace", "name", "version"],
        unique=False,
    )
    op.create_index("ix_tasker_tasks_created_at", "tasker_tasks", ["created_at"], unique=False)
