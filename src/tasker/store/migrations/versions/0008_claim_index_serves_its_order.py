"""claim index serves the claim's order: (run_at, id) over claimable steps

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

The claim takes the oldest claimable steps, `ORDER BY run_at, id LIMIT n`. An index on `run_at`
alone left PostgreSQL to read and sort every claimable row sharing the oldest `run_at` (all the
steps of a batch created together share one) to return `n`: 500 rows read for 32 claimed, measured
in docs/benchmarks.md. With `id` in the index the claim reads the rows it returns.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_CLAIMABLE = "state IN ('ready', 'waiting_retry')"


def upgrade() -> None:
    op.drop_index("ix_tasker_steps_claimable", table_name="tasker_steps")
    op.create_index(
        "ix_tasker_steps_claimable",
        "tasker_steps",
        ["run_at", "id"],
        postgresql_where=sa.text(_CLAIMABLE),
        sqlite_where=sa.text(_CLAIMABLE),
    )


def downgrade() -> None:
    op.drop_index("ix_tasker_steps_claimable", table_name="tasker_steps")
    op.create_index(
        "ix_tasker_steps_claimable",
        "tasker_steps",
        ["run_at"],
        postgresql_where=sa.text(_CLAIMABLE),
        sqlite_where=sa.text(_CLAIMABLE),
    )
