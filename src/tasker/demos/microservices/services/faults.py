"""Fault injection for the example services: the ways real dependencies fail, switchable at run
time.

A service's faults are set through `POST /admin/faults` (merged over the current ones) and cleared
with `DELETE /admin/faults`. Every fault is decided per request, before the request reaches the
service's own code, except `error_after_work`, which lets the work happen and then answers with an
error: the caller cannot tell whether its call took effect, which is what idempotency keys exist
for.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DownMode = Literal["unavailable", "refuse"]


class FaultSpec(BaseModel):
    """The body of `POST /admin/faults`. Fields left out keep their current value."""

    model_config = ConfigDict(extra="forbid")

    down: bool | None = Field(
        None, description="Down until DELETE /admin/faults (or the runner's resume())."
    )
    down_seconds: float | None = Field(
        None, gt=0, description="Down for this many seconds, then healthy again."
    )
    down_mode: DownMode | None = Field(
        None,
        description="'unavailable': answer 503; 'refuse': stop listening (connection refused).",
    )
    rate_limit_requests: int | None = Field(None, ge=0, description="The next N requests get 429.")
    rate_limit_seconds: float | None = Field(
        None, ge=0, description="Every request for N seconds gets 429."
    )
    retry_after: float | None = Field(
        None, ge=0, description="Retry-After (seconds) on 429 and 503 answers."
    )
    latency_ms: float | None = Field(
        None, ge=0, description="Added to every request before it is handled."
    )
    latency_requests: int | None = Field(
        None, ge=0, description="Only the next N requests get latency_ms (0: every request)."
    )
    error_rate: float | None = Field(
        None, ge=0, le=1, description="Share of requests answered with error_status."
    )
    error_status: int | None = Field(
        None, ge=500, le=599, description="Status of error_rate failures (500)."
    )
    error_after_work: bool | None = Field(
        None,
        description=(
            "error_rate failures happen after the work was done and stored (a lost response)."
        ),
    )
    seed: int | None = Field(
        None, description="Seed of the error_rate draws, for reproducible runs."
    )

    @model_validator(mode="after")
    def _one_down(self) -> FaultSpec:
        if self.down and self.down_seconds is not None:
            raise ValueError("give either down (until cleared) or down_seconds, not both")
        return self


@dataclass(frozen=True)
class Verdict:
    """What the fault layer decided for one request. `status` None: let it through."""

    status: int | None = None
    code: str = ""
    message: str = ""
    retry_after: float | None = None
    latency: float = 0.0
    fail_after_work: int | None = None


class Faults:
    """The current faults of one service, thread-safe; `decide()` is called once per request."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._lock = threading.Lock()
        self._rng = random.Random()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self.down_until: float | None = None  # monotonic deadline; inf: until cleared
            self.down_mode: DownMode = "unavailable"
            self.rate_limited_requests = 0
            self.rate_limited_until: float | None = None
            self.retry_after: float | None = None
            self.latency = 0.0
            self.latency_requests = 0
            self.error_rate = 0.0
            self.error_status = 500
            self.error_after_work = False

    def apply(self, spec: FaultSpec) -> None:
        now = time.monotonic()
        with self._lock:
            if spec.down is not None:
                self.down_until = float("inf") if spec.down else None
            if spec.down_seconds is not None:
                self.down_until = now + spec.down_seconds
            if spec.down_mode is not None:
                self.down_mode = spec.down_mode
            if spec.rate_limit_requests is not None:
                self.rate_limited_requests = spec.rate_limit_requests
            if spec.rate_limit_seconds is not None:
                self.rate_limited_until = (
                    now + spec.rate_limit_seconds if spec.rate_limit_seconds else None
                )
            if spec.retry_after is not None:
                self.retry_after = spec.retry_after
            if spec.latency_ms is not None:
                self.latency = spec.latency_ms / 1000
            if spec.latency_requests is not None:
                self.latency_requests = spec.latency_requests
            if spec.error_rate is not None:
                self.error_rate = spec.error_rate
            if spec.error_status is not None:
                self.error_status = spec.error_status
            if spec.error_after_work is not None:
                self.error_after_work = spec.error_after_work
            if spec.seed is not None:
                self._rng.seed(spec.seed)

    def is_down(self) -> bool:
        with self._lock:
            return self._down(time.monotonic())

    def _down(self, now: float) -> bool:
        if self.down_until is not None and now >= self.down_until:
            self.down_until = None
        return self.down_until is not None

    def decide(self) -> Verdict:
        now = time.monotonic()
        with self._lock:
            latency = self.latency
            if latency and self.latency_requests:
                self.latency_requests -= 1
                if not self.latency_requests:  # that was the last slow one
                    self.latency = 0.0
            if self._down(now):
                return Verdict(
                    503,
                    "unavailable",
                    f"{self.service} is down (injected fault)",
                    self.retry_after,
                    latency,
                )
            if self.rate_limited_until is not None and now >= self.rate_limited_until:
                self.rate_limited_until = None
            if self.rate_limited_requests > 0 or self.rate_limited_until is not None:
                self.rate_limited_requests = max(0, self.rate_limited_requests - 1)
                retry_after = self.retry_after if self.retry_after is not None else 1.0
                return Verdict(
                    429,
                    "rate_limited",
                    f"{self.service}: too many requests (injected fault)",
                    retry_after,
                    latency,
                )
            if self.error_rate and self._rng.random() < self.error_rate:
                message = f"{self.service}: internal error (injected fault)"
                if self.error_after_work:
                    return Verdict(
                        latency=latency, fail_after_work=self.error_status, message=message
                    )
                return Verdict(self.error_status, "internal_error", message, None, latency)
            return Verdict(latency=latency)

    def describe(self) -> dict[str, Any]:
        """The current faults as JSON (what `GET /admin/faults` shows)."""
        now = time.monotonic()
        with self._lock:
            down = self._down(now)
            until = self.down_until
            return {
                "down": down,
                "down_mode": self.down_mode,
                "down_remaining_seconds": (
                    None
                    if not down or until == float("inf") or until is None
                    else round(until - now, 3)
                ),
                "rate_limit_requests": self.rate_limited_requests,
                "rate_limited": (
                    self.rate_limited_until is not None and now < self.rate_limited_until
                ),
                "retry_after": self.retry_after,
                "latency_ms": self.latency * 1000,
                "latency_requests": self.latency_requests,
                "error_rate": self.error_rate,
                "error_status": self.error_status,
                "error_after_work": self.error_after_work,
            }
