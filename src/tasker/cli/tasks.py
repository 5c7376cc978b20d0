"""`tasker tasks list|show|create|signal|signals|cancel|compensate|retry|retry-step|rerun|resolve|
purge`.

Read-only commands (`list`, `show`) open the store with access "read": against a database without
the Tasker schema they say so in one line and create nothing. `create` queues a task for the workers
(`tasker worker`, or `tasker serve --workers N`) and prints its id, so scripts can
`ID=$(tasker tasks create ...)`; `tasker run` is the command that creates and runs one here.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import click

from tasker.cli import bulk
from tasker.cli.common import echo_json, json_option, read_json, state, templates_option
from tasker.domain.errors import TaskerInputError
from tasker.domain.listing import TaskQuery
from tasker.domain.priorities import MAX_PRIORITY
from tasker.domain.records import Task
from tasker.domain.states import FINISHED_TASK_STATES, TaskState
from tasker.engine.queries import MAX_PAGE

# Imports inside the commands below are deliberate: Rich, the engine and the consoles load only when
# a command runs, so `tasker ... --help` starts fast (benchmarks/bench_startup.py).


@click.group()
def tasks() -> None:
    """Inspect, create and operate on tasks."""


def task_json(task: Task, *, steps: bool = True) -> dict[str, Any]:
    """A task as the JSON of `--json`: every stored field, the template key and the durations."""
    data = {
        f.name: getattr(task, f.name) for f in dataclasses.fields(task) if f.name not in ("steps",)
    }
    data["template"] = task.template_key
    data["duration_seconds"] = task.duration_seconds
    if steps:
        data["steps"] = [
            {**dataclasses.asdict(s), "duration_seconds": s.duration_seconds} for s in task.steps
        ]
    return data


@tasks.command("list")
@click.option("--status", type=click.Choice([s.value for s in TaskState]), default=None)
@click.option("--namespace", default=None)
@click.option("--name", default=None)
@click.option("--limit", type=click.IntRange(1, MAX_PAGE), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.option(
    "--min-priority",
    type=click.IntRange(0, MAX_PRIORITY),
    default=None,
    help="Only tasks of at least this priority.",
)
@click.option(
    "--sort",
    type=click.Choice(["created", "priority"]),
    default="created",
    show_default=True,
    help="Newest first, or highest priority first (then newest).",
)
@json_option
@click.pass_context
def list_(
    ctx: click.Context,
    status: str | None,
    namespace: str | None,
    name: str | None,
    limit: int,
    offset: int,
    min_priority: int | None,
    sort: str,
    as_json: bool,
) -> None:
    """List tasks, newest first (or by priority)."""
    engine = state(ctx).engine(load=False, access="read")
    query = TaskQuery(
        namespace=namespace,
        name=name,
        statuses=(status,) if status else (),
        min_priority=min_priority,
        by_priority=sort == "priority",
    )
    found = engine.listing.page(query, limit=limit, offset=offset).tasks
    total = engine.listing.total(query)
    if as_json:
        echo_json(
            {
                "total": total.count,
                "total_capped": total.capped,
                "limit": limit,
                "offset": offset,
                "tasks": [task_json(t, steps=False) for t in found],
            }
        )
        return
    from tasker.cli.common import console
    from tasker.cli.render import tasks_table

    console.print(tasks_table(found, total))


@tasks.command()
@click.argument("task_id", type=int)
@click.option(
    "--results", "show_results", is_flag=True, help="Also print each finished step's results."
)
@click.option(
    "--context",
    "show_context",
    is_flag=True,
    help="Also print the task's context (defaults applied).",
)
@click.option(
    "--mermaid",
    "show_mermaid",
    is_flag=True,
    help="Also print the task's diagram coloured by state.",
)
@json_option
@click.pass_context
def show(
    ctx: click.Context,
    task_id: int,
    show_results: bool,
    show_context: bool,
    show_mermaid: bool,
    as_json: bool,
) -> None:
    """Every step of a task with state, attempts, last error, times and durations.

    With --json: the whole task (context, annotations, and every step with its results and last
    error).
    """
    engine = state(ctx).engine(load=False, access="read")
    task = engine.get_task(task_id)
    children = engine.child_tasks(task.id)
    if as_json:
        echo_json({**task_json(task), "children": children})
        return
    from tasker.cli.common import console
    from tasker.cli.render import steps_table, task_header, task_links, task_mermaid

    console.print(task_header(task), highlight=False)
    parent = engine.get_task(task.parent_task_id) if task.parent_task_id is not None else None
    for line in task_links(task, children, parent):
        console.print(line, highlight=False)
    console.print(steps_table(task))
    if task.annotations:
        console.print(f"[bold]Annotations:[/] {task.annotations}", highlight=False)
    if show_context:
        console.print("[bold]Context:[/]")
        console.print_json(data=task.context, default=str)
    if show_results:
        finished = [s for s in task.steps if s.results is not None]
        if not finished:
            console.print("[bold]Results:[/] no step has a result yet", highlight=False)
        for s in finished:
            console.print(f"[bold]Results of {s.name}:[/]", highlight=False)
            console.print_json(data=s.results, default=str)
    if show_mermaid:
        click.echo(task_mermaid(engine.templates.of_task(task_id), task), nl=False)


@tasks.command()
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
    "--idempotency-key",
    default=None,
    help="Return the existing task for a repeated key instead of creating another.",
)
@click.option(
    "--at",
    "run_at",
    default=None,
    metavar="ISO8601",
    help="Start at this time, with its zone (2026-12-24T07:00:00+01:00, or ...Z for UTC).",
)
@click.option(
    "--in",
    "delay",
    default=None,
    metavar="DURATION",
    help="Start this long from now: 90s, 10m, 2h, 1d or PT10M.",
)
@click.option(
    "--deadline",
    default=None,
    metavar="TIME|DURATION",
    help="End in error (deadline_exceeded) if not finished by then: a time, or a duration from"
    " the start. Overrides the template's timeout_seconds.",
)
@click.option(
    "--priority",
    type=click.IntRange(0, MAX_PRIORITY),
    default=None,
    help="0 to 1000, higher first; each level is a minute ahead of lower-priority work"
    " (default: the template's priority, else 0).",
)
@templates_option
@json_option
@click.pass_context
def create(
    ctx: click.Context,
    ref: str,
    context: str,
    version: str | None,
    idempotency_key: str | None,
    run_at: str | None,
    delay: str | None,
    deadline: str | None,
    priority: int | None,
    templates: tuple[str, ...],
    as_json: bool,
) -> None:
    """Queue a task from template NS/NAME[@VERSION] for the workers and print its id (it does not
    run here).

    A worker (`tasker worker`, or `tasker serve --workers N`) on the same store runs it;
    `tasker run` creates a task and runs it here instead.
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
    task = engine.create_task(
        ref,
        value,
        version=version,
        idempotency_key=idempotency_key,
        run_at=parse_time(run_at, "--at") if run_at else None,
        delay=delay,
        deadline=_time_or_duration(deadline),
        priority=priority,
    )
    if as_json:
        echo_json(task_json(task))
        return
    from tasker.cli.common import err_console

    if task.deduplicated:
        err_console.print(
            f"task {task.id} already exists for idempotency key '{task.idempotency_key}' "
            f"({task.status}); not created again",
            highlight=False,
            soft_wrap=True,
        )
    else:
        when = f" from {task.starts_at:%Y-%m-%d %H:%M:%S}Z" if task.starts_at else ""
        err_console.print(
            f"queued task {task.id} ({task.template_key}); a worker on this store runs it{when} "
            "(tasker worker)",
            highlight=False,
            soft_wrap=True,
        )
    click.echo(task.id)


