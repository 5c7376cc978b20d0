"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tasker_templates",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "definition",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasker_templates")),
        sa.UniqueConstraint("content_hash", name=op.f("uq_tasker_templates_content_hash")),
    )
    op.create_table(
        "tasker_tasks",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column(
            "template_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column(
            "context",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("correlation_id", sa.String(length=128), nullable=False),
        sa.Column(
            "annotations",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["template_id"],
            ["tasker_templates.id"],
            name=op.f("fk_tasker_tasks_template_id_tasker_templates"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasker_tasks")),
        sa.UniqueConstraint(
            "namespace",
            "name",
            "idempotency_key",
            name=op.f("uq_tasker_tasks_namespace_name_idempotency_key"),
        ),
    )
    with op.batch_alter_table("tasker_tasks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_tasker_tasks_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_tasker_tasks_namespace_name_version"),
            ["namespace", "name", "version"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_tasker_tasks_status_created_at"), ["status", "created_at"], unique=False
        )

    op.create_table(
        "tasker_steps",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("dependent_system", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("pending_parents", sa.Integer(), nullable=False),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("retry_limit", sa.Integer(), nullable=False),
        sa.Column("retryable", sa.Boolean(), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claim_token", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("idempotency_key", sa.String(length=64), nullable=False),
        sa.Column(
            "results",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "last_error",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasker_tasks.id"],
            name=op.f("fk_tasker_steps_task_id_tasker_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasker_steps")),
        sa.UniqueConstraint("task_id", "name", name=op.f("uq_tasker_steps_task_id_name")),
    )
    with op.batch_alter_table("tasker_steps", schema=None) as batch_op:
        batch_op.create_index(
            "ix_tasker_steps_claimable",
            ["run_at"],
            unique=False,
            postgresql_where=sa.text("state IN ('ready', 'waiting_retry')"),
            sqlite_where=sa.text("state IN ('ready', 'waiting_retry')"),
        )
        batch_op.create_index(
            "ix_tasker_steps_leased",
            ["lease_expires_at"],
            unique=False,
            postgresql_where=sa.text("state = 'in_progress'"),
            sqlite_where=sa.text("state = 'in_progress'"),
        )
        batch_op.create_index(
            batch_op.f("ix_tasker_steps_task_id_state"), ["task_id", "state"], unique=False
        )

    op.create_table(
        "tasker_task_transitions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("from_state", sa.String(length=32), nullable=True),
        sa.Column("to_state", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasker_tasks.id"],
            name=op.f("fk_tasker_task_transitions_task_id_tasker_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasker_task_transitions")),
    )
    with op.batch_alter_table("tasker_task_transitions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_tasker_task_transitions_task_id"), ["task_id"], unique=False
        )

    op.create_table(
        "tasker_step_edges",
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "parent_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("child_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.ForeignKeyConstraint(
            ["child_id"],
            ["tasker_steps.id"],
            name=op.f("fk_tasker_step_edges_child_id_tasker_steps"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["tasker_steps.id"],
            name=op.f("fk_tasker_step_edges_parent_id_tasker_steps"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasker_tasks.id"],
            name=op.f("fk_tasker_step_edges_task_id_tasker_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("parent_id", "child_id", name=op.f("pk_tasker_step_edges")),
    )
    with op.batch_alter_table("tasker_step_edges", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_tasker_step_edges_child_id"), ["child_id"], unique=False
        )

    op.create_table(
        "tasker_step_transitions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("step_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("from_state", sa.String(length=32), nullable=True),
        sa.Column("to_state", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=True),
        sa.Column("error_class", sa.String(length=255), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["step_id"],
            ["tasker_steps.id"],
            name=op.f("fk_tasker_step_transitions_step_id_tasker_steps"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasker_tasks.id"],
            name=op.f("fk_tasker_step_transitions_task_id_tasker_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasker_step_transitions")),
    )
    with op.batch_alter_table("tasker_step_transitions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_tasker_step_transitions_step_id"), ["step_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_tasker_step_transitions_task_id"), ["task_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("tasker_step_transitions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasker_step_transitions_task_id"))
        batch_op.drop_index(batch_op.f("ix_tasker_step_transitions_step_id"))

    op.drop_table("tasker_step_transitions")
    with op.batch_alter_table("tasker_step_edges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasker_step_edges_child_id"))

    op.drop_table("tasker_step_edges")
    with op.batch_alter_table("tasker_task_transitions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasker_task_transitions_task_id"))

    op.drop_table("tasker_task_transitions")
    with op.batch_alter_table("tasker_steps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasker_steps_task_id_state"))
        batch_op.drop_index(
            "ix_tasker_steps_leased",
            postgresql_where=sa.text("state = 'in_progress'"),
            sqlite_where=sa.text("state = 'in_progress'"),
        )
        batch_op.drop_index(
            "ix_tasker_steps_claimable",
            postgresql_where=sa.text("state IN ('ready', 'waiting_retry')"),
            sqlite_where=sa.text("state IN ('ready', 'waiting_retry')"),
        )

    op.drop_table("tasker_steps")
    with op.batch_alter_table("tasker_tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasker_tasks_status_created_at"))
        batch_op.drop_index(batch_op.f("ix_tasker_tasks_namespace_name_version"))
        batch_op.drop_index(batch_op.f("ix_tasker_tasks_created_at"))

    op.drop_table("tasker_tasks")
    op.drop_table("tasker_templates")
