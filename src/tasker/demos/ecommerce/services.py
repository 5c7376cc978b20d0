"""Simulated services of the e-commerce story: a payment gateway, an inventory service, an order
book, a mailer.

They keep their state in tables of the engine's own database (`demo_*`, their own `MetaData`, SQLite
or PostgreSQL), so that the demo can count what really happened from the services' side: a charge is
a row in `demo_charges` whether or not the caller ever heard about it. That is the point of the
story: a "failed" checkout may still have charged the card.

Faults are injected the way real dependencies fail:

- `unavailable`: the call fails before doing anything (HTTP 503);
- `timeout_after`: the call did its work (the card is charged, the stock reserved, the mail sent)
  but the caller gets a timeout, so it cannot tell that it did;
- `rate_limited`: the call is refused with a `retry_after` the caller should honour;
- declines and missing stock are permanent answers, not faults: retrying cannot change them.

Every mutating call takes an idempotency key and replays its first answer for the same key, as
payment gateways do: that is what lets the workflow retry a charge after a timeout without charging
twice.

Tables are in `tasker.demos.ecommerce.tables`, fault decisions in `tasker.demos.ecommerce.faults`.

The handlers find the services through `current()`, installed by `configure()`; one process serves
one configuration at a time, which is what a worker process of a real shop looks like.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Insert, Select, Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from tasker.demos.ecommerce.faults import DECLINED_TOKEN_PREFIX, Fault, FaultInjector, FaultSettings
from tasker.demos.ecommerce.tables import (
    CATALOG,
    DEFAULT_STOCK,
    Product,
    charges,
    metadata,
    orders,
    products,
    sent_mail,
    stock_reservations,
)

__all__ = [
    "CATALOG",
    "DECLINED_TOKEN_PREFIX",
    "DEFAULT_STOCK",
    "CardDeclined",
    "Charge",
    "Fault",
    "FaultInjector",
    "FaultSettings",
    "InvalidRequest",
    "Ledger",
    "Order",
    "OutOfStock",
    "Product",
    "RateLimited",
    "Reservation",
    "SentMail",
    "ServiceError",
    "ServiceTimeout",
    "ServiceUnavailable",
    "Services",
    "configure",
    "current",
    "reset_registry",
]


# -- errors ----------------------------------------------------------------------------------------
class ServiceError(Exception):
    """A service's answer other than success; `retryable` says whether asking again can change
    it."""

    retryable = True
    code = "SERVICE_ERROR"

    def __init__(self, service: str, message: str):
        super().__init__(f"{service}: {message}")
        self.service = service


class ServiceUnavailable(ServiceError):
    code = "UNAVAILABLE"


class ServiceTimeout(ServiceError):
    """No answer in time; the call may or may not have taken effect (the caller cannot tell)."""

    code = "TIMEOUT"


class RateLimited(ServiceError):
    code = "RATE_LIMITED"

    def __init__(self, service: str, message: str, retry_after: float):
        super().__init__(service, message)
        self.retry_after = retry_after


class CardDeclined(ServiceError):
    retryable = False
    code = "DECLINED"


class OutOfStock(ServiceError):
    retryable = False
    code = "OUT_OF_STOCK"


class InvalidRequest(ServiceError):
    """The request itself is wrong (an idempotency key reused for another amount, an undeliverable
    address)."""

    retryable = False
    code = "INVALID_REQUEST"


def _now() -> datetime:
    return datetime.now(UTC)


# -- the services ----------------------------------------------------------------------------------
@dataclass
class _Service:
    """What every simulated service shares: its tables' engine, the fault injector and the caller's
    channel.

    `channel` names who calls ("naive" or "engine"): both sides of the demo share the tables and the
    demo reconciles each side on its own rows.
    """

    engine: Engine
    faults: FaultInjector
    channel: str
    #: Reads go here; on SQLite the engine's writer takes the write lock even to read.
    reader: Engine | None = None
    name: str = field(default="service", init=False)

    @property
    def reads(self) -> Engine:
        return self.reader or self.engine

    def _enter(self, order_ref: str) -> Fault | None:
        """Apply latency and the faults that stop a call before it does anything; return the
        rest."""
        fault, latency = self.faults.next_fault(self.name, self.channel, order_ref)
        if latency:
            time.sleep(latency)
        if fault is Fault.UNAVAILABLE:
            raise ServiceUnavailable(self.name, "503 service unavailable")
        if fault is Fault.RATE_LIMITED:
            retry_after = self.faults.settings.rate_limit_retry_after
            raise RateLimited(
                self.name, f"429 too many requests; retry after {retry_after:g}s", retry_after
            )
        return fault

    def _leave(self, fault: Fault | None) -> None:
        if fault is Fault.TIMEOUT_AFTER:
            raise ServiceTimeout(self.name, "no response within the client timeout")

    def _once(
        self, table: Table, key: str, build: Callable[[Connection], dict[str, Any]]
    ) -> tuple[Any, bool]:
        """The row for (channel, key), or a new one with the values `build` returns; (row,
        replayed).

        Lookup, `build` (which may change other tables or raise to refuse) and insert share one
        transaction, so a refusal leaves nothing behind. Two concurrent first calls with one key
        cannot both insert: the loser's transaction is rolled back on the unique key and it returns
        the winner's row.
        """
        lookup, add = _statements(table)
        params = {"channel": self.channel, "key": key}
        try:
            with self.engine.begin() as conn:
                row = conn.execute(lookup, params).first()
                if row is not None:
                    return row, True
                values = build(conn)
                row = conn.execute(
                    add, {**values, "channel": self.channel, "idempotency_key": key}
                ).one()
                return row, False
        except IntegrityError:
            with self.reads.connect() as conn:
                row = conn.execute(lookup, params).first()
            if row is None:
                raise
            return row, True


_TAKE_STOCK = (
    update(products)
    .where(
        products.c.id == bindparam("product"),
        products.c.active.is_(True),
        products.c.stock >= bindparam("quantity"),
    )
    .values(stock=products.c.stock - bindparam("quantity"))
    .returning(products.c.stock)
)


@functools.cache
def _statements(table: Table) -> tuple[Select[Any], Insert]:
    """The lookup by (channel, key) and the insert of an idempotent table, built once (hot path)."""
    lookup = select(table).where(
        table.c.channel == bindparam("channel"), table.c.idempotency_key == bindparam("key")
    )
    return lookup, insert(table).returning(*table.c)


@dataclass(frozen=True)
class Charge:
    charge_id: str
    order_ref: str
    amount_cents: int
    currency: str
    method: str
    status: str
    created_at: datetime
    replayed: bool


@dataclass
class PaymentGateway(_Service):
    name: str = field(default="payment_gateway", init=False)

    def charge(
        self,
        *,
        order_ref: str,
        amount_cents: int,
        currency: str,
        method: str,
        token: str,
        idempotency_key: str,
    ) -> Charge:
        """Charge a card once per idempotency key; a repeated key returns the first charge."""
        fault = self._enter(order_ref)

        def new_charge(conn: Connection) -> dict[str, Any]:
            if self.faults.declines(token):
                raise CardDeclined(self.name, "card declined by the issuer (do_not_honor)")
            return {
                "charge_id": f"ch_{uuid.uuid4().hex[:24]}",
                "order_ref": order_ref,
                "amount_cents": amount_cents,
                "currency": currency,
                "method": method,
                "status": "succeeded",
                "created_at": _now(),
            }

        row, replayed = self._once(charges, idempotency_key, new_charge)
        if row.amount_cents != amount_cents:
            raise InvalidRequest(
                self.name, f"idempotency key {idempotency_key} was used for another amount"
            )
        self._leave(fault)
        return Charge(
            row.charge_id,
            row.order_ref,
            row.amount_cents,
            row.currency,
            row.method,
            row.status,
            row.created_at,
            replayed,
        )

    def status(self, charge_id: str) -> str | None:
        """A charge's status (`succeeded` or `refunded`), None for an unknown charge. Not
        fault-injected."""
        with self.reads.connect() as conn:
            return conn.execute(
                select(charges.c.status).where(charges.c.charge_id == charge_id)
            ).scalar()

    def refund(self, charge_id: str, reason: str) -> bool:
        """Refund a charge in full (compensation); True when this call refunded it."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(charges)
                .where(charges.c.charge_id == charge_id, charges.c.status == "succeeded")
                .values(status="refunded", refund_reason=reason)
            ).rowcount
        return bool(done)


