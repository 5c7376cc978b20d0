"""The worker's housekeeping: its row in the worker registry, the timers of its periodic work, and
its pause when the store is unreachable.

- `Registry`: a long-running worker announces itself at start, and forgets the rows of workers not
  seen for `PRUNE_AFTER_SECONDS` (as Procrastinate prunes stalled workers at start, so rows do not
  pile up forever); a side task refreshes its row every `SEEN_EVERY_SECONDS`; it stamps its stop.
- `Every`: a period and when it is next due (heartbeat, lease reclaim).
- `OutageBackoff`: how long to wait before the next cycle while the store is unavailable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from tasker.domain.errors import StoreError
from tasker.engine import clock
from tasker.store import workers as worker_registry
from tasker.store.database import Database
from tasker.store.workers import PRUNE_AFTER_SECONDS, SEEN_EVERY_SECONDS

log = logging.getLogger("tasker.worker")

#: Runs a function on the worker's database thread.
OnDbThread = Callable[..., Awaitable[Any]]


def utcnow() -> datetime:
    return clock.now()


class Every:
    """Something due every `period` seconds of the monotonic clock."""

    __slots__ = ("next_at", "period")

    def __init__(self, period: float, next_at: float = 0.0):
        self.period = period
        self.next_at = next_at

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def done(self, now: float) -> None:
        self.next_at = now + self.period

    def remaining(self, now: float) -> float:
        return max(0.0, self.next_at - now)


class OutageBackoff:
    """The store is unavailable: wait 0.2 s, doubling to at most 5 s, before trying again."""

    def __init__(self) -> None:
        self.failures = 0

    async def pause(self, worker_id: str, exc: BaseException) -> None:
        self.failures += 1
        delay = min(0.1 * 2 ** min(self.failures, 6), 5.0)
        log.warning(
            "worker %s: database unavailable (%s); retrying in %.1fs",
            worker_id,
            type(exc).__name__,
            delay,
        )
        await asyncio.sleep(delay)

    def clear(self) -> None:
        self.failures = 0


class Registry:
    """A long-running worker's row in `tasker_workers`."""

    def __init__(
        self, db: Database, worker_id: str, namespaces: Sequence[str] | None, concurrency: int
    ):
        self.db = db
        self.worker_id = worker_id
        self.namespaces = list(namespaces or []) or None
        self.concurrency = concurrency
        self.pruned = 0

    async def announce(self, on_db: OnDbThread) -> bool:
        """Register (and prune the rows of long-gone workers); False when the store refused, and
        the worker runs unlisted."""
        try:
            await on_db(self._announce)
        except StoreError as exc:  # bookkeeping: a worker that cannot register still works
            log.warning(
                "worker %s could not register (%s); it runs unlisted",
                self.worker_id,
                type(exc).__name__,
            )
            return False
        return True

    def _announce(self) -> None:
        now = utcnow()
        with self.db.write() as conn:
            worker_registry.announce(
                conn,
                self.worker_id,
                namespaces=self.namespaces,
                concurrency=self.concurrency,
                now=now,
            )
            self.pruned = worker_registry.prune(conn, now - timedelta(seconds=PRUNE_AFTER_SECONDS))
        if self.pruned:
            log.info(
                "worker %s forgot %d worker(s) not seen for %g hours",
                self.worker_id,
                self.pruned,
                PRUNE_AFTER_SECONDS / 3600,
            )

    async def keep_seen(self, on_db: OnDbThread, steps_run: Callable[[], int]) -> None:
        """The side task that refreshes the row until cancelled."""
        while True:
            await asyncio.sleep(SEEN_EVERY_SECONDS)
            try:
                await on_db(self.seen, steps_run(), False)
            except Exception:  # bookkeeping: never the worker's end
                log.exception("worker %s: refreshing its registry row failed", self.worker_id)

    def seen(self, steps_run: int, stopped: bool) -> None:
        try:
            with self.db.write() as conn:
                worker_registry.seen(
                    conn, self.worker_id, steps_run=steps_run, now=utcnow(), stopped=stopped
                )
        except StoreError as exc:
            log.debug("worker %s: registry refresh failed (%s)", self.worker_id, type(exc).__name__)
