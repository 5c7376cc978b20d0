"""`tasker templates validate|list|show`: templates are read from YAML files; the store is never
opened.

`validate` checks every file it is given and reports every problem it finds (the structure of each
file, then each handler class that cannot be imported, then templates defined twice) before exiting
2, so one run shows all there is to fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tasker.cli.common import echo_json, json_option, state, templates_option
from tasker.domain.errors import TemplateError
from tasker.domain.templates import TaskTemplate
from tasker.registry import TemplateRegistry, parse_ref
from tasker.templates.loader import (
    load_file,
    load_path,
    resolve_step_handler,
    resolve_task_handler,
    template_files,
)

# Imports inside the commands below are deliberate: Rich, the engine and the consoles load only when
# a command runs, so `tasker ... --help` starts fast (benchmarks/bench_startup.py).


@click.group()
def templates() -> None:
    """Validate, list and inspect task templates."""


@templates.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.pass_context
def validate(ctx: click.Context, paths: tuple[str, ...]) -> None:
    """Check template files (or directories) and report every problem, one line each; exit 2 if
    any."""
    from tasker.cli.common import console, err_console

    problems: list[str] = []
    files: list[Path] = []
    for path in paths:
        try:
            files.extend(template_files(path))
        except TemplateError as exc:
            problems.append(str(exc))
    seen: dict[str, Path] = {}
    for file in files:
        found, errors = _check_file(file)
        problems.extend(errors)
        if found is None:
            continue
        if found.key in seen and seen[found.key] != file:
            problems.append(
                f"{file}: template {found.key} is also defined in {seen[found.key]}; fix: give one"
                " of them another version"
            )
        seen.setdefault(found.key, file)
        for w in found.warnings:
            err_console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
        if not errors:
            console.print(
                f"[green]ok[/] {found.key}  ({len(found.step_templates)} steps)  {file}",
                highlight=False,
            )
    if not files and not problems:
        problems.append("no .yaml or .yml files found; fix: pass a template file or directory")
    for problem in problems:
        err_console.print(f"[bold red]error:[/] {problem}", highlight=False, soft_wrap=True)
    if problems:
        bad = len({p.split(":", 1)[0] for p in problems})
        err_console.print(
            f"{len(problems)} problem(s) in {bad} file(s) of {len(files)}", highlight=False
        )
        ctx.exit(2)


def _check_file(file: Path) -> tuple[TaskTemplate | None, list[str]]:
    """The template of `file` and every problem in it: its structure first, then each handler
    import."""
    try:
        found = load_file(file, resolve_handlers=False)
    except TemplateError as exc:
        return None, [str(exc)]
    errors: list[str] = []
    if found.task_handler_class:
        try:
            resolve_task_handler(found.task_handler_class, where=f"{file}: task_handler_class")
        except TemplateError as exc:
            errors.append(str(exc))
    for step in found.step_templates:
        if step.handler_class is None:
            continue  # a sub-workflow runs a template, not code
        try:
            resolve_step_handler(step.handler_class, where=f"{file}: step '{step.name}'")
        except TemplateError as exc:
            errors.append(str(exc))
    return found, errors


def _registry(ctx: click.Context, paths: tuple[str, ...]) -> TemplateRegistry:
    registry = TemplateRegistry()
    locations = state(ctx).settings.templates(paths)
    if not locations:
        from tasker.cli.common import err_console

        err_console.print(
            "[bold red]error:[/] no templates: pass --templates PATH or set TASKER_TEMPLATE_PATH"
        )
        raise click.exceptions.Exit(2)
    for loc in locations:
        for t in load_path(loc):
            registry.register(t)
    return registry


def template_json(t: TaskTemplate, *, full: bool = False) -> dict[str, Any]:
    """A template as `--json` prints it; `full` adds the steps with their retry policies and the
    schema."""
    data: dict[str, Any] = {
        "namespace": t.namespace_name,
        "name": t.name,
        "version": t.version,
        "key": t.key,
        "description": t.description,
        "steps": len(t.step_templates),
        "source": str(t.source) if t.source else None,
    }
    if not full:
        return data
    from tasker.domain.graph import execution_levels

    steps = []
    for s in t.step_templates:
        p = t.retry_policy(s)
        steps.append(
            {
                "name": s.name,
                "depends_on": list(s.parents),
                "handler_class": s.handler_class,
                "retryable": p.retryable,
                "retry_limit": p.retry_limit,
                "backoff_base_seconds": p.backoff_base_seconds,
                "backoff_max_seconds": p.backoff_max_seconds,
                "jitter": p.jitter,
                "timeout_seconds": s.timeout_seconds,
                "dependent_system": t.dependent_system_of(s),
            }
        )
    data.update(
        steps=steps,
        context_schema=t.context_schema,
        execution_order=execution_levels([(s.name, s.parents) for s in t.step_templates]),
    )
    return data


@templates.command("list")
@templates_option
@json_option
@click.pass_context
def list_(ctx: click.Context, templates: tuple[str, ...], as_json: bool) -> None:
    """List the templates found in the template paths."""
    registry = _registry(ctx, templates)
    if as_json:
        echo_json([template_json(t) for t in registry.all()])
        return
    from rich.table import Table

    from tasker.cli.common import console

    table = Table(title=f"{len(registry)} templates")
    for col in ("namespace", "name", "version", "steps", "description", "file"):
        table.add_column(col, overflow="fold")
    for t in registry.all():
        table.add_row(
            t.namespace_name,
            t.name,
            t.version,
            str(len(t.step_templates)),
            t.description or "",
            t.source or "",
        )
    console.print(table)


@templates.command()
@click.argument("ref")
@templates_option
@click.option("--mermaid-only", is_flag=True, help="Print only the Mermaid diagram.")
@json_option
@click.pass_context
def show(
    ctx: click.Context, ref: str, templates: tuple[str, ...], mermaid_only: bool, as_json: bool
) -> None:
    """Show one template (NS/NAME[@VERSION]): steps, dependencies, retries, order and a Mermaid
    diagram."""
    from tasker.cli.render import template_mermaid, template_order, template_steps_table

    registry = _registry(ctx, templates)
    t = registry.get(parse_ref(ref))
    diagram = template_mermaid(t)
    if as_json:
        echo_json(
            {
                **template_json(t, full=True),
                "mermaid": diagram,
                "versions": [v.version for v in registry.versions(t.namespace_name, t.name)],
            }
        )
        return
    if mermaid_only:
        click.echo(diagram, nl=False)
        return
    from rich.syntax import Syntax

    from tasker.cli.common import console

    console.print(template_steps_table(t))
    console.print(f"[bold]Execution order:[/] {template_order(t)}", highlight=False)
    versions = [v.version for v in registry.versions(t.namespace_name, t.name)]
    console.print(
        f"[bold]Versions loaded:[/] {', '.join(versions)}   [bold]source:[/] {t.source}",
        highlight=False,
    )
    console.print("[bold]Mermaid:[/]")
    console.print(Syntax(diagram, "text", theme="ansi_dark", background_color="default"))
