"""Operator actions: cancel a task, retry a failed one, resolve a step by hand."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from tasker.errors import NotFoundError, OperationError
from tasker.states import (
    FINISHED_TASK_STATES,
    STEP_TRANSITIONS,
    StepState,
    TaskState,
    check_task_transition,
)
from tasker.store.readiness import release_children, settle_tasks
from tasker.store.schema import steps, tasks
from tasker.store.transitions import record_steps, record_tasks, step_row, task_row

Events = list[tuple[str, dict[str, Any]]]


def _task_status(conn: Connection, task_id: int, lock: bool) -> TaskState:
    q = select(tasks.c.status).where(tasks.c.id == task_id)
    if lock:
        q = q.with_for_update()
    status = conn.execute(q).scalar()
    if status is None:
        raise NotFoundError(f"no task with id {task_id}; fix: list tasks with 'tasker tasks list'")
    return TaskState(status)


def cancel_task(conn: Connection, task_id: int, *, now: datetime, lock: bool, events: Events,
                reason: str | None = None) -> None:
    """Cancel every unfinished step (a running attempt's late result is discarded) and the task."""
    status = _task_status(conn, task_id, lock)
    if status in FINISHED_TASK_STATES - {TaskState.ERROR}:
        raise OperationError(f"task {task_id} is already {status}; only unfinished or failed tasks can be cancelled")
    open_states = [s for s in StepState if StepState.CANCELLED in STEP_TRANSITIONS[s]]
    cancelled = conn.execute(
        update(steps)
        .where(steps.c.task_id == task_id, steps.c.state.in_(open_states))
        .values(state=StepState.CANCELLED, lease_owner=None, lease_expires_at=None, finished_at=now, updated_at=now)
        .returning(steps.c.id, steps.c.name, steps.c.attempts)
    ).all()
    record_steps(conn, [step_row(r.id, task_id, None, StepState.CANCELLED, r.attempts, now, None) for r in cancelled])
    events.extend(("step.cancelled", {"task_id": task_id, "step_id": r.id, "step": r.name}) for r in cancelled)
    check_task_transition(status, TaskState.CANCELLED)
    conn.execute(update(tasks).where(tasks.c.id == task_id)
                 .values(status=TaskState.CANCELLED, finished_at=now, updated_at=now))
    record_tasks(conn, [task_row(task_id, status, TaskState.CANCELLED, now, reason=reason)])
    events.append(("task.cancelled", {"task_id": task_id, "from_state": status.value, "reason": reason}))


def retry_task(conn: Connection, task_id: int, *, now: datetime, lock: bool, events: Events) -> int:
    """Re-arm every `error` step of a failed task with fresh attempts; returns how many."""
    status = _task_status(conn, task_id, lock)
    if status != TaskState.ERROR:
        raise OperationError(f"task {task_id} is {status}; only a task in error can be retried")
    rearmed = conn.execute(
        update(steps)
        .where(steps.c.task_id == task_id, steps.c.state == StepState.ERROR)
        .values(state=StepState.READY, attempts=0, run_at=now, finished_at=None, updated_at=now)
        .returning(steps.c.id, steps.c.name)
    ).all()
    record_steps(conn, [step_row(r.id, task_id, StepState.ERROR, StepState.READY, 0, now) for r in rearmed])
    events.append(("task.retried", {"task_id": task_id, "steps": [r.name for r in rearmed]}))
    events.extend(("step.ready", {"task_id": task_id, "step_id": r.id, "step": r.name}) for r in rearmed)
    settle_tasks(conn, [task_id], now, None, events)
    return len(rearmed)


def retry_step(conn: Connection, task_id: int, step_name: str, *, now: datetime, lock: bool, events: Events) -> None:
    """Re-arm one `error` step with fresh attempts."""
    _task_status(conn, task_id, lock)
    row = _step(conn, task_id, step_name)
    if row.state != StepState.ERROR:
        raise OperationError(f"step '{step_name}' of task {task_id} is {row.state}; only a step in error can be retried")
    conn.execute(update(steps).where(steps.c.id == row.id)
                 .values(state=StepState.READY, attempts=0, run_at=now, finished_at=None, updated_at=now))
    record_steps(conn, [step_row(row.id, task_id, StepState.ERROR, StepState.READY, 0, now)])
    events.append(("step.ready", {"task_id": task_id, "step_id": row.id, "step": step_name}))
    settle_tasks(conn, [task_id], now, None, events)


def resolve_step(conn: Connection, task_id: int, step_name: str, results: dict[str, Any], *, now: datetime,
                 lock: bool, events: Events) -> None:
    """An operator supplies the step's result; its dependents proceed as if it had completed."""
    status = _task_status(conn, task_id, lock)
    if status in FINISHED_TASK_STATES - {TaskState.ERROR}:
        raise OperationError(f"task {task_id} is {status}; its steps can no longer be resolved")
    row = _step(conn, task_id, step_name)
    src = StepState(row.state)
    if StepState.RESOLVED_MANUALLY not in STEP_TRANSITIONS[src]:
        hint = " (it is running: wait for the attempt or cancel the task)" if src == StepState.IN_PROGRESS else ""
        raise OperationError(f"step '{step_name}' of task {task_id} is {src} and cannot be resolved{hint}")
    conn.execute(update(steps).where(steps.c.id == row.id).values(
        state=StepState.RESOLVED_MANUALLY, results=results, run_at=None, finished_at=now, updated_at=now))
    record_steps(conn, [step_row(row.id, task_id, src, StepState.RESOLVED_MANUALLY, row.attempts, now)])
    events.append(("step.resolved", {"task_id": task_id, "step_id": row.id, "step": step_name}))
    release_children(conn, [row.id], now, None, events)
    settle_tasks(conn, [task_id], now, None, events)


def _step(conn: Connection, task_id: int, name: str) -> Any:
    row = conn.execute(
        select(steps.c.id, steps.c.state, steps.c.attempts).where(steps.c.task_id == task_id, steps.c.name == name)
    ).first()
    if row is None:
        names = conn.execute(select(steps.c.name).where(steps.c.task_id == task_id).order_by(steps.c.position)).scalars()
        raise NotFoundError(f"task {task_id} has no step '{name}'; steps: {', '.join(names)}")
    return row
