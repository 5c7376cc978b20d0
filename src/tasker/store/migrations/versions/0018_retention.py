"""retention: the housekeeping job's last pass, and the archive table

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-08

- `tasker_jobs.last_pass`: what a job's last pass did (JSON: when, how long, tasks deleted per
  state, worker rows pruned, its error), which health and `tasker retention` show;
- `tasker_archived_tasks`: finished tasks written by a purge before it deleted them, when the
  archive is `table` (one row per task, the document of docs/operations.md).

A nullable column and a new table: PostgreSQL adds them without rewriting anything.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("tasker_jobs") as batch:
        batch.add_column(sa.Column("last_pass", _JSON, nullable=True))
    op.create_table(
        "tasker_archived_tasks",
        sa.Column("archive_id", _ID, autoincrement=True, nullable=False),
        sa.Column("id", _ID, nullable=False),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("finished_at", _TIME, nullable=True),
        sa.Column("archived_at", _TIME, nullable=False),
        sa.Column("document", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("archive_id", name=op.f("pk_tasker_archived_tasks")),
    )
    op.create_index(op.f("ix_tasker_archived_tasks_id"), "tasker_archived_tasks", ["id"])
    op.create_index(
        op.f("ix_tasker_archived_tasks_namespace_name_finished_at"),
        "tasker_archived_tasks",
        ["namespace", "name", "finished_at"],
    )


def downgrade() -> None:
    op.drop_table("tasker_archived_tasks")
    with op.batch_alter_table("tasker_jobs") as batch:
        batch.drop_column("last_pass")
