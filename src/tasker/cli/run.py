"""`tasker run NS/NAME --context JSON|@file`: create a task, run it here with a live display.

The display follows the engine's events (the in-process event bus the worker publishes to after
each commit) instead of polling the store: an event for this task, or a circuit change, wakes it,
and it then reads the task once. A slow fallback refresh covers what no event announces. While a
step waits, the display says why: an open circuit and when its probe goes, a retry and when, a
limit. When the output is not a terminal, each new reason is printed once on stderr instead, so a
CI log keeps the story. The final table shows each step's attempts, probes, total and waiting
time and its last error, read from the step transitions (every failed attempt is a row there).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from tasker.cli.common import console, err_console, read_json, state, templates_option
from tasker.cli.render import run_steps_table, task_header, waiting_line
from tasker.domain.errors import TaskerInputError
from tasker.domain.history import SystemReport
from tasker.domain.records import Task
from tasker.domain.states import (
    CLAIMABLE_STEP_STATES,
    FINISHED_TASK_STATES,
    SATISFIED_STEP_STATES,
    StepState,
    TaskState,
)
from tasker.engine.tasker import Tasker
from tasker.events.bus import Event

DONE = {s.value for s in SATISFIED_STEP_STATES} | {StepState.ERROR.value, StepState.CANCELLED.value}
#: Redraw at least this often without an event (a circuit changed by another process, say).
FALLBACK_SECONDS = 1.0
#: At most one read of the store per this interval, however many events arrive.
MIN_READ_INTERVAL = 0.05
#: The systems report counts all tasks' steps: read it at most this often while a step waits.
SYSTEMS_INTERVAL = 0.5


@click.command()
@click.argument("ref")
@click.option(
    "--context",
    "context",
    default="{}",
    show_default=True,
    help="Task context as JSON or @file.json.",
)
@click.option("--version", default=None, help="Template version (default: the latest loaded).")
@click.option(
    "--idempotency-key", default=None, help="Return the existing task for a repeated key."
)
@click.option(
    "--concurrency", type=click.IntRange(1, 1024), default=None, help="Steps run at the same time."
)
@templates_option
@click.pass_context
def run(
    ctx: click.Context,
    ref: str,
    context: str,
    version: str | None,
    idempotency_key: str | None,
    concurrency: int | None,
    templates: tuple[str, ...],
) -> None:
    """Create a task from template NS/NAME[@VERSION] and run it to the end.

    Exit 0 when the task completes, 1 when it ends in error, 2 for bad input.
    """
    value = read_json(context, "--context")
    if not isinstance(value, dict):
        raise TaskerInputError("--context must be a JSON object, like '{\"order_id\": 1}'")
    st = state(ctx)
    if not st.settings.templates(templates):
        raise TaskerInputError(
            "no templates to load; fix: pass --templates PATH or set TASKER_TEMPLATE_PATH"
        )
    engine = st.engine(templates)
    task = engine.create_task(ref, value, version=version, idempotency_key=idempotency_key)
    if task.deduplicated:
        console.print(
            f"[yellow]task {task.id} already exists for this request (idempotency key); "
            "showing it[/]",
            highlight=False,
        )
    watch = Watch(engine, task)
    outcome: dict[str, Any] = {}

    def drive() -> None:
        try:
            outcome["task"] = engine.run(task.id, concurrency=concurrency)
        except BaseException as exc:  # surfaced on the main thread
            outcome["error"] = exc
        finally:
            watch.changed.set()

    unsubscribe = engine.bus.subscribe(watch.on_event, "step.*", "task.*", "circuit.*")
    runner = threading.Thread(target=drive, name="tasker-run", daemon=True)
    try:
        runner.start()
        follow(watch, runner.is_alive)
    finally:
        unsubscribe()
    runner.join()
    if "error" in outcome:
        raise outcome["error"]
    final: Task = outcome["task"]
    console.print(task_header(final), highlight=False)
    systems = {s.dependent_system for s in final.steps}
    history = [row for name in sorted(systems) for row in engine.systems.circuit_history(name)]
    console.print(run_steps_table(final, engine.history.step_transitions(final.id), history))
    waiting = sorted(
        {
            str((s.wait or {}).get("signal"))
            for s in final.steps
            if s.status == StepState.WAITING_RETRY and (s.wait or {}).get("kind") == "signal"
        }
    )
    if final.status not in FINISHED_TASK_STATES and waiting:
        # `run` stops when all that is left waits for the outside world: say how to go on.
        names = ", ".join(waiting)
        console.print(
            f"task {final.id} waits for signal {names}; send it with: tasker tasks signal"
            f" {final.id} {waiting[0]} --payload JSON (a worker then runs the rest)",
            highlight=False,
        )
        ctx.exit(0)
    ctx.exit(0 if final.status in (TaskState.COMPLETE, TaskState.RESOLVED_MANUALLY) else 1)


class Watch:
    """What the display knows of one task, refreshed when the engine's events announce a change."""

    def __init__(self, engine: Tasker, task: Task) -> None:
        self.engine = engine
        self.task = task
        #: Set by any event of this task or any circuit change (from the worker's thread).
        self.changed = threading.Event()
        self._systems: list[SystemReport] = []
        self._limits: dict[str, int] = {}
        self._systems_read = 0.0

    def on_event(self, event: Event) -> None:
        """Bus listener: runs on the worker's thread, so it only flags the change and returns."""
        if event.name.startswith("circuit."):
            self._systems_read = 0.0  # a circuit changed: read the systems report again next time
            self.changed.set()
        elif event.payload.get("task_id") == self.task.id:
            self.changed.set()

    def refresh(self) -> None:
        """Read the task, and the systems report when a step is claimable but may be held back."""
        self.task = self.engine.get_task(self.task.id)
        held = any(s.status in CLAIMABLE_STEP_STATES for s in self.task.steps)
        if held and time.monotonic() - self._systems_read >= SYSTEMS_INTERVAL:
            self._systems = self.engine.systems.report()
            self._limits = self.engine.systems.namespace_limits()
            self._systems_read = time.monotonic()

    def progress(self) -> tuple[int, str, str]:
        """(steps done, 'retries N | running a, b', the waiting line or '')."""
        steps = self.task.steps
        done = sum(1 for s in steps if s.status in DONE)
        retries = sum(max(0, s.attempts - 1) for s in steps)
        running = [s.name for s in steps if s.status == StepState.IN_PROGRESS]
        detail = f"retries {retries}" + (f" | running {', '.join(running)}" if running else "")
        return done, detail, waiting_line(self.task, self._systems, self._limits, datetime.now(UTC))


def follow(watch: Watch, alive: Callable[[], bool]) -> None:
    """Redraw on every change the events announce (and every FALLBACK_SECONDS) until the end."""
    live_display = console.is_terminal
    bar_columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    progress = Progress(*bar_columns, console=console, transient=True)
    bar = progress.add_task(f"task {watch.task.id}", total=len(watch.task.steps), detail="")
    line = Text("", style="dark_orange", overflow="fold")
    said = ""

    def draw() -> None:
        nonlocal said
        watch.refresh()
        done, detail, waiting = watch.progress()
        progress.update(bar, completed=done, detail=detail)
        line.plain = waiting
        if not live_display and waiting and waiting != said:
            err_console.print(f"task {watch.task.id} {waiting}", highlight=False, soft_wrap=True)
        said = waiting

    with Live(
        Group(progress, line),
        console=console,
        refresh_per_second=4,
        transient=True,
        auto_refresh=live_display,
    ):
        last = 0.0
        while alive():
            watch.changed.wait(FALLBACK_SECONDS)
            pause = MIN_READ_INTERVAL - (time.monotonic() - last)
            if pause > 0:
                time.sleep(pause)
            watch.changed.clear()
            last = time.monotonic()
            draw()
