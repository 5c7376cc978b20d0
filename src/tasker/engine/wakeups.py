"""When the worker looks for work again: an attempt finished, this process made work
(`notify()`, from any thread), another process did (PostgreSQL NOTIFY), or the poll interval
passed. The worker never sleeps longer than until the next `run_at` it knows of, its next heartbeat,
or the end of its grace period."""

from __future__ import annotations

import asyncio
import math
import time

from tasker.store.database import Database
from tasker.store.notify import ReadyListener


class Wakeups:
    def __init__(self, poll_interval: float):
        self.poll_interval = poll_interval
        #: Scan the ready queue at the next cycle: after `notify()` or the poll, or while scans fill
        #: their room. A finished attempt alone does not make it due: the cycle that stores its
        #: outcome claims the children it made ready from memory, and a scan then would read an
        #: empty queue (a round trip per step of a sequential task).
        self.claim_due = True
        self._notified = False
        self._scanned_at = time.monotonic()
        self._retry_due = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()

    def close(self) -> None:
        self._loop = None

    def notify(self) -> None:
        """From any thread: work may be ready, look now instead of at the next poll."""
        loop, event = self._loop, self._event
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._notify)

    def _notify(self) -> None:
        assert self._event is not None
        self._notified = True
        self._event.set()

    def rescan(self) -> None:
        """On the worker's loop: scan the queue at the next cycle (the clock moved)."""
        self._notified = True
        self.claim_due = True

    def wake(self) -> None:
        """On the worker's loop: something for the next cycle (a finished attempt)."""
        if self._event is not None:
            self._event.set()

    def listen(self, db: Database) -> ReadyListener | None:
        """Hear of work other processes make (PostgreSQL only); the caller stops the listener."""
        if not db.is_postgres:
            return None
        listener = ReadyListener(db.url, self.notify)
        listener.start()
        return listener

    def scanned(self, full: bool) -> None:
        """A cycle scanned the queue; `full`: it filled its room, so more may wait."""
        self.claim_due = full
        self._scanned_at = time.monotonic()

    def retry_at(self, due: float) -> None:
        """A step this worker stored comes due again at `due` (monotonic): scan then."""
        self._retry_due = min(self._retry_due, due)

    def until_retry(self, now: float) -> float:
        """Seconds until the earliest retry this worker scheduled (inf: none)."""
        return self._retry_due - now

    async def wait(self, seconds: float) -> None:
        """Until a wake-up or `seconds`; then the next cycle scans the queue, unless all that woke
        the worker was a finished attempt (and no poll interval or scheduled retry has passed)."""
        assert self._event is not None
        timed_out = False
        if not self._event.is_set():
            try:
                # `timeout`, not `wait_for`: no task wrapped around the wait (a worker waits
                # between every claim and the finish of what it claimed)
                async with asyncio.timeout(seconds):
                    await self._event.wait()
            except TimeoutError:
                timed_out = True
        self._event.clear()
        now = time.monotonic()
        if (
            timed_out
            or self._notified
            or now - self._scanned_at >= self.poll_interval
            or now >= self._retry_due
        ):
            self._notified = False
            self._retry_due = math.inf
            self.claim_due = True
