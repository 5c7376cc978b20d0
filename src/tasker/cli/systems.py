"""`tasker systems` (circuit breakers and in-flight limits) and `tasker limits`."""

from __future__ import annotations

from typing import Any

import click

from tasker.cli.common import echo_json, json_option, state
from tasker.domain import bounds
from tasker.domain.bounds import Range
from tasker.domain.history import SystemReport

# Imports inside the commands below are deliberate: Rich, the engine and the consoles load only when
# a command runs, so `tasker ... --help` starts fast (benchmarks/bench_startup.py).


class Bounded(click.ParamType[Any, Any]):
    """A number within one of the ranges of `tasker.domain.bounds`, the same the templates and the
    engine use.

    `click.FloatRange` accepts `nan` and `inf` (they fail no comparison), which then crashed every
    worker when the circuit opened; this type refuses them with click's one-line usage error.
    """

    def __init__(self, limits: Range) -> None:
        self.limits = limits
        self.name = "integer" if limits.integer else "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.limits.parse(value) if isinstance(value, str) else self.limits.check(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def systems(ctx: click.Context, as_json: bool) -> None:
    """Dependent systems: circuit state, failures, steps in flight and waiting (list when no
    subcommand)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_, as_json=as_json)


def system_rows(ctx: click.Context) -> list[SystemReport]:
    """The engine's report of each system, with the cool-down in force now
    (`current_cooldown_seconds`).

    The cool-down doubles after each failed probe up to its cap, so the base alone would tell an
    operator a wrong time to wait; it is None while the circuit is closed.
    """
    engine = state(ctx).engine(load=False, access="read")
    try:
        return engine.systems.report()
    finally:
        engine.close()


@systems.command("list")
@json_option
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """List every dependent system seen in steps or configured."""
    rows = system_rows(ctx)
    if as_json:
        echo_json(rows)
        return
    from rich.table import Table

    from tasker.cli.common import console

    table = Table(title=f"{len(rows)} dependent systems")
    table.add_column("system", no_wrap=True)
    table.add_column("circuit", no_wrap=True)
    for col in (
        "fails",
        "running",
        "limit",
        "rate",
        "deferred",
        "waiting",
        "errors",
        "opens at",
        "cool-down",
        "open until",
    ):
        table.add_column(col, justify="right", no_wrap=col == "cool-down")
    colours = {"closed": "green", "open": "red", "half_open": "yellow"}
    for r in rows:
        table.add_row(
            r["name"],
            f"[{colours.get(r['circuit_state'], 'white')}]{r['circuit_state']}[/]",
            str(r["consecutive_failures"]),
            str(r["in_flight"]),
            str(r["max_in_flight"] or "-"),
            f"{r['rate_used']}/{r['rate_limit']}" if r.get("rate_limit") else "-",
            f"{r.get('rate_deferrals', 0):,}" if r.get("rate_limit") else "-",
            str(r["waiting"]),
            str(r["errored_steps"]),
            str(r["failure_threshold"]),
            _cooldown(r),
            r["open_until"].strftime("%H:%M:%S") if r["open_until"] else "-",
        )
    console.print(table)
    for r in rows:  # steps no worker could import a handler for: a deploy to finish, not an outage
        for handler, count in sorted((r.get("unloadable_handlers") or {}).items()):
            console.print(
                f"[yellow]waiting: no worker can load {handler}[/] ({count} step"
                f"{'s' if count != 1 else ''} of {r['name']}); deploy it to a worker"
            )


def _cooldown(row: SystemReport) -> str:
    """ "30s" while closed; "120s (base 30s)" once failed probes have doubled it."""
    base: float = row["cooldown_seconds"]
    current: float | None = row.get("current_cooldown_seconds")
    if current is None or current == base:
        return f"{base:g}s"
    return f"{current:g}s (base {base:g}s)"


@systems.command("set")
@click.argument("name")
@click.option(
    "--max-in-flight",
    type=Bounded(bounds.MAX_IN_FLIGHT),
    default=None,
    help="Steps of this system running at once.",
)
@click.option(
    "--failure-threshold",
    type=Bounded(bounds.FAILURE_THRESHOLD),
    default=None,
    help="Consecutive retryable failures that open the circuit.",
)
@click.option(
    "--cooldown-seconds",
    type=Bounded(bounds.COOLDOWN_SECONDS),
    default=None,
    help="How long the circuit stays open before one probe goes through (at most a day).",
)
@click.option(
    "--max-cooldown-seconds",
    type=Bounded(bounds.COOLDOWN_SECONDS),
    default=None,
    help="Cap of the cool-down, which doubles after each failed probe (at most a day).",
)
@click.option(
    "--max-outage-seconds",
    type=Bounded(bounds.MAX_OUTAGE_SECONDS),
    default=None,
    help=(
        "How long steps wait for this system while it answers nothing before they fail "
        "(default 3600, at most a week)."
    ),
)
@click.option(
    "--rate-limit",
    default=None,
    metavar="N/PERIOD",
    help="Steps of this system started per second, minute or hour, across all workers"
    " (100/minute); a step over it waits for a slot without spending an attempt.",
)
@click.option("--clear-max-in-flight", is_flag=True, help="Remove the in-flight limit.")
@click.option("--clear-rate-limit", is_flag=True, help="Remove the rate limit.")
@click.pass_context
def set_(
    ctx: click.Context,
    name: str,
    max_in_flight: int | None,
    failure_threshold: int | None,
    cooldown_seconds: float | None,
    max_cooldown_seconds: float | None,
    max_outage_seconds: float | None,
    rate_limit: str | None,
    clear_max_in_flight: bool,
    clear_rate_limit: bool,
) -> None:
    """Configure a dependent system (stored in the database, honoured by every worker)."""
    settings: dict[str, object] = {
        k: v
        for k, v in {
            "max_in_flight": max_in_flight,
            "failure_threshold": failure_threshold,
            "cooldown_seconds": cooldown_seconds,
            "max_cooldown_seconds": max_cooldown_seconds,
            "max_outage_seconds": max_outage_seconds,
            "rate_limit": rate_limit,
        }.items()
        if v is not None
    }
    if clear_max_in_flight:
        settings["max_in_flight"] = None
    if clear_rate_limit:
        settings["rate_limit"] = None
    state(ctx).engine(load=False).systems.configure(name, **settings)
    _say(f"{name}: {settings or 'unchanged'}")


@systems.command()
@click.argument("name")
@click.pass_context
def reset(ctx: click.Context, name: str) -> None:
    """Close a system's circuit by hand."""
    if not state(ctx).engine(load=False, access="read").systems.reset_circuit(name):
        _say(f"no dependent system named {name}")
        raise click.exceptions.Exit(2)
    _say(f"{name}: circuit closed")