@dataclass(frozen=True)
class Reservation:
    reservation_id: str
    order_ref: str
    items: list[dict[str, Any]]
    replayed: bool


@dataclass
class InventoryService(_Service):
    name: str = field(default="inventory_service", init=False)

    def products(self, product_ids: Iterable[int]) -> dict[int, Product]:
        """Catalog entries by id (missing ids are simply absent). Reads are not fault-injected."""
        ids = sorted(set(product_ids))
        with self.reads.connect() as conn:
            rows = conn.execute(select(products).where(products.c.id.in_(ids))).all()
        return {r.id: Product(r.id, r.name, r.price_cents, r.stock, r.active) for r in rows}

    def reserve(
        self, *, order_ref: str, items: Sequence[tuple[int, int]], idempotency_key: str
    ) -> Reservation:
        """Take `(product_id, quantity)` out of stock, all or nothing, once per idempotency key."""
        fault = self._enter(order_ref)
        wanted: Counter[int] = Counter()
        for product_id, quantity in items:
            wanted[int(product_id)] += int(quantity)

        def take_stock(conn: Connection) -> dict[str, Any]:
            if self.faults.stocks_out(order_ref):
                raise OutOfStock(self.name, "the last unit was sold to another shopper")
            lines = []
            # Rows are locked in product order, so two concurrent reservations cannot deadlock.
            for product_id, quantity in sorted(wanted.items()):
                left = conn.execute(
                    _TAKE_STOCK, {"product": product_id, "quantity": quantity}
                ).scalar()
                if left is None:
                    raise OutOfStock(
                        self.name, f"product {product_id}: fewer than {quantity} in stock"
                    )
                lines.append({"product_id": product_id, "quantity": quantity, "new_stock": left})
            return {
                "reservation_id": f"res_{uuid.uuid4().hex[:24]}",
                "order_ref": order_ref,
                "items": lines,
                "created_at": _now(),
            }

        row, replayed = self._once(stock_reservations, idempotency_key, take_stock)
        self._leave(fault)
        return Reservation(row.reservation_id, row.order_ref, row.items, replayed)

    def release(self, reservation_id: str) -> bool:
        """Put a reservation's stock back (compensation), once: True when this call released it.
        Not fault-injected."""
        with self.engine.begin() as conn:
            items = conn.execute(
                update(stock_reservations)
                .where(
                    stock_reservations.c.reservation_id == reservation_id,
                    stock_reservations.c.released_at.is_(None),
                )
                .values(released_at=_now())
                .returning(stock_reservations.c["items"])
            ).scalar()
            if items is None:
                return False
            for line in sorted(items, key=lambda i: i["product_id"]):
                conn.execute(
                    update(products)
                    .where(products.c.id == line["product_id"])
                    .values(stock=products.c.stock + line["quantity"])
                )
        return True

    def set_stock(self, product_id: int, stock: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(products).where(products.c.id == product_id).values(stock=stock))

    def restock(self, stock: int = DEFAULT_STOCK) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(products).values(stock=stock))


