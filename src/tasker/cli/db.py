"""`tasker db upgrade|current`."""

from __future__ import annotations

import click

from tasker.cli.common import console, state
from tasker.store.database import Database
from tasker.store.migrate import current_revision, head_revision
from tasker.store.migrate import upgrade as run_upgrade


@click.group()
def db() -> None:
    """Database migrations."""


@db.command()
@click.pass_context
def upgrade(ctx: click.Context) -> None:
    """Apply every pending migration."""
    database = Database(state(ctx).database_url, migrate=False)
    before = current_revision(database.writer)
    run_upgrade(database.writer)
    console.print(f"{database.safe_url()}: {before or 'empty'} -> {current_revision(database.writer)}",
                  highlight=False)


@db.command()
@click.pass_context
def current(ctx: click.Context) -> None:
    """Show the schema revision of the database and the latest one."""
    database = Database(state(ctx).database_url, migrate=False)
    console.print(f"{database.safe_url()}: at {current_revision(database.writer) or 'empty'}, "
                  f"latest {head_revision()}", highlight=False)
