"""Applying attempt outcomes: the single completion transaction of DESIGN section 4.

Result, state change, transition row, children readiness and task finalization are written together,
each step fenced by its claim token, for a whole batch of outcomes at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select, update

from tasker.engine.model import Outcome
from tasker.states import StepState
from tasker.store.readiness import release_children, settle_tasks
from tasker.store.schema import steps, tasks
from tasker.store.transitions import record_steps, step_row

Events = list[tuple[str, dict[str, Any]]]

_EVENT = {
    StepState.COMPLETE: "step.completed",
    StepState.WAITING_RETRY: "step.retry_scheduled",
    StepState.ERROR: "step.failed",
}


def apply_outcomes(
    conn: Connection,
    outcomes: Sequence[Outcome],
    *,
    now: datetime,
    worker: str,
    lock_tasks: bool,
    events: Events,
) -> tuple[list[Outcome], list[tuple[int, str]]]:
    """Store outcomes; returns those accepted (the others lost their claim) and the tasks that settled."""
    if not outcomes:
        return [], []
    task_ids = sorted({o.task_id for o in outcomes})
    if lock_tasks:
        # Serialise completions per task (in id order, so two workers cannot deadlock) so that the last
        # sibling to finish sees the others' states and finalizes the task exactly once.
        conn.execute(select(tasks.c.id).where(tasks.c.id.in_(task_ids)).order_by(tasks.c.id).with_for_update())
    accepted: list[Outcome] = []
    rows = []
    completed: list[int] = []
    check: set[int] = set()
    for o in outcomes:
        values: dict[str, Any] = {
            "state": o.state, "lease_owner": None, "lease_expires_at": None, "updated_at": now,
        }
        if o.state == StepState.COMPLETE:
            values.update(results=o.results if o.results is not None else {}, last_error=None, finished_at=now)
        elif o.state == StepState.WAITING_RETRY:
            values.update(last_error=o.error, run_at=now + timedelta(seconds=o.retry_delay))
        else:
            values.update(last_error=o.error, finished_at=now)
        done = conn.execute(
            update(steps)
            .where(steps.c.id == o.step_id, steps.c.claim_token == o.claim_token,
                   steps.c.state == StepState.IN_PROGRESS)
            .values(**values)
        ).rowcount
        if not done:
            continue  # cancelled, or the lease was lost and another worker owns this step now
        accepted.append(o)
        rows.append(step_row(o.step_id, o.task_id, StepState.IN_PROGRESS, o.state, o.attempt, now, worker,
                             o.error, o.duration_ms))
        payload: dict[str, Any] = {"task_id": o.task_id, "step_id": o.step_id, "attempt": o.attempt,
                                   "duration_ms": o.duration_ms}
        if o.error:
            payload["error"] = o.error
        if o.state == StepState.WAITING_RETRY:
            payload["retry_in_seconds"] = o.retry_delay
        events.append((_EVENT[StepState(o.state)], payload))
        events.extend(o.events)
        if o.state == StepState.COMPLETE:
            completed.append(o.step_id)
        if o.state != StepState.WAITING_RETRY:
            check.add(o.task_id)
    record_steps(conn, rows)
    readied = release_children(conn, completed, now, worker, events)
    settled = settle_tasks(conn, check - readied, now, worker, events)
    return accepted, settled
