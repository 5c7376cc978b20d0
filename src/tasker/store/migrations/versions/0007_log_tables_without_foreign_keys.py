"""log tables without foreign keys: transitions, edges and custom events

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

Every transition row, edge and custom event is written by the store in the transaction that writes
(or already holds) the task and step it names, so a foreign key on these append-only tables
checked what was true by construction, at a price: each inserted row looked up and share-locked
its step and task (58 checks per 5-step task, each a row lock written to the WAL). Nothing deletes
tasks row by row today; whatever will (retention) deletes a task's rows in these tables with it.
The steps keep their key to their task, and tasks to their template snapshot: those rows are
written once. docs/architecture.md, "What the store writes per step", lists what each table keeps.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: (table, constraint, column, referred table)
_KEYS = [
    ("tasker_step_transitions", "step_id", "tasker_steps"),
    ("tasker_step_transitions", "task_id", "tasker_tasks"),
    ("tasker_task_transitions", "task_id", "tasker_tasks"),
    ("tasker_step_edges", "task_id", "tasker_tasks"),
    ("tasker_step_edges", "parent_id", "tasker_steps"),
    ("tasker_step_edges", "child_id", "tasker_steps"),
    ("tasker_custom_events", "task_id", "tasker_tasks"),
]


def _name(table: str, column: str, referred: str) -> str:
    return f"fk_{table}_{column}_{referred}"


def _tables() -> dict[str, list[tuple[str, str]]]:
    by_table: dict[str, list[tuple[str, str]]] = {}
    for table, column, referred in _KEYS:
        by_table.setdefault(table, []).append((column, referred))
    return by_table


def upgrade() -> None:
    for table, keys in _tables().items():
        with op.batch_alter_table(table) as batch:
            for column, referred in keys:
                batch.drop_constraint(_name(table, column, referred), type_="foreignkey")


def downgrade() -> None:
    for table, keys in _tables().items():
        with op.batch_alter_table(table) as batch:
            for column, referred in keys:
                batch.create_foreign_key(
                    _name(table, column, referred), referred, [column], ["id"], ondelete="CASCADE"
                )
