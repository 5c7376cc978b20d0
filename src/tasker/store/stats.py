"""Point-in-time counts of the whole store, for metrics scrapes and status pages.

One grouped COUNT per table: cheap enough to run at every Prometheus scrape on a large store,
because the claimable lookup uses the partial index and the grouped counts need no sort.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict

from sqlalchemy import Connection, func, select

from tasker.domain.states import CLAIMABLE_STEP_STATES, StepState, TaskState
from tasker.store.database import Database
from tasker.store.overview import tasks_by_status
from tasker.store.schema import dependent_systems, steps
from tasker.store.workers import count_recent


class StoreGauges(TypedDict):
    """The store-wide gauges of one scrape (`tasker.observability.metrics`)."""

    tasks: dict[str, int]  # every TaskState value, 0 when none
    steps: dict[str, int]  # every StepState value, 0 when none
    ready: int  # claimable steps whose run_at has come
    oldest_seconds: float  # how long the oldest of them has been due (0 when none)
    circuits: list[tuple[str, str]]  # (system, circuit state), by name
    workers: int  # live workers


def steps_by_state(conn: Connection) -> dict[str, int]:
    """Every step counted by state (one grouped count, no sort)."""
    rows = conn.execute(select(steps.c.state, func.count()).group_by(steps.c.state))
    return {str(state): int(n) for state, n in rows}


def read(db: Database, now: datetime, worker_seen_seconds: float) -> StoreGauges:
    """`snapshot` in a read transaction of its own."""
    with db.read() as conn:
        return snapshot(conn, now, worker_seen_seconds)


def snapshot(conn: Connection, now: datetime, worker_seen_seconds: float) -> StoreGauges:
    """Tasks and steps by state, the due ready queue, circuit states and live workers."""
    claimable = sorted(s.value for s in CLAIMABLE_STEP_STATES)
    task_counts = {s.value: 0 for s in TaskState}
    task_counts.update(tasks_by_status(conn))
    step_counts = {s.value: 0 for s in StepState}
    step_counts.update(steps_by_state(conn))
    ready, oldest = conn.execute(
        select(func.count(), func.min(steps.c.run_at)).where(
            steps.c.state.in_(claimable), steps.c.run_at <= now
        )
    ).one()
    circuits = [
        (r[0], r[1])
        for r in conn.execute(
            select(dependent_systems.c.name, dependent_systems.c.circuit_state).order_by(
                dependent_systems.c.name
            )
        )
    ]
    return StoreGauges(
        tasks=task_counts,
        steps=step_counts,
        ready=int(ready),
        oldest_seconds=max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0,
        circuits=circuits,
        workers=count_recent(conn, now, worker_seen_seconds),
    )
