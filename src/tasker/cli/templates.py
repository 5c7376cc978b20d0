"""`tasker templates validate|list|show`."""

from __future__ import annotations

import click
from rich.syntax import Syntax

from tasker.cli.common import console, err_console, state, templates_option
from tasker.cli.render import template_mermaid, template_order, template_steps_table
from tasker.registry import TemplateRegistry, parse_ref
from tasker.templates.loader import load_path, template_files


@click.group()
def templates() -> None:
    """Validate, list and inspect task templates."""


@templates.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def validate(paths: tuple[str, ...]) -> None:
    """Check template files (or directories) and report what is wrong, one line per problem."""
    count = 0
    for path in paths:
        for file in template_files(path):
            t = load_path(file)[0]
            count += 1
            for w in t.warnings:
                err_console.print(f"[yellow]warning:[/] {w}", highlight=False)
            console.print(f"[green]ok[/] {t.key}  ({len(t.step_templates)} steps)  {file}", highlight=False)
    if not count:
        err_console.print("[bold red]error:[/] no .yaml or .yml files found; fix: pass a template file or directory")
        raise click.exceptions.Exit(2)


def _registry(ctx: click.Context, paths: tuple[str, ...]) -> TemplateRegistry:
    registry = TemplateRegistry()
    locations = state(ctx).settings.templates(paths)
    if not locations:
        err_console.print("[bold red]error:[/] no templates: pass --templates PATH or set TASKER_TEMPLATE_PATH")
        raise click.exceptions.Exit(2)
    for loc in locations:
        for t in load_path(loc):
            registry.register(t)
    return registry


@templates.command("list")
@templates_option
@click.pass_context
def list_(ctx: click.Context, templates: tuple[str, ...]) -> None:
    """List the templates found in the template paths."""
    from rich.table import Table

    registry = _registry(ctx, templates)
    table = Table(title=f"{len(registry)} templates")
    for col in ("namespace", "name", "version", "steps", "description", "file"):
        table.add_column(col, overflow="fold")
    for t in registry.all():
        table.add_row(t.namespace_name, t.name, t.version, str(len(t.step_templates)), t.description or "",
                      t.source or "")
    console.print(table)


@templates.command()
@click.argument("ref")
@templates_option
@click.option("--mermaid-only", is_flag=True, help="Print only the Mermaid diagram.")
@click.pass_context
def show(ctx: click.Context, ref: str, templates: tuple[str, ...], mermaid_only: bool) -> None:
    """Show one template (NS/NAME[@VERSION]): steps, dependencies, retries, order and a Mermaid diagram."""
    registry = _registry(ctx, templates)
    t = registry.get(parse_ref(ref))
    diagram = template_mermaid(t)
    if mermaid_only:
        click.echo(diagram, nl=False)
        return
    console.print(template_steps_table(t))
    console.print(f"[bold]Execution order:[/] {template_order(t)}", highlight=False)
    versions = [v.version for v in registry.versions(t.namespace_name, t.name)]
    console.print(f"[bold]Versions loaded:[/] {', '.join(versions)}   [bold]source:[/] {t.source}", highlight=False)
    console.print("[bold]Mermaid:[/]")
    console.print(Syntax(diagram, "text", theme="ansi_dark", background_color="default"))
