"""The Black Friday demo: the same orders through the naive checkout and through the workflow
engine.

Both sides call the same simulated services with the same faults (the same first-attempt failures
for the same orders, the same declined cards), and both are judged by the services' own tables
rather than by what the callers believe: how many customers were charged without getting an order,
how many were charged twice. The naive side is the story's 3 AM; the engine side is the story's
"after": automatic retries, idempotent charges, and an operator who, once the dependencies are
healthy, retries the few tasks that ran out of attempts with one command each.

`run_black_friday()` returns `{"naive": {...}, "engine": {...}}`; `tasker demo black-friday` renders
it.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from tasker import Event, StepState, Task, Tasker, TaskState
from tasker.demos.ecommerce import naive, services
from tasker.demos.ecommerce.pricing import PricedLine, price_lines
from tasker.demos.ecommerce.services import (
    CATALOG,
    CardDeclined,
    FaultSettings,
    OutOfStock,
    ServiceError,
    Services,
)

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "ecommerce/process_order"
DECLINED = "declined"
OUT_OF_STOCK = "out_of_stock"
#: The dependent systems of the template, whose circuit-breaker cool-downs the demo compresses.
SYSTEMS = ("ecommerce_platform", "payment_gateway", "inventory_service", "mailer")
#: The engine's default cool-down and its cap, in seconds, before `backoff_scale` compresses them.
COOLDOWN_SECONDS, MAX_COOLDOWN_SECONDS = 5.0, 30.0

#: progress(phase, done, total); phases are "naive", "engine" and "operator_retry".
ProgressCallback = Callable[[str, int, int], None]


def generate_orders(count: int, seed: int) -> list[dict[str, Any]]:
    """`count` plausible checkouts, reproducible from `seed`, each paying exactly its priced
    total."""
    rng = random.Random(seed)
    sellable = [p for p in CATALOG if p.active]
    orders = []
    for i in range(count):
        picks = rng.sample(sellable, rng.choice((1, 1, 2, 2, 3)))
        lines = [
            PricedLine(p.id, p.name, Decimal(p.price_cents) / 100, rng.choice((1, 1, 1, 2, 3)))
            for p in picks
        ]
        items = [
            {
                "product_id": line.product_id,
                "name": line.name,
                "price": float(line.price),
                "quantity": line.quantity,
            }
            for line in lines
        ]
        totals = price_lines(lines)
        orders.append(
            {
                "checkout_id": f"bf-{i:05d}",
                "cart_items": items,
                "payment_info": {
                    "method": rng.choice(("credit_card", "credit_card", "debit_card", "paypal")),
                    "amount": float(totals.total),
                    "currency": "USD",
                    "card_last_four": f"{rng.randrange(10_000):04d}",
                    "token": f"tok_{seed}_{i:05d}",
                },
                "customer_info": {
                    "id": 10_000 + i,
                    "email": f"shopper{i}@example.com",
                    "name": f"Shopper {i}",
                    "tier": rng.choices(("standard", "premium", "enterprise"), (85, 12, 3))[0],
                },
                "shipping_info": {
                    "address": f"{i + 1} Market Street",
                    "city": "Springfield",
                    "country": "US",
                },
                "priority": rng.choices(("standard", "express", "overnight"), (80, 15, 5))[0],
            }
        )
    return orders


def run_black_friday(
    orders: int = 200,
    *,
    transient_failure_rate: float = 0.05,
    decline_rate: float = 0.002,
    stockout_rate: float = 0.01,
    seed: int | None = None,
    database_url: str | None = None,
    concurrency: int = 32,
    max_latency_ms: float = 2.0,
    backoff_scale: float = 0.01,
    progress: ProgressCallback | None = None,
) -> dict[str, dict[str, Any]]:
    """Run `orders` checkouts through both sides and return their figures.

    Without `database_url` the run uses a fresh temporary SQLite file; with one, the demo's service
    tables are dropped and recreated there (the engine's tables are left alone; its tasks get
    run-unique keys). `backoff_scale` shrinks every retry delay, a gateway's `retry_after` included,
    so a run takes seconds. `stockout_rate` is the share of orders whose stock is gone once they
    are charged (the same orders on both sides): the naive checkout leaves those customers charged,
    the workflow refunds them (the charge's compensation).
    """
    if orders < 1:
        raise ValueError("orders must be at least 1")
    seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
    faults = FaultSettings(
        transient_failure_rate=transient_failure_rate,
        decline_rate=decline_rate,
        stockout_rate=stockout_rate,
        max_latency_ms=max_latency_ms,
        seed=seed,
    )
    batch = generate_orders(orders, seed)
    report = progress or (lambda phase, done, total: None)
    with _database(database_url) as url:
        tasker = Tasker(
            url,
            concurrency=concurrency,
            backoff_scale=backoff_scale,
            poll_interval=0.05,
            migrate=True,
        )  # a demo writes its own data: it may set up the schema
        try:
            tasker.load_templates(TEMPLATES)
            svc = services.configure(
                tasker.db.writer, faults, reader=tasker.db.reader, channel="engine", reset=True
            )
            naive_side = run_naive(
                svc.for_channel("naive"), batch, concurrency=concurrency, progress=report
            )
            svc.inventory.restock()
            _scale_circuit_breakers(tasker, backoff_scale)
            try:
                engine_side = run_engine(
                    tasker, svc, batch, concurrency=concurrency, progress=report
                )
            finally:
                _scale_circuit_breakers(tasker, None)
        finally:
            services.reset_registry()
            tasker.close()
    return {"naive": naive_side, "engine": engine_side}


def _scale_circuit_breakers(tasker: Tasker, scale: float | None) -> None:
    """Compress the circuit breakers' cool-downs like every retry delay (None: back to the
    defaults).

    Under heavy faults a system can fail five times in a row and open its circuit; its steps then
    wait the cool-down without spending attempts. `backoff_scale` does not reach those cool-downs,
    so without this a demo with compressed backoff would sit idle for real-time seconds.
    """
    for system in SYSTEMS:
        if scale is None:
            tasker.systems.configure(system, cooldown_seconds=None, max_cooldown_seconds=None)
        else:
            tasker.systems.configure(
                system,
                cooldown_seconds=COOLDOWN_SECONDS * scale,
                max_cooldown_seconds=MAX_COOLDOWN_SECONDS * scale,
            )


@contextmanager
def _database(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="tasker-black-friday-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'black_friday.db'}"


# -- the naive side --------------------------------------------------------------------------------
def run_naive(
    svc: Services, batch: Sequence[dict[str, Any]], *, concurrency: int, progress: ProgressCallback
) -> dict[str, Any]:
    """Every order through `naive.process_order`, `concurrency` at a time, as a web server would."""
    reasons: Counter[str] = Counter()
    done = 0
    lock = threading.Lock()

    def checkout(order: dict[str, Any]) -> None:
        nonlocal done
        reason = None
        try:
            naive.process_order(svc, order)
        except (
            Exception
        ) as exc:  # the naive checkout lets everything escape; the demo only classifies it
            reason = _naive_reason(exc)
        with lock:
            done += 1
            if reason:
                reasons[reason] += 1
            progress("naive", done, len(batch))

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency, thread_name_prefix="naive-checkout") as pool:
        list(pool.map(checkout, batch))
    wall = time.perf_counter() - started
    return {**_side(len(batch), reasons, svc, retries=0, wall=wall), "compensated": 0}


def _naive_reason(exc: Exception) -> str:
    if isinstance(exc, CardDeclined):
        return DECLINED
    if isinstance(exc, OutOfStock):
        return OUT_OF_STOCK
    if isinstance(exc, ServiceError):
        return exc.service
    if isinstance(exc, naive.CheckoutError):
        return "invalid_cart"
    return type(exc).__name__


# -- the engine side -------------------------------------------------------------------------------
def run_engine(
    tasker: Tasker,
    svc: Services,
    batch: Sequence[dict[str, Any]],
    *,
    concurrency: int,
    progress: ProgressCallback,
) -> dict[str, Any]:
    """Every order as a task, worked until idle; then, faults off, one retry per non-declined
    failure."""
    lock = threading.Lock()
    settled: set[int] = set()
    retries = 0

    def on_event(event: Event) -> None:
        nonlocal retries
        with lock:
            if event.name == "step.retry_scheduled":
                retries += 1
            else:
                settled.add(int(event.payload["task_id"]))
                progress("engine", len(settled), len(batch))

    unsubscribe = tasker.bus.subscribe(
        on_event, "step.retry_scheduled", "task.completed", "task.failed", "task.compensated"
    )
    run_id = uuid.uuid4().hex[:12]
    started = time.perf_counter()
    try:
        ids = [
            tasker.create_task(TEMPLATE, order, idempotency_key=f"black-friday-{run_id}-{i:05d}").id
            for i, order in enumerate(batch)
        ]
        tasker.work(concurrency=concurrency, until_idle=True, namespaces=["ecommerce"])
        failed = [
            t for t in tasker.get_tasks(ids) if t.status in (TaskState.ERROR, TaskState.COMPENSATED)
        ]
        # A declined card is no outage: a retry would fail the same way; a compensated checkout
        # (a stock-out) was refunded: its customer checks out again.
        to_retry = [
            t.id for t in failed if t.status == TaskState.ERROR and failure_reason(t) != DECLINED
        ]
        # The operator's part: the dependencies are healthy again, so each stuck order gets one
        # retry.
        svc.faults.disable()
        for n, task_id in enumerate(to_retry, 1):
            tasker.retry_task(task_id)
            progress("operator_retry", n, len(to_retry))
        if to_retry:
            tasker.work(concurrency=concurrency, until_idle=True, namespaces=["ecommerce"])
        final = tasker.get_tasks(ids)
    finally:
        unsubscribe()
    wall = time.perf_counter() - started
    reasons = Counter(failure_reason(t) for t in final if t.status != TaskState.COMPLETE)
    side = _side(len(batch), reasons, svc, retries=retries, wall=wall)
    side["compensated"] = sum(1 for t in final if t.status == TaskState.COMPENSATED)
    status = {t.id: t.status for t in final}
    side["failed_before_retry"] = len(failed)
    side["retried_by_operator"] = len(to_retry)
    side["recovered_by_retry"] = sum(1 for i in to_retry if status[i] == TaskState.COMPLETE)
    return side


def failure_reason(task: Task) -> str:
    """Why a task did not complete: `declined`, `out_of_stock`, or the dependent system of its
    failed step."""
    if task.status not in (TaskState.ERROR, TaskState.CANCELLED, TaskState.COMPENSATED):
        return task.status
    for step in task.steps:
        if step.status == StepState.ERROR:
            code = step.last_error.get("error_code") if step.last_error else None
            if code == "PAYMENT_DECLINED":
                return DECLINED
            if code == "OUT_OF_STOCK":
                return OUT_OF_STOCK
            return step.dependent_system
    return task.status


# -- figures ---------------------------------------------------------------------------------------
def _side(
    orders: int, reasons: Counter[str], svc: Services, *, retries: int, wall: float
) -> dict[str, Any]:
    """One side's figures; money and orders are counted from the services' tables, not the caller's
    view."""
    ledger = svc.ledger()
    failed = sum(reasons.values())
    return {
        "orders": orders,
        "completed": orders - failed,
        "failed": failed,
        "failed_declined": reasons.get(DECLINED, 0),
        "failed_by_reason": dict(sorted(reasons.items())),
        "charged_without_order": ledger.charged_without_order,
        "double_charges": ledger.double_charges,
        "orders_without_confirmation": ledger.orders_without_confirmation,
        "refunded": ledger.refunded,
        "retries": retries,
        "wall_seconds": round(wall, 3),
    }
