"""Cart pricing shared by the workflow's `validate_cart` step, the naive checkout and the demo's
order generator.

Money is computed in `Decimal` and rounded half-up to cents, so the three callers agree to the cent:
the payment step refuses a charge whose amount differs from the priced cart, and the demo must
produce orders whose `payment_info.amount` passes that check.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
TAX_RATE = Decimal("0.08")
POUNDS_PER_ITEM = Decimal("0.5")
#: (upper weight bound in lb, shipping price); the last bracket has no bound.
SHIPPING_BRACKETS: tuple[tuple[Decimal | None, Decimal], ...] = (
    (Decimal("2"), Decimal("5.99")),
    (Decimal("10"), Decimal("9.99")),
    (None, Decimal("14.99")),
)


def money(value: Decimal | float | int | str) -> Decimal:
    """A value as a Decimal rounded to cents (floats go through `str` so 29.99 stays 29.99)."""
    return Decimal(str(value)).quantize(CENT, rounding=ROUND_HALF_UP)


def to_cents(value: Decimal | float | int | str) -> int:
    return int(money(value) * 100)


def from_cents(cents: int) -> float:
    """Cents as the float the JSON results carry (124.76, not Decimal('124.76'))."""
    return float(Decimal(cents) / 100)


@dataclass(frozen=True)
class PricedLine:
    product_id: int
    name: str
    price: Decimal
    quantity: int

    @property
    def line_total(self) -> Decimal:
        return money(self.price * self.quantity)


@dataclass(frozen=True)
class CartTotals:
    subtotal: Decimal
    tax: Decimal
    shipping: Decimal
    total: Decimal
    item_count: int


def shipping_for(item_count: int) -> Decimal:
    """Shipping by weight: half a pound per item, priced by bracket."""
    weight = POUNDS_PER_ITEM * item_count
    for bound, price in SHIPPING_BRACKETS:
        if bound is None or weight <= bound:
            return price
    raise AssertionError("the last shipping bracket has no bound")  # pragma: no cover


def price_lines(lines: Iterable[PricedLine]) -> CartTotals:
    """Subtotal, 8 % tax rounded to cents, shipping by weight and total of priced cart lines."""
    lines = list(lines)
    subtotal = money(sum((line.line_total for line in lines), Decimal(0)))
    item_count = sum(line.quantity for line in lines)
    tax = money(subtotal * TAX_RATE)
    shipping = shipping_for(item_count)
    return CartTotals(
        subtotal=subtotal,
        tax=tax,
        shipping=shipping,
        total=money(subtotal + tax + shipping),
        item_count=item_count,
    )
