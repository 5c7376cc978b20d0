"""Fault injection for the simulated services: which call fails, how, and how slowly.

Decisions are a seeded hash of (service, order reference, n-th call of that service for that order)
rather than draws from a shared random stream. A run is therefore reproducible whatever the thread
scheduling, and the naive checkout and the workflow meet exactly the same first-attempt faults for
the same orders, which makes the comparison fair. Declines are a seeded hash of the card token, so
both sides see the same declined cards.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, deque
from dataclasses import dataclass, replace
from enum import StrEnum


class Fault(StrEnum):
    UNAVAILABLE = "unavailable"
    TIMEOUT_AFTER = "timeout_after"
    RATE_LIMITED = "rate_limited"


#: How a transient failure splits between the three kinds (cumulative thresholds of a second draw).
FAULT_MIX: tuple[tuple[float, Fault], ...] = (
    (0.4, Fault.UNAVAILABLE),
    (0.8, Fault.TIMEOUT_AFTER),
    (1.0, Fault.RATE_LIMITED),
)
DECLINED_TOKEN_PREFIX = "tok_declined"


@dataclass(frozen=True)
class FaultSettings:
    """How unreliable the services are.

    `transient_failure_rate` is the probability that any one call fails transiently; `decline_rate`
    the share of card tokens the gateway declines; `stockout_rate` the share of orders whose stock
    is gone by the time they reserve it (another shopper took the last unit after this one was
    charged); each call sleeps up to `max_latency_ms`.
    """

    transient_failure_rate: float = 0.0
    decline_rate: float = 0.0
    stockout_rate: float = 0.0
    max_latency_ms: float = 0.0
    seed: int = 0
    rate_limit_retry_after: float = 1.0

    def __post_init__(self) -> None:
        for name in ("transient_failure_rate", "decline_rate", "stockout_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.max_latency_ms < 0 or self.rate_limit_retry_after < 0:
            raise ValueError("max_latency_ms and rate_limit_retry_after must be >= 0")

    def without_faults(self) -> FaultSettings:
        """The same settings with no transient failures (declines stay: they are the customer's
        card)."""
        return replace(self, transient_failure_rate=0.0)


def _unit(*parts: object) -> float:
    """A uniform number in [0, 1) from a hash of `parts`: reproducible and independent of call
    order."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class FaultInjector:
    """Decides, thread-safely, which calls fail; tests can also script the next outcomes of a
    service."""

    def __init__(self, settings: FaultSettings | None = None):
        self._lock = threading.Lock()
        self._settings = settings or FaultSettings()
        self._scripts: dict[str, deque[Fault | None]] = {}
        self._calls: Counter[tuple[str, str, str]] = Counter()

    @property
    def settings(self) -> FaultSettings:
        return self._settings

    def update(self, settings: FaultSettings) -> None:
        with self._lock:
            self._settings = settings

    def disable(self) -> None:
        """Switch transient failures off and drop scripted ones (the dependency is healthy
        again)."""
        with self._lock:
            self._settings = self._settings.without_faults()
            self._scripts.clear()

    def script(self, service: str, *outcomes: Fault | None) -> None:
        """Force the next calls of `service` to these outcomes (None = succeed), before random
        faults apply."""
        with self._lock:
            self._scripts.setdefault(service, deque()).extend(outcomes)

    def next_fault(self, service: str, channel: str, order_ref: str) -> tuple[Fault | None, float]:
        """The fault (or None) of this call and its latency in seconds."""
        with self._lock:
            s = self._settings
            n = self._calls[(channel, service, order_ref)]
            self._calls[(channel, service, order_ref)] += 1
            queue = self._scripts.get(service)
            scripted = bool(queue)
            forced = queue.popleft() if queue else None
        latency = _unit(s.seed, service, order_ref, n, "latency") * s.max_latency_ms / 1000.0
        if scripted:
            return forced, latency
        if _unit(s.seed, service, order_ref, n, "fault") >= s.transient_failure_rate:
            return None, latency
        kind = _unit(s.seed, service, order_ref, n, "kind")
        return next(f for bound, f in FAULT_MIX if kind < bound), latency

    def stocks_out(self, order_ref: str) -> bool:
        """Whether this order's stock is gone when it reserves it, at the seeded stock-out rate
        (the same orders on both sides of a demo)."""
        s = self._settings
        return _unit(s.seed, "stockout", order_ref) < s.stockout_rate

    def declines(self, token: str) -> bool:
        """Whether the gateway declines this card: test tokens always, others at the seeded decline
        rate."""
        s = self._settings
        return (
            token.startswith(DECLINED_TOKEN_PREFIX)
            or _unit(s.seed, "decline", token) < s.decline_rate
        )
