"""Claiming ready steps under a lease, extending leases, reclaiming expired ones and handing steps back.

A claim sets a fresh claim token (a per-step counter) that every later write of that attempt must present:
a worker that lost its lease, to a pause or a partition, cannot overwrite what another worker did.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select, update

from tasker.engine.model import ClaimedStep
from tasker.states import CLAIMABLE_STEP_STATES, SATISFIED_STEP_STATES, StepState, TaskState
from tasker.store.readiness import settle_tasks
from tasker.store.schema import steps, tasks
from tasker.store.transitions import record_steps, record_tasks, step_row, task_row

Events = list[tuple[str, dict[str, Any]]]
CLAIMABLE = [s.value for s in CLAIMABLE_STEP_STATES]
SATISFIED = [s.value for s in SATISFIED_STEP_STATES]


def claim(
    conn: Connection,
    *,
    worker: str,
    limit: int,
    now: datetime,
    lease_seconds: float,
    skip_locked: bool,
    events: Events,
    namespaces: Sequence[str] | None = None,
    task_id: int | None = None,
) -> list[ClaimedStep]:
    """Claim up to `limit` steps whose run_at has come, oldest first, with everything needed to run them."""
    if limit <= 0:
        return []
    q = select(steps.c.id, steps.c.state).where(steps.c.state.in_(CLAIMABLE), steps.c.run_at <= now)
    if namespaces:
        q = q.where(steps.c.namespace.in_(list(namespaces)))
    if task_id is not None:
        q = q.where(steps.c.task_id == task_id)
    q = q.order_by(steps.c.run_at, steps.c.id).limit(limit)
    if skip_locked:
        q = q.with_for_update(skip_locked=True)
    picked = conn.execute(q).all()
    if not picked:
        return []
    from_state = {r.id: r.state for r in picked}
    claimed = conn.execute(
        update(steps)
        .where(steps.c.id.in_(list(from_state)), steps.c.state.in_(CLAIMABLE))
        .values(
            state=StepState.IN_PROGRESS,
            lease_owner=worker,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            claim_token=steps.c.claim_token + 1,
            attempts=steps.c.attempts + 1,
            started_at=now,
            finished_at=None,
            updated_at=now,
        )
        .returning(
            steps.c.id, steps.c.task_id, steps.c.name, steps.c.attempts, steps.c.retry_limit,
            steps.c.claim_token, steps.c.idempotency_key, steps.c.dependent_system,
        )
    ).all()
    task_ids = sorted({r.task_id for r in claimed})
    task_rows = {
        r.id: r for r in conn.execute(
            select(tasks.c.id, tasks.c.status, tasks.c.context, tasks.c.correlation_id, tasks.c.template_id)
            .where(tasks.c.id.in_(task_ids))
        )
    }
    starting = [i for i in task_ids if task_rows[i].status == TaskState.PENDING]
    if starting:
        conn.execute(
            update(tasks).where(tasks.c.id.in_(starting), tasks.c.status == TaskState.PENDING)
            .values(status=TaskState.IN_PROGRESS, started_at=now, updated_at=now)
        )
        record_tasks(conn, [task_row(i, TaskState.PENDING, TaskState.IN_PROGRESS, now, worker) for i in starting])
        events.extend(("task.started", {"task_id": i}) for i in starting)
    results: dict[int, dict[str, dict[str, Any]]] = {i: {} for i in task_ids}
    for r in conn.execute(
        select(steps.c.task_id, steps.c.name, steps.c.results)
        .where(steps.c.task_id.in_(task_ids), steps.c.state.in_(SATISFIED))
    ):
        results[r.task_id][r.name] = r.results or {}
    record_steps(conn, [
        step_row(r.id, r.task_id, from_state[r.id], StepState.IN_PROGRESS, r.attempts, now, worker) for r in claimed
    ])
    out = []
    for r in claimed:
        t = task_rows[r.task_id]
        events.append(("step.started", {"task_id": r.task_id, "step_id": r.id, "step": r.name, "attempt": r.attempts}))
        out.append(ClaimedStep(
            step_id=r.id, task_id=r.task_id, name=r.name, template_id=t.template_id, attempt=r.attempts,
            retry_limit=r.retry_limit, claim_token=r.claim_token, idempotency_key=r.idempotency_key,
            dependent_system=r.dependent_system, context=t.context, correlation_id=t.correlation_id,
            results=results[r.task_id], from_state=from_state[r.id],
        ))
    out.sort(key=lambda c: (c.task_id, c.step_id))
    return out


def extend_leases(
    conn: Connection, *, worker: str, step_ids: Sequence[int], now: datetime, lease_seconds: float
) -> set[int]:
    """Extend this worker's leases; returns the ids it still holds (others were cancelled or reclaimed)."""
    if not step_ids:
        return set()
    rows = conn.execute(
        update(steps)
        .where(steps.c.id.in_(list(step_ids)), steps.c.lease_owner == worker, steps.c.state == StepState.IN_PROGRESS)
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
        .returning(steps.c.id)
    ).all()
    return {r.id for r in rows}