@click.group(invoke_without_command=True)
@click.pass_context
def limits(ctx: click.Context) -> None:
    """In-flight limits per namespace (list when no subcommand); per system see
    `tasker systems set`."""
    if ctx.invoked_subcommand is None:
        from rich.table import Table

        from tasker.cli.common import console

        rows = state(ctx).engine(load=False, access="read").systems.namespace_limits()
        table = Table(title="namespace limits")
        table.add_column("namespace")
        table.add_column("max in flight")
        for ns, n in sorted(rows.items()):
            table.add_row(ns, str(n))
        console.print(table)


@limits.command("set")
@click.argument("namespace")
@click.argument("max_in_flight", type=Bounded(bounds.NAMESPACE_MAX_IN_FLIGHT))
@click.pass_context
def limits_set(ctx: click.Context, namespace: str, max_in_flight: int) -> None:
    """Cap the steps of NAMESPACE running at once across all workers."""
    state(ctx).engine(load=False).systems.set_namespace_limit(namespace, max_in_flight)
    _say(f"{namespace}: at most {max_in_flight} steps in flight")


@limits.command("clear")
@click.argument("namespace")
@click.pass_context
def limits_clear(ctx: click.Context, namespace: str) -> None:
    """Remove the cap of NAMESPACE."""
    state(ctx).engine(load=False).systems.set_namespace_limit(namespace, None)
    _say(f"{namespace}: no limit")


def _say(text: str) -> None:
    from tasker.cli.common import console

    console.print(text, highlight=False)
