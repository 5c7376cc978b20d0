"""`tasker demo ...`: runnable versions of the stories, to see the engine's promises hold on your
machine.

`tasker demo black-friday` runs the e-commerce story: the same orders through a naive checkout and
through the workflow engine, over the same flaky services, and reconciles each side from the
services' own books. The demo code lives in `tasker.demos` (installed with the package, so the demos
work from any directory) and is imported when the command runs, so the CLI does not pay for it at
start.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click
from rich.columns import Columns
from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from tasker.domain.states import StepState
from tasker.store.database import backend_name

# Imports inside the commands below are deliberate: Rich, the engine and the consoles load only when
# a command runs, so `tasker ... --help` starts fast (benchmarks/bench_startup.py).

PHASES = {
    "naive": "naive checkout",
    "engine": "workflow engine",
    "operator_retry": "operator retry",
}

#: (label, key of the figure) of the rows every side shows, in order; the failures by reason follow
#: "failed".
ROWS: list[tuple[str, str]] = [
    ("orders", "orders"),
    ("completed", "completed"),
    ("failed", "failed"),
    ("charged without an order", "charged_without_order"),
    ("double charges", "double_charges"),
    ("orders never confirmed by mail", "orders_without_confirmation"),
    ("refunded (charges undone)", "refunded"),
    ("compensated (tasks undone)", "compensated"),
    ("automatic retries", "retries"),
    ("wall time (s)", "wall_seconds"),
]


@click.group()
def demo() -> None:
    """Run the stories' demos."""


#: The demos `tasker demo templates` knows: subpackage of `tasker.demos` -> what it shows.
DEMO_TEMPLATES = {
    "ecommerce": "the Black Friday checkout, ecommerce/process_order",
    "microservices": "the user registration, blog_examples/user_registration",
    "data_pipeline": "the customer analytics pipeline, data_pipeline/customer_analytics",
    "team_scaling": "two teams' refunds, payments/ and customer_success/process_refund",
}


@demo.command("templates")
@click.argument("name", required=False, type=click.Choice(sorted(DEMO_TEMPLATES)))
def demo_templates(name: str | None) -> None:
    """Print the directory of a demo's YAML templates (all of them without NAME).

    The templates ship inside the installed package, so this works from a checkout and from a wheel
    alike: `tasker serve --templates "$(tasker demo templates ecommerce)"`.
    """
    from importlib.resources import files

    def folder(demo_name: str) -> str:
        return str(files("tasker.demos").joinpath(demo_name, "templates"))

    if name:
        click.echo(folder(name))
        return
    for demo_name, what in DEMO_TEMPLATES.items():
        click.echo(f"{demo_name:<14} {folder(demo_name)}  ({what})")


@demo.command("black-friday")
@click.option(
    "--orders",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="How many checkouts each side processes.",
)
@click.option(
    "--transient-failure-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.05,
    show_default=True,
    help="Probability that any one service call (charge, reserve, mail) fails transiently.",
)
@click.option(
    "--decline-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.002,
    show_default=True,
    help="Share of cards the payment gateway declines (a permanent failure).",
)
@click.option(
    "--stockout-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.01,
    show_default=True,
    help="Share of orders whose stock is gone once they are charged (another shopper took the"
    " last unit): the engine refunds them.",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Seed of orders and faults; the same seed replays the same run.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object {naive, engine} and nothing else.",
)
@click.option(
    "--database-url",
    default=None,
    help=(
        "Run on this store (its demo_* tables are recreated). Default: a fresh temporary SQLite"
        " file."
    ),
)
def black_friday(
    orders: int,
    transient_failure_rate: float,
    decline_rate: float,
    stockout_rate: float,
    seed: int | None,
    as_json: bool,
    database_url: str | None,
) -> None:
    """The Black Friday story: a naive checkout and the workflow engine, same orders, same faults.

    After the engine has finished, the faults are switched off and every task that failed for any
    reason but a declined card is retried once, as an operator would once the dependencies are
    healthy.
    """
    from tasker.demos.ecommerce.demo import run_black_friday

    if database_url:
        _check_url(database_url)
    seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
    err = Console(stderr=True)
    with _progress(err, enabled=not as_json) as progress:
        result = run_black_friday(
            orders,
            transient_failure_rate=transient_failure_rate,
            decline_rate=decline_rate,
            stockout_rate=stockout_rate,
            seed=seed,
            database_url=database_url,
            progress=progress,
        )
    if as_json:
        click.echo(json.dumps(result))
        return
    out = Console()
    out.print(
        f"[bold]Black Friday[/]: {orders} orders, transient failure rate {transient_failure_rate:g}"
        f" per service call, decline rate {decline_rate:g}, stock-out rate {stockout_rate:g},"
        f" seed {seed}"
    )
    out.print(
        Columns(
            [
                _table("Naive checkout (no retries)", result["naive"]),
                _table("Tasker workflow", result["engine"], engine=True),
            ]
        )
    )
    out.print(_verdict(result))


