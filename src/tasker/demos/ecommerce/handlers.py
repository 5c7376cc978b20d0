"""The five step handlers of `ecommerce/process_order`: one focused class per step of the checkout.

Each handler turns the services' answers into the engine's two failure classes, and that
classification is the whole reliability story: a declined card or missing stock is a
`PermanentError` (retrying cannot help, and must not charge again), an unavailable or slow
dependency is a `RetryableError` (honouring a rate limiter's `retry_after`). Every call that changes
the world carries `ctx.idempotency_key`, which is stable across retries of the step, so the payment
gateway replays the first charge instead of making a second one when a retry follows a timeout that
did charge.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tasker import PermanentError, RetryableError, StepContext, StepHandler
from tasker.demos.ecommerce import services
from tasker.demos.ecommerce.pricing import PricedLine, from_cents, money, price_lines, to_cents
from tasker.demos.ecommerce.services import (
    CardDeclined,
    InvalidRequest,
    OutOfStock,
    RateLimited,
    ServiceError,
    Services,
)

STANDARD_DELIVERY_DAYS = 7


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _iso(moment: datetime) -> str:
    """A service timestamp in ISO form, in UTC (SQLite hands timestamps back without their zone)."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def _services() -> Services:
    return services.current()


def order_ref(ctx: StepContext) -> str:
    """The reference every service call of this checkout carries: the storefront's id, else the
    task's."""
    given = ctx.context.get("checkout_id")
    return str(given) if given else f"task-{ctx.task_id}"


@contextmanager
def calling(system: str) -> Iterator[None]:
    """Classify a service failure not handled more specifically: retryable ones retry, the rest
    stop.

    The error code names the system and the failure (`GATEWAY_TIMEOUT`, `MAILER_UNAVAILABLE`, ...),
    so an operator reading a failed step knows where to look without reading a traceback.
    """
    try:
        yield
    except RateLimited as exc:
        raise RetryableError(
            str(exc), retry_after=exc.retry_after, error_code=f"{system}_RATE_LIMITED"
        ) from exc
    except ServiceError as exc:
        if exc.retryable:
            raise RetryableError(str(exc), error_code=f"{system}_{exc.code}") from exc
        raise PermanentError(str(exc), error_code=f"{system}_{exc.code}") from exc


class ValidateCartHandler(StepHandler):
    """Check every line against the catalog and price the cart.

    Prices come from the catalog, not from the cart the browser sent. Nothing is reserved yet, so an
    item short of stock stops the checkout here, before the card is charged.
    """

    def process(self, ctx: StepContext) -> dict[str, Any]:
        items = ctx.context.get("cart_items") or []
        if not items:
            raise PermanentError("the cart is empty", error_code="MISSING_CART_ITEMS")
        catalog = _services().inventory.products(int(item["product_id"]) for item in items)
        lines: list[PricedLine] = []
        for i, item in enumerate(items):
            product_id, quantity = int(item["product_id"]), int(item["quantity"])
            product = catalog.get(product_id)
            if product is None:
                raise PermanentError(
                    f"cart_items[{i}]: product {product_id} does not exist",
                    error_code="PRODUCT_NOT_FOUND",
                )
            if not product.active:
                raise PermanentError(
                    f"cart_items[{i}]: {product.name} is no longer sold",
                    error_code="PRODUCT_INACTIVE",
                )
            if product.stock < quantity:
                raise PermanentError(
                    f"cart_items[{i}]: only {product.stock} of {product.name} left, "
                    f"{quantity} ordered",
                    error_code="OUT_OF_STOCK",
                )
            lines.append(
                PricedLine(product_id, product.name, Decimal(product.price_cents) / 100, quantity)
            )
        totals = price_lines(lines)
        ctx.logger.info("cart validated: %d items, total %s", totals.item_count, totals.total)
        return {
            "validated_items": [
                {
                    "product_id": line.product_id,
                    "name": line.name,
                    "price": float(line.price),
                    "quantity": line.quantity,
                    "line_total": float(line.line_total),
                }
                for line in lines
            ],
            "subtotal": float(totals.subtotal),
            "tax": float(totals.tax),
            "shipping": float(totals.shipping),
            "total": float(totals.total),
            "item_count": totals.item_count,
            "currency": ctx.context["payment_info"].get("currency", "USD"),
            "validated_at": _now(),
        }


