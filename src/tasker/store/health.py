"""Is the store up, migrated, and what does it hold now: the reads behind `/health/*`.

The probe (`SELECT 1` and the schema's Alembic revision) and the status figures run on a helper
thread under a deadline (`Probes`): a database that hangs makes a probe answer "not ready" in time
instead of hanging the caller, and at most one probe per kind is in flight for each `Probes` (one
per engine, so per store), so a load balancer that keeps asking cannot pile up stuck threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import text

from tasker.domain.reports import Circuit, Worker
from tasker.store import analytics, rollups, systems
from tasker.store import workers as workers_store
from tasker.store.database import Database


def head_revision() -> str | None:
    """The latest schema revision this release ships (read once per process: it never changes)."""
    from tasker.store.migrate import head_revision as head  # lazily, as in `probe`

    return head()


T = TypeVar("T")


class Probes:
    """Runs checks of one store on helper threads, at most one per kind at a time."""

    def __init__(self) -> None:
        self._inflight: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()

    def run(self, kind: str, fn: Callable[[], T], timeout: float) -> T:
        """Run `fn` on a helper thread and wait at most `timeout` seconds (else `TimeoutError`).

        A probe of the same kind still running from an earlier call is joined rather than started
        again.
        """
        with self._lock:
            future = self._inflight.get(kind)
            if future is None or future.done():
                future = Future()
                self._inflight[kind] = future
                threading.Thread(
                    target=_fulfil, args=(future, fn), name=f"tasker-{kind}-probe", daemon=True
                ).start()
        result: T = future.result(timeout=timeout)
        return result


def _fulfil(future: Future[Any], fn: Callable[[], Any]) -> None:
    try:
        future.set_result(fn())
    except BaseException as exc:
        future.set_exception(exc)


@dataclass(frozen=True)
class Probe:
    """What one round trip to the store found: its schema revision, and how long it took."""

    current: str | None
    response_time_ms: float


def probe(db: Database) -> Probe:
    """`SELECT 1` and the schema revision, on a connection of the store's reader."""
    # Alembic is imported on the first probe, not with the engine (~120 ms of start-up).
    from alembic.runtime.migration import MigrationContext

    started = time.perf_counter()
    with db.reader.connect() as conn:
        conn.execute(text("SELECT 1"))
        current = MigrationContext.configure(conn).get_current_revision()
    return Probe(current, round((time.perf_counter() - started) * 1000, 3))


#: How long a status call may spend rolling up new transitions before it reads the rest as the
#: tail: a store that no report has read for a long while is caught up over several calls.
STATUS_CATCH_UP_SECONDS = 2.0


@dataclass(frozen=True)
class StatusFigures:
    """What `/health/status` reads, in one snapshot of the store; the engine judges it."""

    #: Where the window starts: the beginning of the rollup slot `window_hours` ago.
    since: datetime
    #: Tasks created in the window, per template, with their steps by state.
    outcomes: dict[analytics.TemplateKey, analytics.TaskOutcomes]
    #: Tasks created since the slot an hour ago, and their step attempts.
    hour_tasks: dict[analytics.TemplateKey, analytics.TaskOutcomes]
    hour_steps: dict[analytics.StepKey, analytics.StepCounts]
    backlog: analytics.Backlog
    workers: list[Worker]
    workers_seen: int
    circuits: list[Circuit]


def status_figures(
    db: Database,
    now: datetime,
    *,
    window_hours: int,
    overdue_seconds: float,
    worker_seen_seconds: float,
) -> StatusFigures:
    """The figures of a status report (`tasker.engine.insight.Insight.status`) in one snapshot.

    Counts come from the analytics rollups over whole slots (`tasker.store.rollups`), the tasks
    still open and the rows not rolled up yet: what the status reads grows with the work in flight
    and the time since the last report, not with the history the store holds.
    """
    since = rollups.slot_start(now - timedelta(hours=window_hours))
    last_hour = analytics.Scope(rollups.slot_start(now - timedelta(hours=1)))
    rollups.catch_up(db.write, max_seconds=STATUS_CATCH_UP_SECONDS)
    with rollups.snapshot(db) as conn:
        return StatusFigures(
            since=since,
            outcomes=rollups.task_report(conn, analytics.Scope(since), durations=False)[0],
            hour_tasks=rollups.task_report(conn, last_hour, durations=False)[0],
            hour_steps=rollups.step_report(conn, last_hour, durations=False)[0],
            backlog=analytics.backlog(conn, now, now - timedelta(seconds=overdue_seconds)),
            workers=[
                Worker.model_validate(w)
                for w in workers_store.recent(conn, now, worker_seen_seconds, limit=100)
            ],
            workers_seen=workers_store.count_recent(conn, now, worker_seen_seconds),
            circuits=[Circuit.model_validate(c) for c in systems.report(conn, now)],
        )