def parse_time(text: str, option: str) -> datetime:
    """An ISO-8601 time given on the command line, or a one-line error naming the option."""
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise TaskerInputError(
            f"{option} {text!r} is not an ISO-8601 time; use e.g. 2026-12-24T07:00:00+01:00 or"
            " 2026-12-24T06:00:00Z"
        ) from None


def _time_or_duration(text: str | None) -> datetime | str | None:
    """`--deadline`: a time if it reads as one, else a duration for the engine to parse."""
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        return text


@tasks.command()
@click.argument("task_id", type=int)
@click.argument("name")
@click.option(
    "--payload", default="null", show_default=True, help="The signal's payload as JSON or @file."
)
@click.option(
    "--key",
    "idempotency_key",
    default=None,
    help="An idempotency key: a repeated key is the same signal (a retried webhook).",
)
@json_option
@click.pass_context
def signal(
    ctx: click.Context,
    task_id: int,
    name: str,
    payload: str,
    idempotency_key: str | None,
    as_json: bool,
) -> None:
    """Send the signal NAME to a task: its steps waiting for it (wait_for: NAME) resume."""
    value = read_json(payload, "--payload")
    engine = state(ctx).engine(load=False, access="read")
    sent = engine.signal(task_id, name, value, idempotency_key=idempotency_key)
    if as_json:
        echo_json(dataclasses.asdict(sent))
        return
    if sent.deduplicated:
        _say(f"signal {sent.id} ({name}) was already sent to task {task_id}; not sent again")
    elif sent.woke:
        steps = ", ".join(str(s) for s in sent.woke)
        _say(f"signal {sent.id} ({name}) sent to task {task_id}; it woke step(s) {steps}")
    else:
        _say(
            f"signal {sent.id} ({name}) sent to task {task_id}; no step waits for it yet: the"
            " step that will finds it"
        )