class ProcessPaymentHandler(StepHandler):
    """Charge the card for the priced total, exactly once however often the step is attempted."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        cart = ctx.result_of("validate_cart")
        payment = ctx.context["payment_info"]
        if not payment.get("token"):
            raise PermanentError(
                "payment_info.token is missing", error_code="MISSING_PAYMENT_TOKEN"
            )
        total = to_cents(cart["total"])
        if to_cents(payment["amount"]) != total:
            raise PermanentError(
                f"payment amount {money(payment['amount'])} does not match the cart total"
                f" {money(cart['total'])}",
                error_code="PAYMENT_AMOUNT_MISMATCH",
            )
        with calling("GATEWAY"):
            try:
                charge = _services().payment.charge(
                    order_ref=order_ref(ctx),
                    amount_cents=total,
                    currency=payment.get("currency", "USD"),
                    method=payment["method"],
                    token=payment["token"],
                    idempotency_key=ctx.idempotency_key,
                )
            except CardDeclined as exc:
                raise PermanentError(
                    f"Payment declined: {exc}", error_code="PAYMENT_DECLINED"
                ) from exc
        if charge.replayed:
            ctx.logger.info(
                "charge %s already existed for this step; not charging again", charge.charge_id
            )
        return {
            "payment_id": charge.charge_id,
            "amount_charged": from_cents(charge.amount_cents),
            "currency": charge.currency,
            "payment_method_type": charge.method,
            "status": "completed",
            "processed_at": _iso(charge.created_at),
            "idempotent_replay": charge.replayed,
        }


class UpdateInventoryHandler(StepHandler):
    """Reserve the stock of every line, all or nothing.

    Stock can run out between validation and reservation (another checkout took the last one). The
    card is already charged by then: the step fails for good, and the engine undoes the charge
    (`process_payment`'s compensation, `RefundPaymentHandler`), so no customer is left charged for
    an order that will never exist.
    """

    def process(self, ctx: StepContext) -> dict[str, Any]:
        lines = ctx.result_of("validate_cart")["validated_items"]
        payment_id = ctx.result_of("process_payment")["payment_id"]
        svc = _services()
        if svc.payment.status(payment_id) != "succeeded":
            # The charge was refunded (by hand, say): reserving stock now would ship an order
            # nobody paid for. The customer has to check out again.
            raise PermanentError(
                f"charge {payment_id} was refunded; the checkout must start again",
                error_code="PAYMENT_REFUNDED",
            )
        with calling("INVENTORY"):
            try:
                reservation = svc.inventory.reserve(
                    order_ref=order_ref(ctx),
                    items=[(line["product_id"], line["quantity"]) for line in lines],
                    idempotency_key=ctx.idempotency_key,
                )
            except OutOfStock as exc:
                raise PermanentError(str(exc), error_code="OUT_OF_STOCK") from exc
        names = {line["product_id"]: line["name"] for line in lines}
        return {
            "reservation_id": reservation.reservation_id,
            "updated_products": [
                {
                    "product_id": r["product_id"],
                    "name": names.get(r["product_id"]),
                    "quantity_reserved": r["quantity"],
                    "new_stock": r["new_stock"],
                }
                for r in reservation.items
            ],
            "total_items_reserved": sum(r["quantity"] for r in reservation.items),
            "updated_at": _now(),
        }


class CreateOrderHandler(StepHandler):
    """Record the order, linking the charge and the reservation; one order per step idempotency
    key."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        customer = ctx.context["customer_info"]
        cart = ctx.result_of("validate_cart")
        express = ctx.context.get("express_processing") or {}
        order = _services().orders.create(
            order_ref=order_ref(ctx),
            idempotency_key=ctx.idempotency_key,
            customer_email=customer["email"],
            total_cents=to_cents(cart["total"]),
            charge_id=ctx.result_of("process_payment")["payment_id"],
            reservation_id=ctx.result_of("update_inventory")["reservation_id"],
            delivery_days=int(express.get("delivery_days", STANDARD_DELIVERY_DAYS)),
        )
        return {
            "order_id": order.order_id,
            "order_number": order.order_number,
            "status": order.status,
            "total_amount": from_cents(order.total_cents),
            "customer_email": order.customer_email,
            "created_at": _iso(order.created_at),
            "estimated_delivery": order.estimated_delivery,
        }


class SendConfirmationHandler(StepHandler):
    """Mail the order confirmation once; an undeliverable address is permanent, a flaky mailer is
    not."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        customer = ctx.context["customer_info"]
        order = ctx.result_of("create_order")
        cart = ctx.result_of("validate_cart")
        express = ctx.context.get("express_processing")
        lines = "\n".join(
            f"  {i['quantity']} x {i['name']}  {i['line_total']:.2f}"
            for i in cart["validated_items"]
        )
        body = (
            f"Hello {customer['name']},\n\nthank you for your order"
            f" {order['order_number']}.\n\n{lines}\n  Total {order['total_amount']:.2f}"
            f" {cart['currency']}\n\n{'Express delivery' if express else 'Estimated delivery'}:"
            f" {order['estimated_delivery']}\n"
        )
        with calling("MAILER"):
            try:
                mail = _services().mailer.send(
                    order_ref=order_ref(ctx),
                    to=customer["email"],
                    subject=f"Your order {order['order_number']} is confirmed",
                    body=body,
                    idempotency_key=ctx.idempotency_key,
                )
            except InvalidRequest as exc:
                raise PermanentError(str(exc), error_code="INVALID_EMAIL") from exc
        return {
            "email_sent": True,
            "recipient": mail.recipient,
            "email_type": "order_confirmation",
            "sent_at": _now(),
            "message_id": mail.message_id,
        }


class RefundPaymentHandler(StepHandler):
    """`process_payment`'s compensation: refund the charge in full, once (a charge already
    refunded is a success: the undo's retry after a lost answer must not fail)."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        payment_id = (ctx.forward_results or {})["payment_id"]
        refunded = _services().payment.refund(
            payment_id, reason=f"checkout {order_ref(ctx)} failed"
        )
        return {"refunded_payment_id": payment_id, "refunded_now": refunded}


class RestoreStockHandler(StepHandler):
    """`update_inventory`'s compensation: put the reserved stock back, once."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        reservation_id = (ctx.forward_results or {})["reservation_id"]
        released = _services().inventory.release(reservation_id)
        return {"released_reservation_id": reservation_id, "released_now": released}