def reclaim_expired(
    conn: Connection, *, now: datetime, worker: str, skip_locked: bool, events: Events, limit: int = 500
) -> int:
    """Steps whose lease ran out (their worker died or stalled) count a retryable failure and run again.

    Those out of attempts go to `error`. Returns how many steps were reclaimed.
    """
    q = (
        select(steps.c.id, steps.c.task_id, steps.c.name, steps.c.attempts, steps.c.retry_limit,
               steps.c.retryable, steps.c.lease_owner)
        .where(steps.c.state == StepState.IN_PROGRESS, steps.c.lease_expires_at < now)
        .order_by(steps.c.lease_expires_at)
        .limit(limit)
    )
    if skip_locked:
        q = q.with_for_update(skip_locked=True)
    expired = conn.execute(q).all()
    if not expired:
        return 0
    rows = []
    failed_tasks = set()
    for r in expired:
        error = {
            "class": "LeaseExpired",
            "message": f"worker {r.lease_owner} stopped heartbeating; the attempt is presumed lost",
            "retryable": True,
        }
        retry = r.retryable and r.attempts < r.retry_limit
        target = StepState.WAITING_RETRY if retry else StepState.ERROR
        done = conn.execute(
            update(steps)
            .where(steps.c.id == r.id, steps.c.state == StepState.IN_PROGRESS, steps.c.lease_expires_at < now)
            .values(state=target, lease_owner=None, lease_expires_at=None, last_error=error,
                    run_at=now if retry else None, finished_at=None if retry else now, updated_at=now)
        ).rowcount
        if not done:
            continue
        rows.append(step_row(r.id, r.task_id, StepState.IN_PROGRESS, target, r.attempts, now, worker, error))
        events.append((
            "step.retry_scheduled" if retry else "step.failed",
            {"task_id": r.task_id, "step_id": r.id, "step": r.name, "attempt": r.attempts, "error": error},
        ))
        if not retry:
            failed_tasks.add(r.task_id)
    record_steps(conn, rows)
    settle_tasks(conn, failed_tasks, now, worker, events)
    return len(rows)


def release(conn: Connection, *, worker: str, held: Sequence[tuple[int, int, int]], now: datetime) -> int:
    """Hand claimed steps back unspent (a worker shutting down): they are ready again at once.

    `held` is (step_id, task_id, claim_token) of each step to release.
    """
    rows = []
    for step_id, task_id, token in held:
        r = conn.execute(
            update(steps)
            .where(steps.c.id == step_id, steps.c.claim_token == token, steps.c.state == StepState.IN_PROGRESS)
            .values(state=StepState.READY, lease_owner=None, lease_expires_at=None, run_at=now,
                    attempts=steps.c.attempts - 1, updated_at=now)
            .returning(steps.c.attempts)
        ).first()
        if r is not None:
            rows.append(step_row(step_id, task_id, StepState.IN_PROGRESS, StepState.READY, r.attempts, now, worker))
    record_steps(conn, rows)
    return len(rows)


def next_run_at(conn: Connection, *, namespaces: Sequence[str] | None = None, task_id: int | None = None) -> datetime | None:
    """When the next claimable step comes due (None when nothing waits)."""
    q = select(steps.c.run_at).where(steps.c.state.in_(CLAIMABLE))
    if namespaces:
        q = q.where(steps.c.namespace.in_(list(namespaces)))
    if task_id is not None:
        q = q.where(steps.c.task_id == task_id)
    return conn.execute(q.order_by(steps.c.run_at).limit(1)).scalar()


def active_count(conn: Connection, *, namespaces: Sequence[str] | None = None, task_id: int | None = None) -> int:
    """Steps that are ready, waiting to retry or running: zero means there is nothing left to do."""
    from sqlalchemy import func

    q = select(func.count()).select_from(steps).where(
        steps.c.state.in_([StepState.READY, StepState.WAITING_RETRY, StepState.IN_PROGRESS])
    )
    if namespaces:
        q = q.where(steps.c.namespace.in_(list(namespaces)))
    if task_id is not None:
        q = q.where(steps.c.task_id == task_id)
    return int(conn.execute(q).scalar_one())
