"""Point-in-time counts of the store, for metrics scrapes.

Every figure is bounded by the work in flight, not by the history the store holds, so a scrape costs
the same at ten thousand tasks or ten million: tasks in final states through the overview's
`FinalCounts` (counted once, then by the recent range of `(status, finished_at)`), tasks that can
still move through `(status, id)`, steps in the states a step can leave through the partial index
over active steps (ready, waiting_retry, in_progress, error) and, for `pending`, the steps of the
open tasks; the claimable lookup uses the claim index.

Steps in final states (complete, skipped, cancelled, resolved_manually) are not counted: they only
grow, and the per-process counters (`tasker_step_outcomes_total`) and the analytics report them.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict

from sqlalchemy import Connection, func, select, text

from tasker.domain.states import CLAIMABLE_STEP_STATES, StepState, TaskState
from tasker.store.database import Database
from tasker.store.overview import FinalCounts
from tasker.store.rollups import OPEN_TASK_STATES
from tasker.store.schema import ACTIVE, dependent_systems, steps, tasks
from tasker.store.workers import count_recent

#: The step states a scrape counts: those a step can leave.
LIVE_STEP_STATES = (
    StepState.PENDING,
    StepState.READY,
    StepState.IN_PROGRESS,
    StepState.WAITING_RETRY,
    StepState.ERROR,
)


class StoreGauges(TypedDict):
    """The store-wide gauges of one scrape (`tasker.observability.metrics`)."""

    tasks: dict[str, int]  # every TaskState value, 0 when none
    steps: dict[str, int]  # every value of LIVE_STEP_STATES, 0 when none
    ready: int  # claimable steps whose run_at has come
    oldest_seconds: float  # how long the oldest of them has been due (0 when none)
    circuits: list[tuple[str, str]]  # (system, circuit state), by name
    workers: int  # live workers


def live_steps_by_state(conn: Connection) -> dict[str, int]:
    """Steps in the states a step can leave, counted by state.

    The active ones through their partial index (the literal predicate repeated so that SQLite,
    which matches predicates textually, uses it); the pending ones among the steps of open tasks.
    """
    out = {
        str(state): int(n)
        for state, n in conn.execute(
            select(steps.c.state, func.count()).where(text(ACTIVE)).group_by(steps.c.state)
        )
    }
    out[StepState.PENDING.value] = int(
        conn.execute(
            select(func.count())
            .select_from(tasks.join(steps, steps.c.task_id == tasks.c.id))
            .where(tasks.c.status.in_(OPEN_TASK_STATES), steps.c.state == StepState.PENDING.value)
        ).scalar_one()
    )
    return out


def read(
    db: Database, now: datetime, worker_seen_seconds: float, final: FinalCounts
) -> StoreGauges:
    """`snapshot` in a read transaction of its own."""
    with db.read() as conn:
        return snapshot(conn, now, worker_seen_seconds, final)


def snapshot(
    conn: Connection, now: datetime, worker_seen_seconds: float, final: FinalCounts
) -> StoreGauges:
    """Tasks by state, live steps by state, the due ready queue, circuit states and live workers.

    `final` keeps the settled counts of finished tasks between scrapes (one per collector).
    """
    claimable = sorted(s.value for s in CLAIMABLE_STEP_STATES)
    task_counts = {s.value: 0 for s in TaskState}
    task_counts.update(final.counts(conn, now))
    step_counts = {s.value: 0 for s in LIVE_STEP_STATES}
    step_counts.update(live_steps_by_state(conn))
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
