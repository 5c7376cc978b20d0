"""compensations: a step's undo is a step of its own

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06

A task that fails (or is cancelled with compensation) undoes what its completed steps did
(`tasker.domain.compensation`): one step row per step to undo, named `undo:<step>`, whose
`compensates` names the step it undoes; they wait for each other through ordinary edges.
`tasker_steps.undo` marks a step whose template declares a compensation under `on_failure:
compensate`, and `tasker_steps.stops` a step whose failure leaves its task in `error` (its
`on_failure: stop`), so that every path that settles a task can tell, from the steps alone, that a
failed task is to compensate rather than end in `error`. A nullable column and one with a constant
default: PostgreSQL adds both without rewriting the table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("tasker_steps") as batch:
        batch.add_column(sa.Column("compensates", _ID, nullable=True))
        batch.add_column(sa.Column("undo", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(
            sa.Column("stops", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    # Plain DROP COLUMN, not a batch that recreates the table (see 0012).
    op.drop_column("tasker_steps", "stops")
    op.drop_column("tasker_steps", "undo")
    op.drop_column("tasker_steps", "compensates")
