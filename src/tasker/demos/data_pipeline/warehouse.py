"""The pipeline's source system: a synthetic warehouse of customers, products and orders.

Every table is a pure function of the seed (and, for orders, the date range), so a pipeline run is
reproducible: the same context extracts the same records on every attempt and every machine, and a
test can recompute any aggregate from the records the extract steps stored. The three tables are
generated independently, as three source systems would be, yet they agree: an order's customer
exists and its unit price is the catalog price, because the order generator derives both from the
same seed.

Money is in integer cents throughout, so sums are exact.
"""

from __future__ import annotations

import random
from datetime import date, timedelta
from typing import Any

SEGMENTS = ("consumer", "business")
SEGMENT_WEIGHTS = (7, 3)
COUNTRIES = ("US", "US", "US", "CA", "GB", "DE", "FR")
CATEGORIES = ("apparel", "footwear", "electronics", "home", "books")
ADJECTIVES = ("Classic", "Premium", "Everyday", "Compact", "Deluxe", "Eco", "Smart", "Vintage")
NOUNS = {
    "apparel": ("T-Shirt", "Hoodie", "Jacket", "Scarf"),
    "footwear": ("Sneakers", "Boots", "Sandals"),
    "electronics": ("Headphones", "Charger", "Speaker", "Keyboard"),
    "home": ("Mug", "Lamp", "Blanket", "Planter"),
    "books": ("Cookbook", "Novel", "Atlas"),
}
REFUND_RATE = 0.08


def _rng(seed: int, table: str) -> random.Random:
    """One generator per table, so extracting one table never shifts another's records."""
    return random.Random(f"customer-analytics:{seed}:{table}")


def customers(seed: int, count: int) -> list[dict[str, Any]]:
    rng = _rng(seed, "customers")
    out = []
    for i in range(1, count + 1):
        out.append(
            {
                "customer_id": i,
                "name": f"Customer {i:04d}",
                "email": f"customer{i:04d}@example.com",
                "segment": rng.choices(SEGMENTS, SEGMENT_WEIGHTS)[0],
                "country": rng.choice(COUNTRIES),
            }
        )
    return out


def products(seed: int, count: int) -> list[dict[str, Any]]:
    rng = _rng(seed, "products")
    out = []
    for i in range(1, count + 1):
        category = CATEGORIES[(i - 1) % len(CATEGORIES)]
        price = rng.randrange(500, 20_000, 25)
        out.append(
            {
                "product_id": i,
                "name": f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS[category])}",
                "category": category,
                "price_cents": price,
                "cost_cents": price * rng.randint(40, 75) // 100,
            }
        )
    return out


def orders(
    seed: int, count: int, start: date, end: date, *, customer_count: int, product_count: int
) -> list[dict[str, Any]]:
    """`count` orders placed between `start` and `end` (inclusive), by existing customers, at
    catalog prices.

    A fifth of the customers place most orders, as in real shops, so repeat-purchase figures mean
    something.
    """
    if end < start:
        raise ValueError(f"end date {end} is before start date {start}")
    rng = _rng(seed, f"orders:{start}:{end}")
    prices = {p["product_id"]: p["price_cents"] for p in products(seed, product_count)}
    regulars = max(1, customer_count // 5)
    days = (end - start).days
    out = []
    for i in range(1, count + 1):
        customer = (
            rng.randint(1, regulars) if rng.random() < 0.6 else rng.randint(1, customer_count)
        )
        product = rng.randint(1, product_count)
        quantity = rng.choice((1, 1, 1, 2, 2, 3, 4))
        out.append(
            {
                "order_id": i,
                "customer_id": customer,
                "product_id": product,
                "quantity": quantity,
                "unit_price_cents": prices[product],
                "total_cents": prices[product] * quantity,
                "status": "refunded" if rng.random() < REFUND_RATE else "completed",
                "placed_on": (start + timedelta(days=rng.randint(0, days))).isoformat(),
            }
        )
    return out
