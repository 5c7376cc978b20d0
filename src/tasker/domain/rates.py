"""Rate limits per time window: at most `limit` steps of a dependent system start per `per`.

The limit counts starts (claims: each attempt of a step is one) in a sliding window, shared by
every worker through `tasker_rate_starts`: a claim may start a step only while fewer than `limit`
steps started in the last `window` seconds. The window is `per` plus a guard (10% of it, at most a
quarter of a second): a claim is not the handler's first line, and a handler claimed at the end of
one window may start its work a few milliseconds later than one claimed at the start of the next;
the guard keeps the starts a service sees under the limit too.

Starts are also spread over the window: at most `burst` (a tenth of the limit, at least one) in
any `burst / limit` of it. Fifty starts claimed at once would reach the service over whatever time
their handlers took to begin (a busy machine: a few hundred milliseconds), some of them inside the
next window's first fifty; spread out, a late handler moves one start, not fifty.

A due step over the limit is deferred, not failed: its `run_at` moves to the time a slot frees
for it, with no attempt spent. Deferred steps get times one `pace` (`window / limit`) apart from the
system's `horizon` (the next time not yet handed out), so a backlog of ten thousand comes back at
the rate the limit allows instead of all at once, and each step is deferred about once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

#: The windows a limit may be given per, in seconds.
PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
#: The guard added to a window, as a share of it and at most.
GUARD_SHARE = 0.1
GUARD_MAX_SECONDS = 0.25
MAX_LIMIT = 1_000_000


@dataclass(frozen=True)
class RateLimit:
    """At most `limit` starts per `per_seconds` (1, 60 or 3600)."""

    limit: int
    per_seconds: float

    @classmethod
    def parse(cls, spec: Any) -> RateLimit:
        """`{limit: 100, per: minute}` (YAML, API) or `100/minute` (CLI); `ValueError` says what is
        wrong and what is expected."""
        if isinstance(spec, RateLimit):
            return spec
        if isinstance(spec, str):
            count, sep, per = spec.partition("/")
            if not sep:
                raise ValueError(f"'{spec}' is not a rate; write it as 100/minute")
            try:
                limit: Any = int(count.strip())
            except ValueError:
                raise ValueError(f"'{count}' is not a whole number; write 100/minute") from None
            spec = {"limit": limit, "per": per.strip()}
        if not isinstance(spec, dict):
            raise ValueError("give a rate limit as {limit: 100, per: minute}")
        unknown = sorted(set(spec) - {"limit", "per"})
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)}; use limit and per")
        limit = spec.get("limit")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT:,}, not {limit!r}")
        per = spec.get("per", "second")
        if per not in PERIODS:
            raise ValueError(f"per must be one of {', '.join(PERIODS)}, not {per!r}")
        return cls(limit, PERIODS[per])

    @property
    def per(self) -> str:
        """The period's name (`second`, `minute`, `hour`)."""
        return next((n for n, s in PERIODS.items() if s == self.per_seconds), "second")

    @property
    def window(self) -> timedelta:
        """The sliding window starts are counted in: the period and its guard."""
        guard = min(self.per_seconds * GUARD_SHARE, GUARD_MAX_SECONDS)
        return timedelta(seconds=self.per_seconds + guard)

    @property
    def burst(self) -> int:
        """Starts allowed together: a tenth of the limit, at least one."""
        return max(1, -(-self.limit // 10))

    @property
    def burst_window(self) -> timedelta:
        """The share of the window `burst` starts may take at most."""
        return self.window * self.burst / self.limit

    @property
    def pace(self) -> timedelta:
        """The time between two deferred steps' slots."""
        return self.window / self.limit

    def describe(self) -> str:
        return f"{self.limit}/{self.per}"


def started_in_window(rate: RateLimit, starts: Sequence[datetime], now: datetime) -> int:
    """How many of these starts count against the limit at `now`."""
    since = now - rate.window
    return sum(1 for t in starts if t > since)


def room(rate: RateLimit, starts: Sequence[datetime], now: datetime) -> int:
    """How many steps may start now: room in the window, and in its burst."""
    in_window = started_in_window(rate, starts, now)
    since = now - rate.burst_window
    in_burst = sum(1 for t in starts if t > since)
    return max(0, min(rate.limit - in_window, rate.burst - in_burst))


def first_free(rate: RateLimit, starts: Sequence[datetime], now: datetime) -> datetime:
    """When a step may start next: now if there is room, else when the oldest start that fills
    the window (or the burst) leaves it."""
    free = now
    for span, most in ((rate.window, rate.limit), (rate.burst_window, rate.burst)):
        counted = sorted(t for t in starts if t > now - span)
        if len(counted) >= most:
            free = max(free, counted[len(counted) - most] + span)
    return free


def deferral_times(
    rate: RateLimit,
    starts: Sequence[datetime],
    horizon: datetime | None,
    now: datetime,
    n: int,
) -> tuple[list[datetime], datetime]:
    """When each of `n` deferred steps comes due again, and the system's new horizon.

    The first at the later of when the window frees and the horizon, the others one `pace` apart.
    """
    begin = max(first_free(rate, starts, now), horizon or now, now)
    times = [begin + i * rate.pace for i in range(n)]
    return times, begin + n * rate.pace
