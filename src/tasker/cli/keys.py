"""`tasker keys`: API keys for the REST API (created, listed, revoked; a key is shown once at
creation).

`create` prints the key alone on stdout and everything else on stderr, so
`KEY=$(tasker keys create ...)` captures exactly the key.
"""

from __future__ import annotations

from datetime import datetime

import click
from rich import box
from rich.table import Table

from tasker.cli.common import console, err_console, state
from tasker.store.api_keys import PERMISSIONS, WILDCARDS


@click.group()
def keys() -> None:
    """API keys for the REST API (stored as SHA-256 digests; see docs/authentication.md)."""


@keys.command(
    help=(
        f"Create a key and print it once. Permissions: {', '.join(PERMISSIONS)}; wildcards: "
        f"{', '.join(WILDCARDS)}."
    )
)
@click.option("--name", required=True, help="A unique name for the key (who or what uses it).")
@click.option(
    "--permissions",
    "permission_list",
    default=None,
    metavar="P1,P2",
    help="Comma-separated permissions to grant.",
)
@click.option(
    "--permission",
    "permission_items",
    multiple=True,
    metavar="P",
    help="A permission to grant (repeatable).",
)
@click.pass_context
def create(
    ctx: click.Context, name: str, permission_list: str | None, permission_items: tuple[str, ...]
) -> None:
    wanted = [*(permission_list.split(",") if permission_list else []), *permission_items]
    record, secret = state(ctx).engine(load=False).keys.create(name, wanted)
    err_console.print(
        f"created API key '{record.name}' ({record.prefix}) with {', '.join(record.permissions)};"
        " it is shown once, so store it now (only its digest is kept):",
        highlight=False,
        soft_wrap=True,
    )
    click.echo(secret)


@keys.command("list")
@click.pass_context
def list_(ctx: click.Context) -> None:
    """List keys (name, prefix, permissions, dates); secrets are never shown."""
    rows = state(ctx).engine(load=False, access="read").keys.all()
    table = Table(title=f"{len(rows)} API keys", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("name / prefix", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("created (UTC)", max_width=10)
    table.add_column("last used", max_width=10)
    table.add_column("permissions", min_width=26, overflow="fold")

    def when(value: datetime | None) -> str:
        return f"{value:%Y-%m-%d %H:%M}" if value is not None else "-"

    for r in rows:
        status = "[red]revoked[/]" if r.revoked else "[green]active[/]"
        table.add_row(
            f"{r.name}\n[dim]{r.prefix}[/]",
            status,
            when(r.created_at),
            when(r.last_used_at),
            "\n".join(r.permissions),
        )
    console.print(table, highlight=False)


@keys.command()
@click.argument("name")
@click.pass_context
def revoke(ctx: click.Context, name: str) -> None:
    """Revoke a key: requests that carry it get 401 from now on."""
    record = state(ctx).engine(load=False, access="read").keys.revoke(name)
    assert record.revoked_at is not None
    console.print(
        f"API key '{record.name}' ({record.prefix}) revoked at"
        f" {record.revoked_at:%Y-%m-%d %H:%M:%S} UTC",
        highlight=False,
    )
