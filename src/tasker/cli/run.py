"""`tasker run NS/NAME --context JSON|@file`: create a task and run it here with a live progress display."""

from __future__ import annotations

import threading
import time
from typing import Any

import click
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tasker.cli.common import console, read_json, state, templates_option
from tasker.cli.render import steps_table, task_header
from tasker.engine.model import Task
from tasker.errors import TaskerInputError
from tasker.states import SATISFIED_STEP_STATES, StepState

DONE = {s.value for s in SATISFIED_STEP_STATES} | {StepState.ERROR.value, StepState.CANCELLED.value}


@click.command()
@click.argument("ref")
@click.option("--context", "context", default="{}", show_default=True, help="Task context as JSON or @file.json.")
@click.option("--version", default=None, help="Template version (default: the latest loaded).")
@click.option("--idempotency-key", default=None, help="Return the existing task for a repeated key.")
@click.option("--concurrency", type=click.IntRange(1, 1024), default=None, help="Steps run at the same time.")
@templates_option
@click.pass_context
def run(ctx: click.Context, ref: str, context: str, version: str | None, idempotency_key: str | None,
        concurrency: int | None, templates: tuple[str, ...]) -> None:
    """Create a task from template NS/NAME[@VERSION] and run it to the end.

    Exit 0 when the task completes, 1 when it ends in error, 2 for bad input.
    """
    value = read_json(context, "--context")
    if not isinstance(value, dict):
        raise TaskerInputError("--context must be a JSON object, like '{\"order_id\": 1}'")
    st = state(ctx)
    if not st.settings.templates(templates):
        raise TaskerInputError("no templates to load; fix: pass --templates PATH or set TASKER_TEMPLATE_PATH")
    engine = st.engine(templates)
    task = engine.create_task(ref, value, version=version, idempotency_key=idempotency_key)
    if task.deduplicated:
        console.print(f"[yellow]task {task.id} already exists for this request (idempotency key); "
                      "showing it[/]", highlight=False)
    outcome: dict[str, Any] = {}

    def drive() -> None:
        try:
            outcome["task"] = engine.run(task.id, concurrency=concurrency)
        except BaseException as exc:  # surfaced on the main thread
            outcome["error"] = exc

    runner = threading.Thread(target=drive, name="tasker-run", daemon=True)
    runner.start()
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console,
                        transient=True)
    bar = progress.add_task(f"task {task.id}", total=len(task.steps), detail="")
    with Live(progress, console=console, refresh_per_second=10, transient=True):
        while runner.is_alive():
            _update(progress, bar, engine.get_task(task.id))
            runner.join(0.1)
    if "error" in outcome:
        raise outcome["error"]
    final: Task = outcome["task"]
    console.print(task_header(final), highlight=False)
    console.print(steps_table(final))
    ctx.exit(0 if final.status in ("complete", "resolved_manually") else 1)


def _update(progress: Progress, bar: Any, task: Task) -> None:
    done = sum(1 for s in task.steps if s.status in DONE)
    retries = sum(max(0, s.attempts - 1) for s in task.steps)
    running = [s.name for s in task.steps if s.status == StepState.IN_PROGRESS]
    waiting = [s.name for s in task.steps if s.status == StepState.WAITING_RETRY]
    detail = f"retries {retries}"
    if running:
        detail += f" | running {', '.join(running)}"
    if waiting:
        detail += f" | waiting to retry {', '.join(waiting)}"
    progress.update(bar, completed=done, detail=detail)
    time.sleep(0)
