"""`tasker db upgrade|current`: the documented way to create or update the schema of a store.

Commands that only read never migrate, and a PostgreSQL store is not migrated by itself unless
`auto_migrate` is on (docs/configuration.md), so `tasker db upgrade` is the step after `createdb`.
"""

from __future__ import annotations

import click

from tasker.cli.common import console, state
from tasker.store.database import Database
from tasker.store.migrate import current_revision, head_revision


@click.group()
def db() -> None:
    """Database migrations."""


@db.command()
@click.pass_context
def upgrade(ctx: click.Context) -> None:
    """Create the schema, or apply every pending migration, in the configured database."""
    database = Database(state(ctx).database_url, migrate=False)
    try:
        with database.connection_errors():
            before = current_revision(database.writer)
        database.migrate()
        after = current_revision(database.writer)
    finally:
        database.dispose()
    console.print(f"{database.shown_url()}: {before or 'empty'} -> {after}", highlight=False)


@db.command()
@click.pass_context
def current(ctx: click.Context) -> None:
    """Show the schema revision of the database and the latest one (creates nothing)."""
    database = Database(state(ctx).database_url, migrate=False)
    try:
        if database.is_sqlite and not database.memory and not database.file_exists():
            console.print(
                f"{database.shown_url()}: no such file yet, latest {head_revision()} ('tasker db "
                "upgrade' creates it)",
                highlight=False,
            )
            return
        with database.connection_errors():
            revision = current_revision(database.writer) or "empty"
    finally:
        database.dispose()
    console.print(
        f"{database.shown_url()}: at {revision}, latest {head_revision()}", highlight=False
    )
