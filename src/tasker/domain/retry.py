"""Retry policy: when a failed attempt may run again, and after how long.

Pure functions so that backoff is property-tested without a clock. Defaults keep Tasker's feel:
three attempts, 1 s base doubling to a 30 s cap, a server's `retry_after` honoured up to 300 s.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

DEFAULT_RETRY_LIMIT = 3
#: No retry waits longer than a week: longer is an outage for an operator, not a backoff.
MAX_DELAY_SECONDS = 7 * 24 * 3600.0


def may_retry(*, retryable: bool, retry_limit: int, attempts: int) -> bool:
    """Whether a step that has made `attempts` attempts gets another: `retry_limit` counts attempts
    in all, the first included. Also the rule for a step whose worker lost its lease."""
    return retryable and attempts < retry_limit


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff of one step. `retry_limit` counts attempts in all, so 3 means one try and two
    retries."""

    retry_limit: int = DEFAULT_RETRY_LIMIT
    retryable: bool = True
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 30.0
    jitter: float = 0.1
    max_server_delay_seconds: float = 300.0

    def __post_init__(self) -> None:
        numbers = (
            self.backoff_base_seconds,
            self.backoff_max_seconds,
            self.jitter,
            self.max_server_delay_seconds,
        )
        if not all(math.isfinite(x) for x in numbers):
            raise ValueError(
                "backoff seconds, jitter and max_server_delay_seconds must be finite numbers"
            )
        if self.retry_limit < 1:
            raise ValueError(
                "retry_limit must be at least 1 (it counts attempts, including the first)"
            )
        if self.backoff_base_seconds < 0 or self.backoff_max_seconds < 0:
            raise ValueError("backoff seconds must be >= 0")
        if max(self.backoff_max_seconds, self.max_server_delay_seconds) > MAX_DELAY_SECONDS:
            raise ValueError(f"delays are capped at {MAX_DELAY_SECONDS:g} seconds (7 days)")
        if self.backoff_max_seconds < self.backoff_base_seconds:
            raise ValueError("backoff_max_seconds must be >= backoff_base_seconds")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")
        if self.max_server_delay_seconds < 0:
            raise ValueError("max_server_delay_seconds must be >= 0")

    @property
    def max_attempts(self) -> int:
        return self.retry_limit if self.retryable else 1

    def may_retry(self, attempts: int) -> bool:
        """Whether a step that has now failed `attempts` times gets another attempt."""
        return may_retry(retryable=self.retryable, retry_limit=self.retry_limit, attempts=attempts)

    def exponential_delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay after failed attempt number `attempt` (1-based): base * 2**(attempt-1), jittered,
        capped."""
        try:
            raw = min(
                math.ldexp(self.backoff_base_seconds, max(attempt - 1, 0)), self.backoff_max_seconds
            )
        except (
            OverflowError
        ):  # 2**(attempt-1) passed the largest float, long after reaching the cap
            raw = self.backoff_max_seconds
        if self.jitter and raw > 0:
            spread = (rng or random).uniform(-self.jitter, self.jitter)
            raw = raw * (1.0 + spread)
        return max(0.0, min(raw, self.backoff_max_seconds))

    def delay(
        self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before the next attempt; a server-requested delay wins, capped for
        safety."""
        if retry_after is not None:
            return max(0.0, min(float(retry_after), self.max_server_delay_seconds))
        return self.exponential_delay(attempt, rng)

    def to_dict(self) -> dict[str, Any]:
        return {
            "retry_limit": self.retry_limit,
            "retryable": self.retryable,
            "backoff_base_seconds": self.backoff_base_seconds,
            "backoff_max_seconds": self.backoff_max_seconds,
            "jitter": self.jitter,
            "max_server_delay_seconds": self.max_server_delay_seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetryPolicy:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
