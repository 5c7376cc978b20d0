"""The story's "before": the monolithic `CheckoutService#process_order`, rewritten in Python for the
demo.

One function does everything in sequence against the same simulated services as the workflow, with
the same faults, and no retries: any exception propagates to the caller, exactly like the story's
`rescue => e; logger.error; raise`. It exists to be measured, not imitated. Its failure modes are
the ones the story lists:

- the gateway times out after charging: the customer is charged, the checkout "fails", no order
  exists;
- the inventory call fails after the charge: charged, no order;
- the mailer fails after the order is created: the order exists but the checkout reports a failure
  and the customer never hears about it.

It uses fresh idempotency keys per call (it never retries, so it has nothing to replay) and the
order's `checkout_id` as the order reference, so the services inject the same first-attempt faults
into it as into the workflow's steps for the same order.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tasker.demos.ecommerce.pricing import PricedLine, price_lines, to_cents
from tasker.demos.ecommerce.services import Order, Services

STANDARD_DELIVERY_DAYS = 7
EXPRESS_DELIVERY_DAYS = {"express": 2, "overnight": 1}


class CheckoutError(Exception):
    """What the naive checkout raises for a cart it refuses (the story's `raise "Invalid cart"`)."""


def process_order(services: Services, order: dict[str, Any]) -> Order:
    """Validate, price, charge, reserve, record and confirm one order; the first failure
    propagates."""
    ref = str(order["checkout_id"])
    cart_items: list[dict[str, Any]] = order["cart_items"]
    payment_info: dict[str, Any] = order["payment_info"]
    customer: dict[str, Any] = order["customer_info"]

    # Step 1: validate the cart
    catalog = services.inventory.products(int(item["product_id"]) for item in cart_items)
    lines = []
    for item in cart_items:
        product = catalog.get(int(item["product_id"]))
        if product is None or not product.active:
            raise CheckoutError(f"Invalid cart: product {item['product_id']}")
        lines.append(
            PricedLine(
                product.id, product.name, Decimal(product.price_cents) / 100, int(item["quantity"])
            )
        )

    # Step 2: calculate totals
    totals = price_lines(lines)

    # Step 3: process payment
    charge = services.payment.charge(
        order_ref=ref,
        amount_cents=to_cents(totals.total),
        currency=payment_info.get("currency", "USD"),
        method=payment_info["method"],
        token=payment_info["token"],
        idempotency_key=f"{ref}:charge",
    )

    # Step 4: update inventory
    reservation = services.inventory.reserve(
        order_ref=ref,
        items=[(line.product_id, line.quantity) for line in lines],
        idempotency_key=f"{ref}:reserve",
    )

    # Step 5: create the order
    created = services.orders.create(
        order_ref=ref,
        idempotency_key=f"{ref}:order",
        customer_email=customer["email"],
        total_cents=to_cents(totals.total),
        charge_id=charge.charge_id,
        reservation_id=reservation.reservation_id,
        delivery_days=EXPRESS_DELIVERY_DAYS.get(
            order.get("priority", "standard"), STANDARD_DELIVERY_DAYS
        ),
    )

    # Step 6: send the confirmation
    services.mailer.send(
        order_ref=ref,
        to=customer["email"],
        subject=f"Your order {created.order_number} is confirmed",
        body=f"Thank you for your order {created.order_number}.",
        idempotency_key=f"{ref}:mail",
    )
    return created