def _check_url(url: str) -> None:
    """Refuse a store URL the engine cannot open before any work starts, as a usage error."""
    if backend_name(url) not in ("sqlite", "postgresql", "postgres"):
        raise click.BadParameter(
            f"'{url}' is not a store URL; use sqlite:///path.db or postgresql://user@host/db",
            param_hint="--database-url",
        )


@contextmanager
def _progress(console: Console, *, enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A progress callback drawing one bar per phase on stderr, or a silent one."""
    if not enabled:
        yield lambda phase, done, total: None
        return
    bars: dict[str, TaskID] = {}
    with Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:

        def update(phase: str, done: int, total: int) -> None:
            if phase not in bars:
                bars[phase] = progress.add_task(PHASES.get(phase, phase), total=total)
            progress.update(bars[phase], completed=done, total=total)

        yield update


def _table(title: str, side: dict[str, Any], *, engine: bool = False) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for label, key in ROWS:
        table.add_row(label, _cell(key, side.get(key)))
        if key == "failed":
            reasons = side.get("failed_by_reason", {})
            for reason in sorted(reasons, key=lambda r: (r != "declined", r)):
                label = "declined cards" if reason == "declined" else f"{reason} failures"
                table.add_row(f"  {label}", str(reasons[reason]))
    if engine:
        table.add_section()
        table.add_row("failed before the operator retry", str(side.get("failed_before_retry", 0)))
        table.add_row("recovered by the operator retry", str(side.get("recovered_by_retry", 0)))
    return table


CHECKOUT_MUST_BE_ZERO = frozenset({"charged_without_order", "double_charges"})


def _cell(key: str, value: Any, must_be_zero: frozenset[str] = CHECKOUT_MUST_BE_ZERO) -> str:
    """A table cell: '-' for no value, two decimals for floats, red for a non-zero figure that must
    be zero."""
    if value is None:
        return "-"
    if key in must_be_zero and value:
        return f"[bold red]{value}[/]"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _verdict(result: dict[str, dict[str, Any]]) -> str:
    """Two sentences a person reads aloud: a zero says "no orders failed", not "0 failed, 0 of
    them"."""
    naive, engine = result["naive"], result["engine"]
    return f"\nNaive: {_naive_verdict(naive)}\nTasker: {_engine_verdict(engine)}"


def _count(n: int, singular: str, plural: str | None = None) -> str:
    """'no orders', '1 order', '3 orders': the noun agrees with the number."""
    many = plural or f"{singular}s"
    return f"no {many}" if n == 0 else f"{n} {singular if n == 1 else many}"


def _naive_verdict(naive: dict[str, Any]) -> str:
    orders, failed, lost = naive["orders"], naive["failed"], naive["charged_without_order"]
    if failed == 0:
        head = f"all {orders} checkouts completed"
    else:
        head = f"{failed} of {orders} checkouts failed ({100 * failed / max(orders, 1):.1f}%)"
    if lost == 0:
        return f"{head}; no customer was charged without getting an order."
    were = "was" if lost == 1 else "were"
    return f"{head}; {_count(lost, 'customer')} {were} charged without getting an order."


def _engine_verdict(engine: dict[str, Any]) -> str:
    failed, declined = engine["failed"], engine["failed_declined"]
    if failed == 0:
        outcome = "no orders failed"
    elif declined == failed:
        outcome = (
            "1 order failed, on a declined card"
            if failed == 1
            else f"{failed} orders failed, all on declined cards"
        )
    elif declined == 0:
        outcome = f"{_count(failed, 'order')} failed, none on a declined card"
    else:
        cards = "a declined card" if declined == 1 else "declined cards"
        outcome = f"{_count(failed, 'order')} failed, {declined} of them on {cards}"
    lost, doubled = engine["charged_without_order"], engine["double_charges"]
    if lost == 0 and doubled == 0:
        money = "no customer was charged without an order or charged twice"
    else:
        money = (
            f"{_count(lost, 'customer')} charged without an order, "
            f"{_count(doubled, 'double charge')}"
        )
    compensated = engine.get("compensated", 0)
    if compensated:
        were, its = ("was", "its") if compensated == 1 else ("were", "their")
        money += (
            f"; {_count(compensated, 'checkout')} out of stock after payment {were} refunded"
            f" by {its} compensation"
        )
    operator = engine.get("retried_by_operator", 0)
    if operator <= 0:
        retry = "No order needed the operator's retry."
    else:
        share = 100 * operator / max(engine["orders"], 1)
        recovered = engine["recovered_by_retry"]
        them = (
            ("it completed" if recovered == 1 else "it did not complete")
            if operator == 1
            else (
                "all of them completed"
                if recovered == operator
                else (
                    "none of them completed" if recovered == 0 else f"{recovered} of them completed"
                )
            )
        )
        retry = (
            f"{_count(operator, 'order')} ({share:.2f}%) needed the operator's retry and {them}."
        )
    return f"{outcome}; {money}. {retry}"


# -- registration-outage ---------------------------------------------------------------------------
#: (label, key) of the rows both sides of the registration-outage demo show, in order.
REGISTRATION_ROWS: list[tuple[str, str]] = [
    ("registrations", "registrations"),
    ("completed", "completed"),
    ("failed", "failed"),
    ("users created", "users"),
    ("users without billing", "users_without_billing"),
    ("users without preferences", "users_without_preferences"),
    ("users without welcome mail", "users_without_welcome"),
    ("duplicate users", "duplicate_users"),
    ("duplicate billing profiles", "duplicate_billing_profiles"),
    ("duplicate emails", "duplicate_emails"),
    ("automatic retries", "retries"),
    ("manual interventions", "manual_interventions"),
    ("wall time (s)", "wall_seconds"),
]
#: Figures that must be 0 on a good run: shown in red otherwise.
MUST_BE_ZERO = frozenset(
    {
        "users_without_billing",
        "users_without_preferences",
        "users_without_welcome",
        "duplicate_users",
        "duplicate_billing_profiles",
        "duplicate_emails",
        "manual_interventions",
        "steps_over_retry_limit",
    }
)


@demo.command("registration-outage")
@click.option(
    "--registrations",
    type=click.IntRange(min=1, max=10_000),
    default=47,
    show_default=True,
    help="How many users register while BillingService is down.",
)
@click.option(
    "--outage-seconds",
    type=click.FloatRange(min=0, min_open=True, max=3600),
    default=60.0,
    show_default=True,
    help="How long BillingService stays down.",
)
@click.option(
    "--workers",
    type=click.IntRange(0, 16),
    default=2,
    show_default=True,
    help="`tasker worker` processes to start (0: one worker inside this process).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=16,
    show_default=True,
    help="Steps each worker runs at the same time.",
)
@click.option(
    "--outage-mode",
    type=click.Choice(["refuse", "unavailable"]),
    default="refuse",
    show_default=True,
    help=(
        "How BillingService is down: 'refuse' stops listening (connection refused), 'unavailable' "
        "answers 503."
    ),
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Seed of the generated registrations (plans, preferences).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object {naive, engine} and nothing else.",
)
@click.option(
    "--database-url",
    default=None,
    help="Run the engine on this store. Default: a fresh temporary SQLite file.",
)
@click.pass_context
def registration_outage(
    ctx: click.Context,
    registrations: int,
    outage_seconds: float,
    workers: int,
    concurrency: int,
    outage_mode: str,
    seed: int | None,
    as_json: bool,
    database_url: str | None,
) -> None:
    """The microservices story: BillingService goes down while users register, then comes back.

    Four real HTTP services run on free loopback ports. A naive sequential coordinator registers the
    users during the outage and leaves them half-registered; the workflow engine, with worker
    processes, queues them behind the billing circuit breaker and completes every one when
    BillingService is back. The timeline is read from the engine's event log, and each service's own
    state is checked for duplicates.
    """
    import logging

    from tasker.cli.common import State
    from tasker.demos.microservices.demo import run_registration_outage

    if database_url:
        _check_url(database_url)
    st = ctx.find_object(State)
    engine_log = logging.getLogger("tasker")
    level = engine_log.level
    if not (
        st and st.verbose
    ):  # an in-process worker's warnings (each refused call) would tear the live display
        engine_log.setLevel(logging.ERROR)
    err = Console(stderr=True)
    try:
        with _live(err, enabled=not as_json) as monitor:
            result = run_registration_outage(
                registrations,
                outage_seconds,
                workers=workers,
                concurrency=concurrency,
                outage_mode="refuse" if outage_mode == "refuse" else "unavailable",
                database_url=database_url,
                seed=seed,
                monitor=monitor,
            )
    finally:
        engine_log.setLevel(level)
    if as_json:
        click.echo(json.dumps(result))
        return
    engine = result["engine"]
    out = Console()
    out.print(
        f"[bold]Registration outage[/]: {registrations} registrations, BillingService down"
        f" {outage_seconds:g} s ({outage_mode}),"
        f" {f'{workers} worker processes' if workers else 'one in-process worker'}, seed"
        f" {engine['seed']}"
    )
    out.print()
    out.print("[bold]Timeline[/] (engine side, from the event log)")
    for entry in engine["timeline"]:
        at = datetime.fromisoformat(entry["at"]).astimezone()
        out.print(
            f"  {at:%H:%M:%S}.{at.microsecond // 100_000}  (+{entry['offset_seconds']:6.1f} s) "
            f" {entry['text']}",
            highlight=False,
        )
    out.print()
    out.print(
        Columns(
            [
                _registration_table("Naive coordinator (no engine)", result["naive"]),
                _registration_table("Tasker workflow", engine, engine=True),
            ]
        )
    )
    out.print(_registration_verdict(result))


@contextmanager
def _live(console: Console, *, enabled: bool) -> Iterator[Callable[[Any], None]]:
    """A monitor drawing the demo's progress (steps by state, the billing circuit) on stderr, or a
    silent one."""
    if not enabled:
        yield lambda progress: None
        return
    with Live(console=console, auto_refresh=False, transient=False) as live:

        def update(progress: Any) -> None:
            live.update(_progress_view(progress), refresh=True)

        yield update


def _progress_view(p: Any) -> Table:
    if p.phase == "naive":
        title = (
            f"naive coordinator, BillingService down: {p.completed + p.failed}/{p.total}"
            f" registrations tried, {p.failed} failed"
        )
    elif p.phase == "starting":
        title = "starting the services and the workers"
    elif p.outage_left is not None:
        title = (
            f"+{p.elapsed:5.1f} s  BillingService [bold red]DOWN[/], back in {p.outage_left:4.1f} s"
            f"  circuit billing_service: {_circuit(p.circuit)}"
        )
    else:
        title = (
            f"+{p.elapsed:5.1f} s  BillingService [bold green]UP[/]  circuit billing_service: "
            f"{_circuit(p.circuit)}"
        )
    table = Table(
        title=title,
        title_justify="left",
        caption=(
            f"{p.completed}/{p.total} registrations complete, {p.waiting} waiting for billing,"
            f" {p.failed} failed"
            if p.phase != "naive"
            else None
        ),
        caption_justify="left",
    )
    states = {
        StepState.PENDING: "pending",
        StepState.READY: "ready",
        StepState.WAITING_RETRY: "retry",
        StepState.IN_PROGRESS: "running",
        StepState.COMPLETE: "done",
        StepState.ERROR: "error",
    }
    table.add_column("step")
    for header in states.values():
        table.add_column(header, justify="right")
    for step, counts in (p.steps or {}).items():
        table.add_row(step, *(str(counts.get(s, 0) or "") for s in states))
    return table


def _circuit(state: str) -> str:
    colour = {"closed": "green", "open": "bold red", "half_open": "yellow"}.get(state, "white")
    return f"[{colour}]{state.replace('_', '-')}[/]"


def _registration_table(title: str, side: dict[str, Any], *, engine: bool = False) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for label, key in REGISTRATION_ROWS:
        table.add_row(label, _registration_cell(key, side.get(key)))
        if key == "failed":
            for step, n in (side.get("failed_by_step") or {}).items():
                table.add_row(f"  at {step}", str(n))
    if engine:
        table.add_section()
        table.add_row("waiting when billing came back", str(side.get("waiting_at_recovery")))
        table.add_row(
            "recovery to last completion (s)",
            _registration_cell("recovery", side.get("recovery_to_last_completion_seconds")),
        )
        table.add_row(
            "steps over their retry limit",
            _registration_cell("steps_over_retry_limit", side.get("steps_over_retry_limit")),
        )
        table.add_row(
            "billing circuit opened / probes",
            f"{side.get('circuit_opened', 0)} / {side.get('circuit_probes', 0)}",
        )
        for step, a in (side.get("attempts") or {}).items():
            table.add_row(
                f"attempts {step}", f"max {a['max']} of {a['retry_limit']}, total {a['total']}"
            )
    return table


def _registration_cell(key: str, value: Any) -> str:
    return _cell(key, value, MUST_BE_ZERO)


def _registration_verdict(result: dict[str, dict[str, Any]]) -> str:
    naive, engine = result["naive"], result["engine"]
    duplicates = sum(
        engine[k]
        for k in (
            "duplicate_users",
            "duplicate_billing_profiles",
            "duplicate_preferences",
            "duplicate_emails",
        )
    )
    recovery = engine["recovery_to_last_completion_seconds"]
    when = (
        f", the last {recovery:.1f} s after BillingService came back"
        if recovery is not None
        else ""
    )
    return (
        f"\nNaive: {naive['failed']} of {naive['registrations']} registrations failed;"
        f" {naive['users_without_billing']} users left without billing,"
        f" {naive['users_without_preferences']} without preferences,"
        f" {naive['users_without_welcome']} without a welcome mail: {naive['manual_interventions']}"
        f" to repair by hand.\nTasker: {engine['completed']} of {engine['registrations']} completed"
        f" by themselves{when}; {duplicates} duplicates in the services,"
        f" {engine['steps_over_retry_limit']} steps over their retry limit,"
        f" {engine['manual_interventions']} manual interventions."
    )
