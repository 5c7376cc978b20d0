"""The simulated services' own tables (`demo_*`), kept in the engine's database under their own
`MetaData`.

They are the services' side of the books: the demo reconciles charges against orders from these
rows, not from what the callers (the naive checkout or the workflow) believe happened. Every
mutating table is unique on (channel, idempotency key), which is how the services make a repeated
request harmless.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

products = Table(
    "demo_products",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(128), nullable=False),
    Column("price_cents", Integer, nullable=False),
    Column("stock", Integer, nullable=False),
    Column("active", Boolean, nullable=False),
)

charges = Table(
    "demo_charges",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("charge_id", String(40), nullable=False, unique=True),
    Column("channel", String(16), nullable=False),
    Column("idempotency_key", String(128), nullable=False),
    Column("order_ref", String(128), nullable=False, index=True),
    Column("amount_cents", Integer, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("method", String(32), nullable=False),
    Column("status", String(16), nullable=False),  # succeeded | refunded
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("refund_reason", Text, nullable=True),
    UniqueConstraint("channel", "idempotency_key"),
)

stock_reservations = Table(
    "demo_stock_reservations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("reservation_id", String(40), nullable=False, unique=True),
    Column("channel", String(16), nullable=False),
    Column("idempotency_key", String(128), nullable=False),
    Column("order_ref", String(128), nullable=False, index=True),
    Column("items", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Set when the stock went back (a compensation): a reservation is released at most once.
    Column("released_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("channel", "idempotency_key"),
)

orders = Table(
    "demo_orders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_number", String(32), nullable=False, unique=True),
    Column("channel", String(16), nullable=False),
    Column("idempotency_key", String(128), nullable=False),
    Column("order_ref", String(128), nullable=False, index=True),
    Column("customer_email", String(255), nullable=False),
    Column("total_cents", Integer, nullable=False),
    Column("charge_id", String(40), nullable=False),
    Column("reservation_id", String(40), nullable=True),
    Column("status", String(16), nullable=False),
    Column("estimated_delivery", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("channel", "idempotency_key"),
)

sent_mail = Table(
    "demo_sent_mail",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(64), nullable=False, unique=True),
    Column("channel", String(16), nullable=False),
    Column("idempotency_key", String(128), nullable=False),
    Column("order_ref", String(128), nullable=False, index=True),
    Column("recipient", String(255), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("channel", "idempotency_key"),
)


@dataclass(frozen=True)
class Product:
    id: int
    name: str
    price_cents: int
    stock: int
    active: bool = True


#: The catalog the demo sells; products 1 and 2 make the story's sample cart (2 x 29.99 + 1 x
#: 49.99).
CATALOG: tuple[Product, ...] = (
    Product(1, "Classic Cotton T-Shirt", 2999, 0),
    Product(2, "Canvas Sneakers", 4999, 0),
    Product(3, "Hooded Sweatshirt", 5999, 0),
    Product(4, "Baseball Cap", 1999, 0),
    Product(5, "Steel Water Bottle", 1499, 0),
    Product(6, "Travel Backpack", 8999, 0),
    Product(7, "Last Season's Scarf", 2499, 0, active=False),
)
DEFAULT_STOCK = 1_000_000
