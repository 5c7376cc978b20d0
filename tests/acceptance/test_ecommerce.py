"""The e-commerce story's checkout as a workflow, on both stores: what the customer and the services
see.

Faults are scripted (the next calls of a service fail in a given way) so each test tells one story:
a declined card, a gateway that charged but timed out, a rate limiter, stock that ran out, an outage
an operator waits out before retrying.
"""

from __future__ import annotations

import copy
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tasker import ContextValidationError, Event, PermanentError, Task, Tasker
from tasker.demos.ecommerce import services
from tasker.demos.ecommerce.demo import TEMPLATES
from tasker.demos.ecommerce.pricing import PricedLine, price_lines
from tasker.demos.ecommerce.services import CATALOG, Fault, FaultSettings, Services
from tasker.domain.errors import OperationError
from tasker.store.database import Database

TEMPLATE = "ecommerce/process_order"
STEPS = [
    "validate_cart",
    "process_payment",
    "update_inventory",
    "create_order",
    "send_confirmation",
]
SAMPLE_CART: list[dict[str, Any]] = [
    {"product_id": 1, "name": "Classic Cotton T-Shirt", "price": 29.99, "quantity": 2},
    {"product_id": 2, "name": "Canvas Sneakers", "price": 49.99, "quantity": 1},
]
BACKOFF_SCALE = 0.05


