"""When the worker looks for work again: an attempt finished, this process made work
(`notify()`, from any thread), another process did (PostgreSQL NOTIFY), or the poll interval
passed. The worker never sleeps longer than until the next `run_at` it knows of, its next heartbeat,
or the end of its grace period."""

from __future__ import annotations

import asyncio

from tasker.store.database import Database
from tasker.store.notify import ReadyListener


class Wakeups:
    def __init__(self, poll_interval: float):
        self.poll_interval = poll_interval
        #: Scan the ready queue at the next cycle (after a wake-up, or while scans fill their room).
        self.claim_due = True
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
            loop.call_soon_threadsafe(event.set)

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

    async def wait(self, seconds: float) -> None:
        """Until a wake-up or `seconds`; then the next cycle scans the queue."""
        assert self._event is not None
        self._event.clear()
        try:
            await asyncio.wait_for(self._event.wait(), timeout=seconds)
        except TimeoutError:
            pass
        self.claim_due = True
