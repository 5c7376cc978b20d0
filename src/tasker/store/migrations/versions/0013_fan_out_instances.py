"""fan-out instances: a step's instances are steps of their own

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06

A `foreach` step expands into one step row per item (`tasker.store.decisions`): `instance_of` names
the fan-out step, `item_index` and `item` the instance's item. The fan-out step keeps `fanout`, how
many instances it has, and waits for them through ordinary edges. All are nullable columns without
a default: PostgreSQL adds them without rewriting the table, and rows of other steps carry nulls.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("tasker_steps") as batch:
        batch.add_column(sa.Column("instance_of", _ID, nullable=True))
        batch.add_column(sa.Column("item_index", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("item", _JSON, nullable=True))
        batch.add_column(sa.Column("fanout", sa.Integer(), nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMN, not a batch that recreates the table (see 0012).
    for column in ("fanout", "item", "item_index", "instance_of"):
        op.drop_column("tasker_steps", column)