def order(
    cart: list[dict[str, Any]] | None = None,
    *,
    token: str = "tok_visa",
    customer_id: int = 1,
    email: str = "customer@example.com",
    **extra: Any,
) -> dict[str, Any]:
    """A checkout context paying exactly the priced total of `cart` (default: the story's sample
    cart)."""
    cart = copy.deepcopy(cart or SAMPLE_CART)
    prices = {p.id: p for p in CATALOG}
    total = price_lines(
        PricedLine(
            i["product_id"],
            i["name"],
            Decimal(prices[i["product_id"]].price_cents) / 100,
            i["quantity"],
        )
        for i in cart
    ).total
    return {
        "cart_items": cart,
        "payment_info": {
            "method": "credit_card",
            "amount": float(total),
            "token": token,
            "card_last_four": "4242",
        },
        "customer_info": {"id": customer_id, "email": email, "name": "Sam Shopper"},
        **extra,
    }


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file for `store_url` to copy (overrides the shared fixture of
    tests/conftest.py).

    The shared one runs `PRAGMA wal_checkpoint` inside a write transaction, which SQLite refuses
    with "database table is locked"; here the checkpoint runs on a plain connection once the engine
    is closed.
    """
    path = tmp_path_factory.mktemp("sqlite-template-ecommerce") / "template.db"
    Database(f"sqlite:///{path}").dispose()
    with closing(sqlite3.connect(path)) as raw:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture
def engine(make_tasker: Callable[..., Tasker]) -> Tasker:
    t = make_tasker(backoff_scale=BACKOFF_SCALE)
    t.load_templates(TEMPLATES)
    return t


@pytest.fixture
def shop(engine: Tasker) -> Iterator[Services]:
    svc = services.configure(
        engine.db.writer,
        FaultSettings(rate_limit_retry_after=4.0),
        reader=engine.db.reader,
        reset=True,
    )
    yield svc
    services.reset_registry()


def run(engine: Tasker, context: dict[str, Any]) -> Task:
    return engine.run(engine.create_task(TEMPLATE, context).id)


def test_sample_cart_completes_with_one_charge(engine: Tasker, shop: Services) -> None:
    task = run(engine, order())

    assert task.status == "complete"
    assert [(s.name, s.status, s.attempts) for s in task.steps] == [
        (name, "complete", 1) for name in STEPS
    ]
    cart = task.step("validate_cart").results
    assert cart is not None
    assert (cart["subtotal"], cart["tax"], cart["shipping"], cart["total"]) == (
        109.97,
        8.80,
        5.99,
        124.76,
    )
    payment = task.step("process_payment").results
    assert payment is not None and payment["amount_charged"] == 124.76
    charges = shop.charges_for(f"task-{task.id}")
    assert [(c["amount_cents"], c["status"]) for c in charges] == [(12476, "succeeded")]
    ledger = shop.ledger()
    assert (ledger.charges, ledger.orders, ledger.mails, ledger.charged_without_order) == (
        1,
        1,
        1,
        0,
    )
    notes = engine.get_task(task.id).annotations or {}
    assert notes["order_number"] == task.step("create_order").results["order_number"]  # type: ignore[index]
    assert notes["order_total"] == 124.76
    assert notes["checkout_duration_seconds"] >= 0


def test_declined_card_fails_at_once_without_charging(engine: Tasker, shop: Services) -> None:
    task = run(engine, order(token="tok_declined_insufficient_funds"))

    assert task.status == "error"
    payment = task.step("process_payment")
    assert payment.status == "error"
    assert payment.attempts == 1
    assert payment.last_error is not None
    assert payment.last_error["error_code"] == "PAYMENT_DECLINED"
    assert payment.last_error["retryable"] is False
    assert [task.step(s).status for s in STEPS[2:]] == ["pending"] * 3
    assert shop.ledger().charges == 0
    notes = engine.get_task(task.id).annotations or {}
    assert notes == {
        "failed_step": "process_payment",
        "error_code": "PAYMENT_DECLINED",
        "payment_captured": False,
        "payment_refunded": False,
        "needs_attention": False,
    }


def test_gateway_timeout_after_charging_is_retried_without_a_second_charge(
    engine: Tasker, shop: Services
) -> None:
    shop.faults.script("payment_gateway", Fault.TIMEOUT_AFTER)

    task = run(engine, order())

    assert task.status == "complete"
    payment = task.step("process_payment")
    assert payment.attempts == 2
    assert payment.results is not None and payment.results["idempotent_replay"] is True
    assert len(shop.charges_for(f"task-{task.id}")) == 1
    ledger = shop.ledger()
    assert (ledger.charges, ledger.double_charges, ledger.charged_without_order) == (1, 0, 0)


@pytest.mark.parametrize(
    ("service", "step"),
    [("inventory_service", "update_inventory"), ("mailer", "send_confirmation")],
)
def test_timeouts_after_the_work_was_done_do_not_repeat_it(
    engine: Tasker, shop: Services, service: str, step: str
) -> None:
    shop.faults.script(service, Fault.TIMEOUT_AFTER)

    task = run(engine, order())

    assert task.status == "complete"
    assert task.step(step).attempts == 2
    assert shop.inventory.products([1])[1].stock == services.DEFAULT_STOCK - 2  # reserved once
    assert shop.ledger().mails == 1


def test_item_out_of_stock_stops_the_checkout_before_payment(
    engine: Tasker, shop: Services
) -> None:
    shop.inventory.set_stock(1, 1)

    task = run(engine, order())

    assert task.status == "error"
    validate = task.step("validate_cart")
    assert validate.attempts == 1
    assert validate.last_error is not None and validate.last_error["error_code"] == "OUT_OF_STOCK"
    assert shop.ledger().charges == 0


def test_stock_taken_after_payment_is_permanent_and_refunds_the_charge(
    engine: Tasker, shop: Services
) -> None:
    cart = [{"product_id": 4, "name": "Baseball Cap", "price": 19.99, "quantity": 1}]

    def another_shopper_takes_the_last_cap(event: Event) -> None:
        if event.payload.get("step") == "process_payment":
            shop.inventory.set_stock(4, 0)

    engine.bus.subscribe(another_shopper_takes_the_last_cap, "step.started")
    task = run(engine, order(cart))

    # The charge's compensation refunded it: the task is compensated, not left in error.
    assert task.status == "compensated"
    inventory = task.step("update_inventory")
    assert inventory.attempts == 1
    assert inventory.last_error is not None and inventory.last_error["error_code"] == "OUT_OF_STOCK"
    refund = task.step("undo:process_payment")
    charge = task.step("process_payment").results or {}
    assert refund.status == "complete"
    assert refund.results == {"refunded_payment_id": charge["payment_id"], "refunded_now": True}
    ledger = shop.ledger()
    assert (ledger.charges, ledger.refunded, ledger.charged_without_order) == (0, 1, 0)
    notes = engine.get_task(task.id).annotations or {}
    assert (notes["payment_refunded"], notes["needs_attention"]) == (True, False)

    # Restocked, an operator tries to retry: a compensated checkout is refused, the customer
    # checks out again.
    shop.inventory.set_stock(4, 10)
    with pytest.raises(OperationError, match="compensated"):
        engine.retry_task(task.id)
    assert shop.ledger().orders == 0


def test_an_order_that_cannot_be_created_puts_the_stock_back_and_refunds(
    engine: Tasker, shop: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    cart = [{"product_id": 4, "name": "Baseball Cap", "price": 19.99, "quantity": 2}]
    shop.inventory.set_stock(4, 5)

    def refuse(**_: Any) -> None:
        raise PermanentError("the order book refuses this customer", error_code="ORDER_REFUSED")

    monkeypatch.setattr(shop.orders, "create", refuse)
    task = run(engine, order(cart))

    assert task.status == "compensated"
    assert [s.name for s in task.steps if s.name.startswith("undo:")] == [
        "undo:process_payment",
        "undo:update_inventory",
    ]
    assert shop.inventory.products([4])[4].stock == 5  # the two caps went back on the shelf
    assert shop.ledger().refunded == 1
    restore = task.step("undo:update_inventory")
    refund = task.step("undo:process_payment")
    assert restore.finished_at is not None and refund.started_at is not None
    assert restore.finished_at <= refund.started_at  # the stock first, then the money


def test_rate_limited_charge_waits_for_retry_after(engine: Tasker, shop: Services) -> None:
    shop.faults.script("payment_gateway", Fault.RATE_LIMITED)

    task = run(engine, order())

    assert task.status == "complete"
    assert task.step("process_payment").attempts == 2
    step_id = task.step("process_payment").id
    history = [t for t in engine.history.step_transitions(task.id) if t["step_id"] == step_id]
    waited = next(t for t in history if t["to_state"] == "waiting_retry")
    second = next(t for t in history if t["to_state"] == "in_progress" and t["attempt"] == 2)
    assert "retry after 4s" in (waited["error_message"] or "")
    # The gateway asked for 4 s, scaled like every delay by the engine's backoff_scale; the
    # exponential backoff alone would have waited about 1 s scaled.
    assert second["at"] - waited["at"] >= timedelta(seconds=4.0 * BACKOFF_SCALE)


def test_express_and_premium_orders_get_their_settings(engine: Tasker, shop: Services) -> None:
    express = engine.create_task(TEMPLATE, order(priority="express", customer_id=2))
    assert express.context["express_processing"]["delivery_days"] == 2
    assert "premium_processing" not in express.context

    premium = order(priority="overnight", customer_id=3)
    premium["customer_info"]["tier"] = "premium"
    overnight = engine.create_task(TEMPLATE, premium)
    assert overnight.context["express_processing"]["delivery_days"] == 1
    assert overnight.context["premium_processing"] == {
        "priority": "high",
        "faster_processing": True,
    }

    standard = engine.create_task(TEMPLATE, order(customer_id=4))
    assert standard.context["priority"] == "standard"
    assert "express_processing" not in standard.context

    done = engine.run(express.id)
    assert done.status == "complete"
    expected = f"{datetime.now(UTC) + timedelta(days=2):%B %d, %Y}"
    assert done.step("create_order").results["estimated_delivery"] == expected  # type: ignore[index]


def test_a_gateway_down_for_every_attempt_is_waited_for(engine: Tasker, shop: Services) -> None:
    """The outage promise: three 503s in a row spend the retry budget, but the gateway answered
    nothing meanwhile, so the step waits for it instead of failing and completes once it is back."""
    shop.faults.script("payment_gateway", Fault.UNAVAILABLE, Fault.UNAVAILABLE, Fault.UNAVAILABLE)

    task = run(engine, order())

    assert task.status == "complete"
    assert task.step("process_payment").attempts == 3
    assert len(shop.charges_for(f"task-{task.id}")) == 1


def test_failed_task_completes_when_retried_after_the_outage(
    engine: Tasker, shop: Services
) -> None:
    # Past its max_outage_seconds a system's outage fails the step; then an operator's retry
    # resumes.
    engine.systems.configure("payment_gateway", max_outage_seconds=0.01)
    shop.faults.script("payment_gateway", Fault.UNAVAILABLE, Fault.UNAVAILABLE, Fault.UNAVAILABLE)

    task = run(engine, order())

    assert task.status == "error"
    payment = task.step("process_payment")
    assert payment.attempts == 3
    assert (
        payment.last_error is not None and payment.last_error["error_code"] == "GATEWAY_UNAVAILABLE"
    )
    assert shop.ledger().charges == 0

    shop.faults.disable()
    engine.retry_task(task.id)
    task = engine.run(task.id)

    assert task.status == "complete"
    assert len(shop.charges_for(f"task-{task.id}")) == 1


def test_undeliverable_address_fails_the_confirmation_only(engine: Tasker, shop: Services) -> None:
    task = run(engine, order(email="nobody@shop.invalid"))

    assert task.status == "error"
    mail = task.step("send_confirmation")
    assert (mail.status, mail.attempts) == ("error", 1)
    assert mail.last_error is not None and mail.last_error["error_code"] == "INVALID_EMAIL"
    assert shop.ledger().orders == 1


def test_schema_rejects_a_bad_checkout_with_every_violation(engine: Tasker, shop: Services) -> None:
    bad = order()
    bad["cart_items"][0] = {**bad["cart_items"][0], "quantity": 0}
    bad["payment_info"]["method"] = "cash"
    bad["customer_info"]["email"] = "not-an-email"

    with pytest.raises(ContextValidationError) as raised:
        engine.create_task(TEMPLATE, bad)

    paths = {path for path, _ in raised.value.violations}
    assert paths == {"$.cart_items[0].quantity", "$.payment_info.method", "$.customer_info.email"}