@tasks.command()
@click.argument("task_id", type=int)
@json_option
@click.pass_context
def signals(ctx: click.Context, task_id: int, as_json: bool) -> None:
    """The signals a task received, oldest first."""
    found = state(ctx).engine(load=False, access="read").signals.of_task(task_id)
    if as_json:
        echo_json({"task_id": task_id, "signals": [dataclasses.asdict(s) for s in found]})
        return
    from tasker.cli.common import console
    from tasker.cli.render import signals_table

    console.print(signals_table(task_id, found))


@tasks.command()
@click.argument("task_id", type=int, required=False)
@click.option("--reason", default=None, help="Recorded with the cancellation.")
@click.option(
    "--compensate",
    is_flag=True,
    help="Then undo what its completed steps did (the steps that declare a compensation).",
)
@bulk.filter_options("cancel")
@click.pass_context
def cancel(
    ctx: click.Context,
    /,
    task_id: int | None,
    reason: str | None,
    compensate: bool,
    dry_run: bool,
    chunk: int,
    as_json: bool,
    **filters: Any,
) -> None:
    """Cancel a task: unstarted steps never run and late results are discarded.

    Give TASK_ID for one task, or filter options to cancel every unfinished or failed task they
    pick, in chunks (e.g. --template shop/checkout --status pending --since 1h); --dry-run counts
    them first.
    """
    engine = state(ctx).engine(load=False, access="read")
    if bulk.choose(task_id, filters, "cancel", "--template ns/name --status pending --since 1h"):
        picked = bulk.build(engine, filters)
        report = bulk.run(
            engine,
            "cancel",
            picked,
            reason=reason,
            compensate=compensate,
            dry_run=dry_run,
            chunk=chunk,
        )
        after = "run a worker (tasker worker) to undo their steps" if compensate else ""
        bulk.show(report, picked, as_json, after)
        return
    assert task_id is not None
    _single_only(dry_run=dry_run, chunk=chunk)
    task = engine.cancel_task(task_id, reason=reason, compensate=compensate)
    if as_json:
        echo_json(task_json(task))
        return
    if task.status == TaskState.COMPENSATING:
        _say(f"task {task.id} is {task.status}; run a worker (tasker worker) to undo its steps")
    else:
        _say(f"task {task.id} is {task.status}")


@tasks.command()
@click.argument("task_id", type=int)
@click.pass_context
def compensate(ctx: click.Context, task_id: int) -> None:
    """Undo what the completed steps of a task in error did (each step that declares a
    compensation, newest first)."""
    task = state(ctx).engine(load=False, access="read").compensate_task(task_id)
    _say(f"task {task.id} is {task.status}; run a worker (tasker worker) to undo its steps")


@tasks.command()
@click.argument("task_id", type=int, required=False)
@click.option(
    "--reason", default=None, help="Bulk form: recorded with the transitions of every retry."
)
@bulk.filter_options("retry")
@click.pass_context
def retry(
    ctx: click.Context,
    /,
    task_id: int | None,
    reason: str | None,
    dry_run: bool,
    chunk: int,
    as_json: bool,
    **filters: Any,
) -> None:
    """Re-arm the failed steps of a task in error with fresh attempts (a worker then runs them).

    Give TASK_ID for one task, or filter options to retry every task in error they pick, in
    chunks (e.g. --template payments/refund --since 2h --error-class TimeoutError); --dry-run
    counts them first. Running it again retries nothing twice.
    """
    engine = state(ctx).engine(load=False, access="read")
    if bulk.choose(task_id, filters, "retry", "--status error --template ns/name --since 2h"):
        picked = bulk.build(engine, filters)
        report = bulk.run(engine, "retry", picked, reason=reason, dry_run=dry_run, chunk=chunk)
        bulk.show(report, picked, as_json, "run a worker (tasker worker) to process them")
        return
    assert task_id is not None
    _single_only(dry_run=dry_run, chunk=chunk, reason=reason)
    task = engine.retry_task(task_id)
    if as_json:
        echo_json(task_json(task))
        return
    _say(f"task {task.id} is {task.status}; run a worker (tasker worker) to process it")


def _single_only(*, dry_run: bool, chunk: int, reason: str | None = None) -> None:
    """Refuse the bulk form's flags with a TASK_ID (they would be silently ignored)."""
    extra = [
        flag
        for flag, used in (
            ("--dry-run", dry_run),
            ("--chunk", chunk != 500),
            ("--reason", reason is not None),
        )
        if used
    ]
    if extra:
        raise TaskerInputError(
            f"{', '.join(extra)} goes with filter options, not with a TASK_ID; fix: drop it, or"
            " give filter options instead of the id"
        )