@dataclass(frozen=True)
class Order:
    order_id: int
    order_number: str
    order_ref: str
    status: str
    total_cents: int
    customer_email: str
    charge_id: str
    estimated_delivery: str
    created_at: datetime
    replayed: bool


@dataclass
class OrderBook(_Service):
    """The shop's own order table: no injected faults, but still one order per idempotency key."""

    name: str = field(default="order_book", init=False)

    def create(
        self,
        *,
        order_ref: str,
        idempotency_key: str,
        customer_email: str,
        total_cents: int,
        charge_id: str,
        reservation_id: str | None,
        delivery_days: int,
    ) -> Order:
        created = _now()
        digest = (
            hashlib.sha256(f"{self.channel}:{idempotency_key}".encode()).hexdigest()[:8].upper()
        )
        row, replayed = self._once(
            orders,
            idempotency_key,
            lambda conn: {
                "order_number": f"ORD-{created:%Y%m%d}-{digest}",
                "order_ref": order_ref,
                "customer_email": customer_email,
                "total_cents": total_cents,
                "charge_id": charge_id,
                "reservation_id": reservation_id,
                "status": "confirmed",
                "estimated_delivery": f"{created + timedelta(days=delivery_days):%B %d, %Y}",
                "created_at": created,
            },
        )
        return Order(
            row.id,
            row.order_number,
            row.order_ref,
            row.status,
            row.total_cents,
            row.customer_email,
            row.charge_id,
            row.estimated_delivery,
            row.created_at,
            replayed,
        )


@dataclass(frozen=True)
class SentMail:
    message_id: str
    recipient: str
    replayed: bool


@dataclass
class Mailer(_Service):
    name: str = field(default="mailer", init=False)

    def send(
        self, *, order_ref: str, to: str, subject: str, body: str, idempotency_key: str
    ) -> SentMail:
        """Send a mail once per idempotency key; `.invalid` addresses (RFC 2606) bounce
        permanently."""
        fault = self._enter(order_ref)
        if to.lower().endswith(".invalid"):
            raise InvalidRequest(self.name, f"undeliverable address {to}")
        row, replayed = self._once(
            sent_mail,
            idempotency_key,
            lambda conn: {
                "message_id": f"<{uuid.uuid4().hex}@mail.example.com>",
                "order_ref": order_ref,
                "recipient": to,
                "subject": subject,
                "body": body,
                "created_at": _now(),
            },
        )
        self._leave(fault)
        return SentMail(row.message_id, row.recipient, replayed)


