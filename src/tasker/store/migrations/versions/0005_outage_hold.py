"""outage hold: when a dependent system began failing, and how long its steps may wait for it

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

A step whose attempts run out while its dependent system answers nothing waits for the system's circuit
instead of failing, for up to `max_outage_seconds` counted from `failing_since`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasker_dependent_systems") as batch:
        batch.add_column(sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("max_outage_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasker_dependent_systems") as batch:
        batch.drop_column("max_outage_seconds")
        batch.drop_column("failing_since")
