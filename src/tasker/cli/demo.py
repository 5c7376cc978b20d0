"""`tasker demo ...`: runnable versions of the stories, to see the engine's promises hold on your machine.

`tasker demo black-friday` runs the e-commerce story: the same orders through a naive checkout and through
the workflow engine, over the same flaky services, and reconciles each side from the services' own books.
The demo code lives in `examples.ecommerce` and is imported when the command runs, so the CLI does not
depend on the examples to start.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.columns import Columns
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

PHASES = {
    "naive": "naive checkout",
    "engine": "workflow engine",
    "operator_retry": "operator retry",
}

#: (label, key of the figure) of the rows every side shows, in order; the failures by reason follow "failed".
ROWS: list[tuple[str, str]] = [
    ("orders", "orders"),
    ("completed", "completed"),
    ("failed", "failed"),
    ("charged without an order", "charged_without_order"),
    ("double charges", "double_charges"),
    ("orders never confirmed by mail", "orders_without_confirmation"),
    ("refunds issued", "refunds"),
    ("automatic retries", "retries"),
    ("wall time (s)", "wall_seconds"),
]


@click.group()
def demo() -> None:
    """Run the stories' demos."""


@demo.command("black-friday")
@click.option("--orders", type=click.IntRange(min=1), default=200, show_default=True,
              help="How many checkouts each side processes.")
@click.option("--transient-failure-rate", type=click.FloatRange(0.0, 1.0), default=0.05, show_default=True,
              help="Probability that any one service call (charge, reserve, mail) fails transiently.")
@click.option("--decline-rate", type=click.FloatRange(0.0, 1.0), default=0.002, show_default=True,
              help="Share of cards the payment gateway declines (a permanent failure).")
@click.option("--seed", type=int, default=None, help="Seed of orders and faults; the same seed replays the same run.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object {naive, engine} and nothing else.")
@click.option("--database-url", default=None,
              help="Run on this store (its demo_* tables are recreated). Default: a fresh temporary SQLite file.")
def black_friday(orders: int, transient_failure_rate: float, decline_rate: float, seed: int | None,
                 as_json: bool, database_url: str | None) -> None:
    """The Black Friday story: a naive checkout and the workflow engine, same orders, same faults.

    After the engine has finished, the faults are switched off and every task that failed for any reason
    but a declined card is retried once, as an operator would once the dependencies are healthy.
    """
    from examples.ecommerce.demo import run_black_friday

    if database_url:
        _check_url(database_url)
    seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
    err = Console(stderr=True)
    with _progress(err, enabled=not as_json) as progress:
        result = run_black_friday(orders, transient_failure_rate=transient_failure_rate, decline_rate=decline_rate,
                                  seed=seed, database_url=database_url, progress=progress)
    if as_json:
        click.echo(json.dumps(result))
        return
    out = Console()
    out.print(f"[bold]Black Friday[/]: {orders} orders, transient failure rate {transient_failure_rate:g} per "
              f"service call, decline rate {decline_rate:g}, seed {seed}")
    out.print(Columns([_table("Naive checkout (no retries)", result["naive"]),
                       _table("Tasker workflow", result["engine"], engine=True)]))
    out.print(_verdict(result))


def _check_url(url: str) -> None:
    """Refuse a store URL the engine cannot open before any work starts, as a usage error."""
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        backend = None
    if backend not in ("sqlite", "postgresql", "postgres"):
        raise click.BadParameter(f"'{url}' is not a store URL; use sqlite:///path.db or postgresql://user@host/db",
                                 param_hint="--database-url")


@contextmanager
def _progress(console: Console, *, enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A progress callback drawing one bar per phase on stderr, or a silent one."""
    if not enabled:
        yield lambda phase, done, total: None
        return
    bars: dict[str, TaskID] = {}
    with Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:

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


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("charged_without_order", "double_charges") and value:
        return f"[bold red]{value}[/]"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _verdict(result: dict[str, dict[str, Any]]) -> str:
    naive, engine = result["naive"], result["engine"]
    orders = max(engine["orders"], 1)
    operator = engine["failed_before_retry"] - engine["failed_declined"]
    return (
        f"\nNaive: {naive['failed']} of {naive['orders']} checkouts failed "
        f"({100 * naive['failed'] / max(naive['orders'], 1):.1f}%); {naive['charged_without_order']} customers were "
        f"charged without getting an order.\n"
        f"Tasker: {engine['failed']} failed, {engine['failed_declined']} of them declined cards; "
        f"{engine['charged_without_order']} charged without an order, {engine['double_charges']} double charges. "
        f"{operator} orders ({100 * operator / orders:.2f}%) needed the operator's retry and "
        f"{engine['recovered_by_retry']} of them completed."
    )
