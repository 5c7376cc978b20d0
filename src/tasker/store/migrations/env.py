"""Alembic environment: runs against the engine handed over by tasker.store.migrate."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from tasker.store.database import resolve_url
from tasker.store.schema import metadata

config = context.config
engine = config.attributes.get("engine") or create_engine(
    resolve_url(config.get_main_option("sqlalchemy.url"))
)

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
