"""the workers' gate as a view: `tasker_gate`

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07

The driver-level cycle may act only while nothing restricts claims (`GATE_SQL` of
`tasker.store.cycle_rows`: no circuit away from closed, no failure on record, no limit, no fair
share, no claimable step with a priority). Its first statement checked that inline; with the checks
of migration 0017 it grew past the 4,096 characters up to which psycopg caches a statement's
converted text, and every cycle paid 0.16 ms to parse it again. The view holds the check once; the
statements read `SELECT open FROM tasker_gate`.

The view's text is this migration's: a later change to `GATE_SQL` needs a migration that replaces
the view (`tests/integration/test_gate_view.py` holds the two to the same answers).
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

_GATE = (
    "NOT EXISTS (SELECT 1 FROM tasker_dependent_systems WHERE circuit_state <> 'closed'"
    " OR consecutive_failures > 0 OR max_in_flight IS NOT NULL OR rate_limit IS NOT NULL"
    " OR (name = 'default' AND failure_threshold IS NOT NULL))"
    " AND NOT EXISTS (SELECT 1 FROM tasker_namespace_limits)"
    " AND NOT EXISTS (SELECT 1 FROM tasker_key_limits)"
    " AND NOT EXISTS (SELECT 1 FROM tasker_steps"
    " WHERE state IN ('ready', 'waiting_retry') AND priority > 0)"
)


def upgrade() -> None:
    op.execute(f"CREATE VIEW tasker_gate AS SELECT {_GATE} AS open")


def downgrade() -> None:
    op.execute("DROP VIEW tasker_gate")