# -- the bundle, reconciliation and the registry ---------------------------------------------------
@dataclass(frozen=True)
class Ledger:
    """One channel's books as the services see them, whatever the callers believe."""

    charges: int
    refunded: int
    orders: int
    mails: int
    charged_without_order: int
    double_charges: int
    orders_without_confirmation: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Services:
    """The four services of one channel, on one database and one fault injector."""

    def __init__(
        self,
        engine: Engine,
        faults: FaultInjector,
        channel: str = "engine",
        *,
        reader: Engine | None = None,
    ):
        self.engine = engine
        self.reader = reader or engine
        self.faults = faults
        self.channel = channel
        self.payment = PaymentGateway(engine, faults, channel, reader)
        self.inventory = InventoryService(engine, faults, channel, reader)
        self.orders = OrderBook(engine, faults, channel, reader)
        self.mailer = Mailer(engine, faults, channel, reader)

    def for_channel(self, channel: str) -> Services:
        """The same services (tables, faults) seen by another caller."""
        return Services(self.engine, self.faults, channel, reader=self.reader)

    def install(self, *, reset: bool = False, stock: int = DEFAULT_STOCK) -> None:
        """Create the demo tables (dropping them first with `reset`) and stock the catalog."""
        if reset:
            metadata.drop_all(self.engine)
        metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            known = set(conn.execute(select(products.c.id)).scalars())
            fresh = [p for p in CATALOG if p.id not in known]
            if fresh:
                conn.execute(
                    insert(products),
                    [
                        {
                            "id": p.id,
                            "name": p.name,
                            "price_cents": p.price_cents,
                            "stock": stock,
                            "active": p.active,
                        }
                        for p in fresh
                    ],
                )

    def ledger(self) -> Ledger:
        """Reconcile this channel's charges against its orders, from the services' own tables."""
        with self.reader.connect() as conn:
            paid = (
                conn.execute(
                    select(charges.c.order_ref).where(
                        charges.c.channel == self.channel, charges.c.status == "succeeded"
                    )
                )
                .scalars()
                .all()
            )
            refunded = (
                conn.execute(
                    select(charges.c.id).where(
                        charges.c.channel == self.channel, charges.c.status == "refunded"
                    )
                )
                .scalars()
                .all()
            )
            ordered = set(
                conn.execute(
                    select(orders.c.order_ref).where(orders.c.channel == self.channel)
                ).scalars()
            )
            mailed = (
                conn.execute(
                    select(sent_mail.c.order_ref).where(sent_mail.c.channel == self.channel)
                )
                .scalars()
                .all()
            )
        per_order = Counter(paid)
        return Ledger(
            charges=len(paid),
            refunded=len(refunded),
            orders=len(ordered),
            mails=len(mailed),
            charged_without_order=sum(1 for ref in per_order if ref not in ordered),
            double_charges=sum(n - 1 for n in per_order.values() if n > 1),
            orders_without_confirmation=len(ordered - set(mailed)),
        )

    def charges_for(self, order_ref: str) -> list[Mapping[str, Any]]:
        with self.reader.connect() as conn:
            return [
                dict(r._mapping)
                for r in conn.execute(
                    select(charges)
                    .where(charges.c.channel == self.channel, charges.c.order_ref == order_ref)
                    .order_by(charges.c.id)
                )
            ]


_registry_lock = threading.Lock()
_current: Services | None = None


def configure(
    engine: Engine,
    faults: FaultSettings | None = None,
    *,
    reader: Engine | None = None,
    channel: str = "engine",
    reset: bool = False,
    stock: int = DEFAULT_STOCK,
) -> Services:
    """Install the services the step handlers will use, on `engine` (usually `tasker.db.writer`).

    `reader` (usually `tasker.db.reader`) serves the reads: on SQLite the writer engine takes the
    write lock for every transaction, reads included. With `reset` the demo tables are dropped and
    recreated, so a run starts from an empty ledger.
    """
    global _current
    services = Services(engine, FaultInjector(faults), channel, reader=reader)
    services.install(reset=reset, stock=stock)
    with _registry_lock:
        _current = services
    return services


def current() -> Services:
    """The configured services; without `configure()`, fault-free ones on the engine's default
    database.

    The fallback lets `tasker run ecommerce/process_order` work from the command line on the same
    store.
    """
    global _current
    with _registry_lock:
        if _current is not None:
            return _current
    from tasker.store.database import Database

    default = Database(None, migrate=False)
    with _registry_lock:
        if _current is None:
            services = Services(default.writer, FaultInjector(), "engine", reader=default.reader)
            services.install()
            _current = services
        return _current


def reset_registry() -> None:
    """Forget the configured services (tests, and the demo when it is done with its database)."""
    global _current
    with _registry_lock:
        _current = None
