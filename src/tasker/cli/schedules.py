"""`tasker schedules list|add|pause|resume|trigger|remove`: cron schedules of templates.

Schedules a template declares (`schedules:` in its YAML) are synced when workers load it; these
commands list them and add, pause, resume, trigger and remove schedules at run time. The worker
that holds the timers job fires each tick once (docs/operations.md, "Schedules").
"""

from __future__ import annotations

import dataclasses

import click

from tasker.cli.common import echo_json, json_option, read_json, state, templates_option
from tasker.domain.errors import TaskerInputError
from tasker.domain.schedules import CatchUp, Schedule


@click.group()
def schedules() -> None:
    """Cron schedules: list, add, pause, resume, trigger now, remove."""


def _json(s: Schedule) -> dict[str, object]:
    return {**dataclasses.asdict(s), "template": s.template}


def _show(s: Schedule, verb: str) -> None:
    from tasker.cli.common import console

    when = "" if s.paused else f"; next tick {s.next_at:%Y-%m-%d %H:%M:%S}Z"
    if s.paused and verb != "paused":
        when = "; paused"
    console.print(
        f"schedule {s.id} ({s.name} of {s.template}, '{s.cron}' {s.timezone}) {verb}{when}",
        highlight=False,
    )


@schedules.command("list")
@click.option("--namespace", default=None)
@json_option
@click.pass_context
def list_(ctx: click.Context, namespace: str | None, as_json: bool) -> None:
    """Every schedule with its next and last tick."""
    found = state(ctx).engine(load=False, access="read").schedules.all(namespace)
    if as_json:
        echo_json({"schedules": [_json(s) for s in found]})
        return
    from tasker.cli.common import console
    from tasker.cli.render import schedules_table

    console.print(schedules_table(found))


@schedules.command()
@click.argument("ref")
@click.argument("name")
@click.argument("cron")
@click.option("--timezone", default="UTC", show_default=True, help="An IANA time zone.")
@click.option("--context", default="{}", show_default=True, help="The tasks' context (JSON).")
@click.option(
    "--catch-up",
    type=click.Choice([c.value for c in CatchUp]),
    default=CatchUp.ONCE.value,
    show_default=True,
    help="Ticks missed while no worker ran: skip them, run once, or run all (at most 100).",
)
@click.option("--version", default=None, help="Pin a template version (default: the newest).")
@click.option("--paused", is_flag=True, help="Add it paused.")
@templates_option
@json_option
@click.pass_context
def add(
    ctx: click.Context,
    ref: str,
    name: str,
    cron: str,
    timezone: str,
    context: str,
    catch_up: str,
    version: str | None,
    paused: bool,
    templates: tuple[str, ...],
    as_json: bool,
) -> None:
    """Add schedule NAME for template REF with a five-field CRON ('0 7 * * *')."""
    value = read_json(context, "--context")
    if not isinstance(value, dict):
        raise TaskerInputError('--context must be a JSON object, like \'{"day": "today"}\'')
    st = state(ctx)
    if not st.settings.templates(templates):
        raise TaskerInputError(
            "no templates to load; fix: pass --templates PATH or set TASKER_TEMPLATE_PATH"
        )
    added = st.engine(templates).schedules.add(
        ref,
        name,
        cron,
        timezone=timezone,
        context=value,
        catch_up=catch_up,
        version=version,
        paused=paused,
    )
    if as_json:
        echo_json(_json(added))
        return
    _show(added, "added")


@schedules.command()
@click.argument("schedule_id", type=int)
@click.pass_context
def pause(ctx: click.Context, schedule_id: int) -> None:
    """Stop a schedule firing until it is resumed."""
    _show(state(ctx).engine(load=False, access="read").schedules.pause(schedule_id), "paused")


@schedules.command()
@click.argument("schedule_id", type=int)
@click.pass_context
def resume(ctx: click.Context, schedule_id: int) -> None:
    """Fire again from the next tick (ticks missed while paused are not caught up)."""
    _show(state(ctx).engine(load=False, access="read").schedules.resume(schedule_id), "resumed")


@schedules.command()
@click.argument("schedule_id", type=int)
@templates_option
@click.pass_context
def trigger(ctx: click.Context, schedule_id: int, templates: tuple[str, ...]) -> None:
    """Create the schedule's task now (its ticks stay as they are); prints the task's id."""
    st = state(ctx)
    if not st.settings.templates(templates):
        raise TaskerInputError(
            "no templates to load; fix: pass --templates PATH or set TASKER_TEMPLATE_PATH"
        )
    task = st.engine(templates).schedules.trigger(schedule_id)
    from tasker.cli.common import err_console

    err_console.print(
        f"queued task {task.id} ({task.template_key}) for schedule {schedule_id}; a worker on"
        " this store runs it (tasker worker)",
        highlight=False,
    )
    click.echo(task.id)


@schedules.command()
@click.argument("schedule_id", type=int)
@click.pass_context
def remove(ctx: click.Context, schedule_id: int) -> None:
    """Delete a schedule (a template's comes back when it is loaded again, unless it was taken
    out of its YAML)."""
    state(ctx).engine(load=False, access="read").schedules.remove(schedule_id)
    from tasker.cli.common import console

    console.print(f"schedule {schedule_id} removed", highlight=False)
