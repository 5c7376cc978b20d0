"""`tasker systems` (circuit breakers and in-flight limits) and `tasker limits`."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from tasker import bounds
from tasker.bounds import Range
from tasker.cli.common import console, state


class Bounded(click.ParamType[Any, Any]):
    """A number within one of the ranges of `tasker.bounds`, the same the templates and the engine use.

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
@click.pass_context
def systems(ctx: click.Context) -> None:
    """Dependent systems: circuit state, failures, steps in flight and waiting (list when no subcommand)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_)


@systems.command("list")
@click.pass_context
def list_(ctx: click.Context) -> None:
    """List every dependent system seen in steps or configured."""
    rows = state(ctx).engine(load=False).systems()
    table = Table(title=f"{len(rows)} dependent systems")
    table.add_column("system", no_wrap=True)
    table.add_column("circuit", no_wrap=True)
    for col in ("fails", "running", "limit", "waiting", "errors", "opens at", "cool-down", "open until"):
        table.add_column(col, justify="right")
    colours = {"closed": "green", "open": "red", "half_open": "yellow"}
    for r in rows:
        table.add_row(
            r["name"], f"[{colours[r['circuit_state']]}]{r['circuit_state']}[/]", str(r["consecutive_failures"]),
            str(r["in_flight"]), str(r["max_in_flight"] or "-"), str(r["waiting"]), str(r["errored_steps"]),
            str(r["failure_threshold"]), f"{r['cooldown_seconds']:g}s",
            r["open_until"].strftime("%H:%M:%S") if r["open_until"] else "-",
        )
    console.print(table)


@systems.command("set")
@click.argument("name")
@click.option("--max-in-flight", type=Bounded(bounds.MAX_IN_FLIGHT), default=None,
              help="Steps of this system running at once.")
@click.option("--failure-threshold", type=Bounded(bounds.FAILURE_THRESHOLD), default=None,
              help="Consecutive retryable failures that open the circuit.")
@click.option("--cooldown-seconds", type=Bounded(bounds.COOLDOWN_SECONDS), default=None,
              help="How long the circuit stays open before one probe goes through (at most a day).")
@click.option("--max-cooldown-seconds", type=Bounded(bounds.COOLDOWN_SECONDS), default=None,
              help="Cap of the cool-down, which doubles after each failed probe (at most a day).")
@click.option("--clear-max-in-flight", is_flag=True, help="Remove the in-flight limit.")
@click.pass_context
def set_(ctx: click.Context, name: str, max_in_flight: int | None, failure_threshold: int | None,
         cooldown_seconds: float | None, max_cooldown_seconds: float | None, clear_max_in_flight: bool) -> None:
    """Configure a dependent system (stored in the database, honoured by every worker)."""
    settings: dict[str, object] = {
        k: v for k, v in {"max_in_flight": max_in_flight, "failure_threshold": failure_threshold,
                          "cooldown_seconds": cooldown_seconds, "max_cooldown_seconds": max_cooldown_seconds}.items()
        if v is not None
    }
    if clear_max_in_flight:
        settings["max_in_flight"] = None
    state(ctx).engine(load=False).configure_system(name, **settings)
    console.print(f"{name}: {settings or 'unchanged'}", highlight=False)


@systems.command()
@click.argument("name")
@click.pass_context
def reset(ctx: click.Context, name: str) -> None:
    """Close a system's circuit by hand."""
    if not state(ctx).engine(load=False).reset_circuit(name):
        console.print(f"no dependent system named {name}", highlight=False)
        raise click.exceptions.Exit(2)
    console.print(f"{name}: circuit closed", highlight=False)


@click.group(invoke_without_command=True)
@click.pass_context
def limits(ctx: click.Context) -> None:
    """In-flight limits per namespace (list when no subcommand); per system see `tasker systems set`."""
    if ctx.invoked_subcommand is None:
        rows = state(ctx).engine(load=False).namespace_limits()
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
    state(ctx).engine(load=False).set_namespace_limit(namespace, max_in_flight)
    console.print(f"{namespace}: at most {max_in_flight} steps in flight", highlight=False)


@limits.command("clear")
@click.argument("namespace")
@click.pass_context
def limits_clear(ctx: click.Context, namespace: str) -> None:
    """Remove the cap of NAMESPACE."""
    state(ctx).engine(load=False).set_namespace_limit(namespace, None)
    console.print(f"{namespace}: no limit", highlight=False)
