"""`tasker tasks list|show|cancel|retry|resolve`."""

from __future__ import annotations

import click

from tasker.cli.common import console, read_json, state
from tasker.cli.render import steps_table, task_header, task_mermaid, tasks_table
from tasker.errors import TaskerInputError
from tasker.states import TaskState


@click.group()
def tasks() -> None:
    """Inspect and operate on tasks."""


@tasks.command("list")
@click.option("--status", type=click.Choice([s.value for s in TaskState]), default=None)
@click.option("--namespace", default=None)
@click.option("--name", default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.pass_context
def list_(ctx: click.Context, status: str | None, namespace: str | None, name: str | None, limit: int,
          offset: int) -> None:
    """List tasks, newest first."""
    engine = state(ctx).engine(load=False)
    found, total = engine.list_tasks(status=status, namespace=namespace, name=name, limit=limit, offset=offset)
    console.print(tasks_table(found, total))


@tasks.command()
@click.argument("task_id", type=int)
@click.option("--mermaid", "show_mermaid", is_flag=True, help="Also print the task's diagram coloured by state.")
@click.pass_context
def show(ctx: click.Context, task_id: int, show_mermaid: bool) -> None:
    """Every step of a task with state, attempts, last error, times and durations."""
    engine = state(ctx).engine(load=False)
    task = engine.get_task(task_id)
    console.print(task_header(task), highlight=False)
    console.print(steps_table(task))
    if task.annotations:
        console.print(f"[bold]Annotations:[/] {task.annotations}", highlight=False)
    if show_mermaid:
        click.echo(task_mermaid(engine.task_template(task_id), task), nl=False)


@tasks.command()
@click.argument("task_id", type=int)
@click.option("--reason", default=None, help="Recorded with the cancellation.")
@click.pass_context
def cancel(ctx: click.Context, task_id: int, reason: str | None) -> None:
    """Cancel a task: unstarted steps never run and late results are discarded."""
    task = state(ctx).engine(load=False).cancel_task(task_id, reason=reason)
    console.print(f"task {task.id} is {task.status}", highlight=False)


@tasks.command()
@click.argument("task_id", type=int)
@click.pass_context
def retry(ctx: click.Context, task_id: int) -> None:
    """Re-arm the failed steps of a task in error with fresh attempts (a worker then runs them)."""
    task = state(ctx).engine(load=False).retry_task(task_id)
    console.print(f"task {task.id} is {task.status}; run a worker (tasker worker) to process it", highlight=False)


@tasks.command()
@click.argument("task_id", type=int)
@click.argument("step")
@click.option("--result", "result", default="{}", show_default=True, help="The step's result as JSON or @file.")
@click.pass_context
def resolve(ctx: click.Context, task_id: int, step: str, result: str) -> None:
    """Resolve a step by hand with a result; its dependents proceed as if it had completed."""
    value = read_json(result, "--result")
    if not isinstance(value, dict):
        raise TaskerInputError("--result must be a JSON object, like '{\"order_id\": 42}'")
    task = state(ctx).engine(load=False).resolve_step(task_id, step, value)
    console.print(f"step {step} of task {task.id} resolved; task is {task.status}", highlight=False)
