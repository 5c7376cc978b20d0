"""steps that wait for a control-flow decision, and the reason of a step's transition

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06

`tasker_steps.gated` marks a step whose parents' completion alone must not make it ready: it has a
`when:` condition, a `join: any`, or a parent that may be skipped (`tasker.domain.control`). Every
statement that readies children leaves a gated step `pending` for the decision, so no path can run
it unchecked. `tasker_steps.decision` keeps that decision's reason on the step (why it was skipped, or that its
condition was true), for every view of the step; `tasker_step_transitions.reason` says why a step moved when no attempt did it: the
condition and its value of a skip, the skipped parent it followed. Both are new columns with a
constant default: PostgreSQL adds them without rewriting the tables.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasker_steps") as batch:
        batch.add_column(
            sa.Column("gated", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("decision", sa.Text(), nullable=True))
    with op.batch_alter_table("tasker_step_transitions") as batch:
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not a batch that recreates the tables:
    # with foreign keys on, dropping a referenced table would cascade to the rows that refer to it.
    op.drop_column("tasker_step_transitions", "reason")
    op.drop_column("tasker_steps", "decision")
    op.drop_column("tasker_steps", "gated")
