"""The systems both teams call, simulated in memory: a payment ledger with its gateway, a support
desk, an outbox.

They live in one process (`current()`), which is what the example and its tests run; a real
deployment has real services here. What matters is kept faithful: a gateway refund is idempotent on
the key the caller sends (a replayed request returns the first refund, never a second one), a refund
can never exceed what is left of the payment, and the gateway can be told to fail its next calls.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import date


class GatewayUnavailable(Exception):
    """The gateway did not answer: the caller may try again with the same idempotency key."""


class RefundRefused(Exception):
    """The ledger refuses the refund for good (unknown payment, more than is refundable)."""


@dataclass
class Payment:
    payment_id: str
    customer_email: str
    amount_cents: int
    captured_on: date
    refunded_cents: int = 0

    @property
    def refundable_cents(self) -> int:
        return self.amount_cents - self.refunded_cents


@dataclass(frozen=True)
class Refund:
    refund_id: str
    payment_id: str
    amount_cents: int
    reason: str


@dataclass
class Ticket:
    ticket_id: str
    customer_email: str
    status: str = "open"
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Message:
    sender: str
    to: str
    subject: str
    key: str


class World:
    """Every simulated system, behind one lock (handlers run on several threads at once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.payments: dict[str, Payment] = {}
        self.refunds: dict[str, Refund] = {}  # by the caller's idempotency key
        self.ledger_entries: dict[str, str] = {}  # refund id -> payment id, once recorded
        self.tickets: dict[str, Ticket] = {}
        self.outbox: dict[str, Message] = {}  # by key: a resent message replaces itself
        self.gateway_failures_left = 0
        self.gateway_calls = 0

    # -- payments team's systems -------------------------------------------------------------------
    def add_payment(self, payment: Payment) -> None:
        with self._lock:
            self.payments[payment.payment_id] = payment

    def payment(self, payment_id: str) -> Payment | None:
        with self._lock:
            return self.payments.get(payment_id)

    def fail_gateway(self, times: int) -> None:
        with self._lock:
            self.gateway_failures_left = times

    def gateway_refund(
        self, payment_id: str, amount_cents: int, reason: str, *, key: str
    ) -> Refund:
        """Refund through the gateway; the same key returns the same refund however often it is
        sent."""
        with self._lock:
            self.gateway_calls += 1
            if self.gateway_failures_left > 0:
                self.gateway_failures_left -= 1
                raise GatewayUnavailable("payment gateway timed out")
            if key in self.refunds:
                return self.refunds[key]
            pay = self.payments.get(payment_id)
            if pay is None:
                raise RefundRefused(f"no payment {payment_id}")
            issued = sum(
                r.amount_cents for r in self.refunds.values() if r.payment_id == payment_id
            )
            if amount_cents > pay.amount_cents - issued:
                raise RefundRefused(
                    f"{amount_cents} cents is more than the {pay.amount_cents - issued} cents left "
                    f"to refund on {payment_id}"
                )
            refund = Refund(f"re_{len(self.refunds) + 1:05d}", payment_id, amount_cents, reason)
            self.refunds[key] = refund
            return refund

    def record_refund(self, refund: Refund) -> int:
        """Book a refund against its payment once; returns what is left to refund."""
        with self._lock:
            pay = self.payments[refund.payment_id]
            if refund.refund_id not in self.ledger_entries:
                self.ledger_entries[refund.refund_id] = refund.payment_id
                pay.refunded_cents += refund.amount_cents
            return pay.refundable_cents

    def refund_by_id(self, refund_id: str) -> Refund | None:
        with self._lock:
            return next((r for r in self.refunds.values() if r.refund_id == refund_id), None)

    # -- customer success team's systems -----------------------------------------------------------
    def open_ticket(self, ticket: Ticket) -> None:
        with self._lock:
            self.tickets[ticket.ticket_id] = ticket

    def ticket(self, ticket_id: str) -> Ticket | None:
        with self._lock:
            return self.tickets.get(ticket_id)

    def close_ticket(self, ticket_id: str, note: str) -> Ticket:
        with self._lock:
            t = self.tickets[ticket_id]
            if t.status != "refunded":
                t.status = "refunded"
                t.notes.append(note)
            return t

    # -- shared ------------------------------------------------------------------------------------
    def send(self, message: Message) -> None:
        with self._lock:
            self.outbox[message.key] = message


_world = World()


def current() -> World:
    return _world


def reset() -> World:
    """Forget everything (tests and the demo start from an empty world and add what they need)."""
    global _world
    _world = World()
    return _world
