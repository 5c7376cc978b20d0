"""Incremental readiness and task finalization, shared by step completion and operator actions.

Both run inside the caller's transaction, so a result, its children becoming ready and the task settling
commit together or not at all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, case, func, select, update

from tasker.states import FINISHED_TASK_STATES, StepState, TaskState, check_task_transition, final_task_state
from tasker.store.schema import step_edges, steps, tasks
from tasker.store.transitions import record_steps, record_tasks, step_row, task_row

Events = list[tuple[str, dict[str, Any]]]


def release_children(
    conn: Connection, parent_ids: list[int], now: datetime, worker: str | None, events: Events
) -> set[int]:
    """Decrement the unfinished-parent count of the parents' children; those at zero become ready.

    Returns the ids of the tasks that gained a ready step.
    """
    if not parent_ids:
        return set()
    per_child = Counter(
        r.child_id for r in conn.execute(
            select(step_edges.c.child_id).where(step_edges.c.parent_id.in_(parent_ids))
        )
    )
    by_count: dict[int, list[int]] = {}
    for child, n in per_child.items():
        by_count.setdefault(n, []).append(child)
    readied: set[int] = set()
    rows: list[dict[str, Any]] = []
    for n, children in by_count.items():
        becomes_ready = and_(steps.c.pending_parents <= n, steps.c.state == StepState.PENDING)
        result = conn.execute(
            update(steps)
            .where(steps.c.id.in_(children))
            .values(
                pending_parents=steps.c.pending_parents - n,
                state=case((becomes_ready, StepState.READY.value), else_=steps.c.state),
                run_at=case((becomes_ready, now), else_=steps.c.run_at),
                updated_at=now,
            )
            .returning(steps.c.id, steps.c.task_id, steps.c.name, steps.c.state)
        )
        for r in result:
            if r.state == StepState.READY:
                readied.add(r.task_id)
                rows.append(step_row(r.id, r.task_id, StepState.PENDING, StepState.READY, 0, now, worker))
                events.append(("step.ready", {"task_id": r.task_id, "step_id": r.id, "step": r.name}))
    record_steps(conn, rows)
    return readied


def settle_tasks(
    conn: Connection, task_ids: Iterable[int], now: datetime, worker: str | None, events: Events
) -> list[tuple[int, str]]:
    """Finalize the tasks whose steps are all settled; reopen an `error` task that has work again.

    Returns (task_id, new status) for each task whose status changed.
    """
    ids = sorted(set(task_ids))
    if not ids:
        return []
    counts: dict[int, dict[str, int]] = {i: {} for i in ids}
    for r in conn.execute(
        select(steps.c.task_id, steps.c.state, func.count())
        .where(steps.c.task_id.in_(ids))
        .group_by(steps.c.task_id, steps.c.state)
    ):
        counts[r[0]][r[1]] = int(r[2])
    changed: list[tuple[int, str]] = []
    rows = []
    for r in conn.execute(select(tasks.c.id, tasks.c.status).where(tasks.c.id.in_(ids))):
        final = final_task_state(counts[r.id])
        status = TaskState(r.status)
        if final is None:
            if status == TaskState.ERROR:
                target = TaskState.PENDING  # an operator unblocked it; a worker will pick it up again
            else:
                continue
        elif final == status or status in FINISHED_TASK_STATES - {TaskState.ERROR}:
            continue
        else:
            target = final
        check_task_transition(status, target)
        values: dict[str, Any] = {"status": target, "updated_at": now}
        if target in FINISHED_TASK_STATES:
            values["finished_at"] = now
        else:
            values["finished_at"] = None
        conn.execute(update(tasks).where(tasks.c.id == r.id).values(**values))
        rows.append(task_row(r.id, status, target, now, worker))
        changed.append((r.id, target.value))
        from tasker.events.catalog import TASK_EVENT_FOR_STATE

        name = TASK_EVENT_FOR_STATE.get(target.value)
        if name:
            events.append((name, {"task_id": r.id, "from_state": status.value, "to_state": target.value}))
    record_tasks(conn, rows)
    return changed
