"""Point-in-time counts of the whole store, for metrics scrapes and status pages.

One grouped COUNT per table: cheap enough to run at every Prometheus scrape on a large store, because the
claimable lookup uses the partial index and the grouped counts need no sort.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from tasker.domain.states import CLAIMABLE_STEP_STATES, StepState, TaskState
from tasker.store.schema import dependent_systems, steps, tasks
from tasker.store.workers import count_recent


def snapshot(conn: Connection, now: datetime, worker_seen_seconds: float) -> dict[str, Any]:
    """Tasks and steps by state, the due ready queue, circuit states and live workers."""
    claimable = sorted(s.value for s in CLAIMABLE_STEP_STATES)
    task_counts = {s.value: 0 for s in TaskState}
    task_counts.update(
        {
            r[0]: int(r[1])
            for r in conn.execute(select(tasks.c.status, func.count()).group_by(tasks.c.status))
        }
    )
    step_counts = {s.value: 0 for s in StepState}
    step_counts.update(
        {
            r[0]: int(r[1])
            for r in conn.execute(select(steps.c.state, func.count()).group_by(steps.c.state))
        }
    )
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
    return {
        "tasks": task_counts,
        "steps": step_counts,
        "ready": int(ready),
        "oldest_seconds": max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0,
        "circuits": circuits,
        "workers": count_recent(conn, now, worker_seen_seconds),
    }