@tasks.command("retry-step")
@click.argument("task_id", type=int)
@click.argument("step")
@click.pass_context
def retry_step(ctx: click.Context, task_id: int, step: str) -> None:
    """Re-arm one failed step of a task with fresh attempts (a worker then runs it)."""
    task = state(ctx).engine(load=False, access="read").retry_step(task_id, step)
    _say(
        f"step {step} of task {task.id} is {task.step(step).status}; task is {task.status}; run a"
        " worker (tasker worker) to process it"
    )


@tasks.command()
@click.argument("task_id", type=int)
@click.option("--from", "step", required=True, help="The step to run again from.")
@click.option("--reason", default=None, help="Recorded with the re-run's transitions.")
@click.pass_context
def rerun(ctx: click.Context, task_id: int, step: str, reason: str | None) -> None:
    """Run a task in error again from STEP: it and every step downstream start over with fresh
    attempts; everything upstream keeps its results (deploy the fix, then re-run)."""
    task = state(ctx).engine(load=False, access="read").rerun_from(task_id, step, reason)
    _say(
        f"task {task.id} is {task.status}, re-running from {step}; a worker (tasker worker) runs it"
    )


@tasks.command()
@click.argument("task_id", type=int)
@click.argument("step")
@click.option(
    "--result",
    "result",
    default="{}",
    show_default=True,
    help="The step's result as JSON or @file.",
)
@click.pass_context
def resolve(ctx: click.Context, task_id: int, step: str, result: str) -> None:
    """Resolve a step by hand with a result; its dependents proceed as if it had completed."""
    value = read_json(result, "--result")
    if not isinstance(value, dict):
        raise TaskerInputError("--result must be a JSON object, like '{\"order_id\": 42}'")
    task = state(ctx).engine(load=False, access="read").resolve_step(task_id, step, value)
    _say(f"step {step} of task {task.id} resolved; task is {task.status}")


@tasks.command()
@click.option(
    "--older-than",
    default=None,
    metavar="DURATION",
    help="Finished more than this long ago: 30d, 12h, P30D or seconds.",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(sorted(s.value for s in FINISHED_TASK_STATES)),
    help="Only tasks in this finished state (repeat for several; default: every finished one).",
)
@click.option("--namespace", default=None, help="Only tasks of this namespace.")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option(
    "--archive",
    default=None,
    metavar="PATH|table|none",
    help=(
        "Write each task to this directory (gzip JSON Lines) or to the archive table before"
        " deleting it (default: the archive setting; none: no archive)."
    ),
)
@bulk.filter_options("purge", skip=("statuses", "namespace", "dry_run"))
@click.pass_context
def purge(
    ctx: click.Context,
    /,
    older_than: str | None,
    statuses: tuple[str, ...],
    namespace: str | None,
    dry_run: bool,
    archive: str | None,
    chunk: int,
    as_json: bool,
    **filters: Any,
) -> None:
    """Delete finished tasks older than a duration, with their steps, transitions, events and
    signals, oldest first, in batches (workers go on meanwhile).

    Instead of --older-than, filter options delete every finished task they pick, in chunks
    (e.g. --template shop/checkout --status cancelled --until 30d); --status, --namespace,
    --archive and --dry-run go with either form.
    """
    engine = state(ctx).engine(load=False, access="read")
    archive = state(ctx).settings.archive if archive is None else archive
    if older_than is None:
        chosen = {**filters, "statuses": statuses, "namespace": namespace}
        if not bulk.given(chosen):
            raise TaskerInputError(
                "nothing to purge; fix: give --older-than DURATION, or filter options (e.g."
                " --template ns/name --status cancelled --until 30d)"
            )
        picked = bulk.build(engine, chosen)
        done = bulk.run(engine, "purge", picked, archive=archive, dry_run=dry_run, chunk=chunk)
        bulk.show(done, picked, as_json)
        return
    if bulk.given(filters) or chunk != 500 or as_json:
        raise TaskerInputError(
            "--older-than goes with --status, --namespace, --archive and --dry-run only; fix: drop"
            " the other options, or drop --older-than and filter by creation time (--until 30d)"
        )
    report = engine.retention.purge(
        older_than,
        statuses=statuses or None,
        namespace=namespace,
        dry_run=dry_run,
        archive=archive,
    )
    if dry_run:
        _say(f"{report.matched} finished task(s) older than {older_than} would be deleted")
    else:
        where = report.archive_path or report.archive
        kept = f"; archived {report.archived} to {where}" if report.archived else ""
        _say(f"deleted {report.deleted} finished task(s) older than {older_than}{kept}")


def _say(text: str) -> None:
    from tasker.cli.common import console

    console.print(text, highlight=False)
