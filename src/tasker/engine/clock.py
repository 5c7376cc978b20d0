"""The engine's clock: what every decision about time reads (`now()`).

Real time by default. `tasker.testing` installs a `VirtualClock` for users' workflow tests, so that
backoffs, sleeps, schedules, deadlines and lease expiries happen when the test advances time
instead of when the wall clock gets there. While the virtual clock is `skipping`, a worker with
nothing to do until a known time jumps the clock to it instead of waiting (Temporal's
time-skipping): the order of events stays what it would be in real time. Times are
timezone-aware UTC.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta


class VirtualClock:
    """A clock that moves only when told to (`advance`, `set`), or, while `skipping`, when every
    worker that runs is idle until a known time."""

    def __init__(self, start: datetime | None = None):
        start = start or datetime(2026, 1, 1, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError("a virtual clock starts at a timezone-aware time")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()
        #: Jump to the next due time instead of waiting for it.
        self.skipping = False

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float = 0.0, **delta: float) -> datetime:
        """Move forward by `seconds` (and/or `timedelta` keywords: minutes=, hours=, days=)."""
        step = timedelta(seconds=seconds, **delta)
        if step < timedelta(0):
            raise ValueError("a clock only moves forward")
        with self._lock:
            self._now += step
            return self._now

    def set(self, when: datetime) -> datetime:
        """Move forward to `when`."""
        with self._lock:
            if when.tzinfo is None:
                raise ValueError("give a timezone-aware time")
            if when < self._now:
                raise ValueError("a clock only moves forward")
            self._now = when.astimezone(UTC)
            return self._now


_virtual: VirtualClock | None = None


def now() -> datetime:
    """The current time, UTC."""
    virtual = _virtual
    if virtual is not None:
        return virtual.now()
    return datetime.now(UTC)


def install(virtual: VirtualClock | None) -> None:
    """Make `virtual` the engine's clock (None: real time again)."""
    global _virtual
    _virtual = virtual


def installed() -> VirtualClock | None:
    """The virtual clock in use, if any."""
    return _virtual


def skip(seconds: float) -> bool:
    """A worker has nothing to do for `seconds`: with a skipping virtual clock, jump it forward
    and say so (True); else the worker waits."""
    virtual = _virtual
    if virtual is None or not virtual.skipping or seconds <= 0:
        return False
    virtual.advance(seconds)
    return True


def held() -> bool:
    """Whether a test holds the clock (virtual, not skipping): a worker with nothing due now stops
    instead of waiting for a time that only the test can bring."""
    virtual = _virtual
    return virtual is not None and not virtual.skipping
