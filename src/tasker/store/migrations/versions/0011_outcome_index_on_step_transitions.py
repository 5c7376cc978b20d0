"""the overview's index on step transitions holds attempt outcomes only

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

The overview reads the last hour of attempt outcomes (completed, failed) and the latest failures
from `(to_state, at)` on step transitions. Two of a step's three transitions (to ready, to
in_progress) are never read that way, so the index now holds only rows whose `to_state` is an
outcome: one entry per step instead of three.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_OUTCOMES = "to_state IN ('complete', 'waiting_retry', 'error')"


def upgrade() -> None:
    op.drop_index("ix_tasker_step_transitions_to_state_at", table_name="tasker_step_transitions")
    op.create_index(
        "ix_tasker_step_transitions_outcomes",
        "tasker_step_transitions",
        ["to_state", "at"],
        postgresql_where=sa.text(_OUTCOMES),
        sqlite_where=sa.text(_OUTCOMES),
    )


def downgrade() -> None:
    op.drop_index("ix_tasker_step_transitions_outcomes", table_name="tasker_step_transitions")
    op.create_index(
        "ix_tasker_step_transitions_to_state_at", "tasker_step_transitions", ["to_state", "at"]
    )
