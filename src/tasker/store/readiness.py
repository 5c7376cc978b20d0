"""Incremental readiness and task finalization, shared by step completion and operator actions.

Both run inside the caller's transaction, so a result, its children becoming ready and the task
settling commit together or not at all. Statements are built once at import; each call only binds
values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from sqlalchemy import and_, bindparam, case, false, func, or_, select, update
from sqlalchemy.engine import Connection

from tasker.domain.states import (
    FINISHED_TASK_STATES,
    StepState,
    TaskCounts,
    TaskState,
    settle_move,
)
from tasker.store.decisions import decide_gated
from tasker.store.journal import Journal
from tasker.store.schema import step_edges, steps, tasks

_CHILDREN = select(step_edges.c.child_id).where(
    step_edges.c.parent_id.in_(bindparam("parents", expanding=True))
)
_BECOMES_READY = and_(
    steps.c.pending_parents <= bindparam("n"),
    steps.c.state == StepState.PENDING.value,
    steps.c.gated == false(),
)
_RELEASE = (
    update(steps)
    .where(steps.c.id.in_(bindparam("children", expanding=True)))
    .values(
        pending_parents=steps.c.pending_parents - bindparam("n"),
        state=case((_BECOMES_READY, StepState.READY.value), else_=steps.c.state),
        run_at=case((_BECOMES_READY, bindparam("now")), else_=steps.c.run_at),
        updated_at=bindparam("now"),
    )
    .returning(
        steps.c.id,
        steps.c.task_id,
        steps.c.name,
        steps.c.state,
        steps.c.gated,
        steps.c.pending_parents,
    )
)
#: Each task's status with the count of its steps in each state: one statement, read after the
#: lock (a read in the locking statement would use a snapshot from before the wait).
_IS_UNDO = steps.c.compensates.is_not(None)
#: A failed step whose failure leaves its task in `error` rather than compensating it: the step says
#: `on_failure: stop`, or its failure was retryable and ran out of attempts (a dependency was
#: down: an operator retries once it is back, or compensates by hand).
_HOLDS = and_(
    steps.c.state == StepState.ERROR.value,
    or_(steps.c.stops, steps.c.last_error["retryable"].as_boolean()),
)
_COUNTS = (
    select(
        tasks.c.id,
        tasks.c.status,
        tasks.c.parent_step_id,
        steps.c.state,
        _IS_UNDO.label("is_undo"),
        steps.c.undo,
        _HOLDS.label("holds"),
        func.count(steps.c.id),
    )
    .select_from(tasks.outerjoin(steps, steps.c.task_id == tasks.c.id))
    .where(tasks.c.id.in_(bindparam("ids", expanding=True)))
    .group_by(
        tasks.c.id,
        tasks.c.status,
        tasks.c.parent_step_id,
        steps.c.state,
        _IS_UNDO,
        steps.c.undo,
        _HOLDS,
    )
)
#: A child task that settled wakes the `task:` step waiting for it (parked: no `run_at`).
WAKE_PARENT = (
    update(steps)
    .where(
        steps.c.id == bindparam("step_id"),
        steps.c.state == StepState.WAITING_RETRY.value,
        steps.c.run_at.is_(None),
    )
    .values(run_at=bindparam("now"), updated_at=bindparam("now"))
    .returning(steps.c.id)
)
_LOCK = (
    select(tasks.c.id)
    .where(tasks.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(tasks.c.id)
    .with_for_update(key_share=True)
)
_SET_STATUS = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"))
    .values(
        status=bindparam("status"),
        finished_at=bindparam("finished_at"),
        updated_at=bindparam("now"),
    )
)


def release_children(
    conn: Connection,
    parent_ids: list[int],
    journal: Journal,
    known_children: list[int] | None = None,
) -> list[tuple[int, int, str]]:
    """Decrement the unfinished-parent count of the parents' children; those at zero become ready,
    or, when gated, are decided (`decisions.decide_gated`): a skipped one releases its own
    children in turn (those its skip does not decide alone), down the graph, in this
    transaction.

    `known_children` lists the children of `parent_ids` (one entry per edge) when the caller knows
    them from the template, which saves reading the edges. Returns (step_id, task_id, name) of each
    step that became ready.
    """
    readied: list[tuple[int, int, str]] = []
    while parent_ids:
        waiting = _release(conn, parent_ids, journal, known_children, readied)
        if not waiting:
            break
        decided = decide_gated(conn, journal, waiting)
        readied += decided.readied
        parent_ids, known_children = decided.skipped, decided.released
    return readied


def _release(
    conn: Connection,
    parent_ids: list[int],
    journal: Journal,
    known_children: list[int] | None,
    readied: list[tuple[int, int, str]],
) -> list[tuple[int, int, str]]:
    """One generation of `release_children`: returns the gated children that wait for a
    decision."""
    if known_children is None:
        known_children = list(conn.execute(_CHILDREN, {"parents": parent_ids}).scalars())
    by_count: dict[int, list[int]] = {}
    for child, n in Counter(known_children).items():
        by_count.setdefault(n, []).append(child)
    waiting: list[tuple[int, int, str]] = []
    for n, children in by_count.items():
        for r in conn.execute(_RELEASE, {"children": children, "n": n, "now": journal.now}):
            if r.state == StepState.READY:
                readied.append((r.id, r.task_id, r.name))
                journal.step(r.id, r.task_id, StepState.PENDING, StepState.READY, 0)
                if journal.collect:
                    journal.event(
                        "step.ready", {"task_id": r.task_id, "step_id": r.id, "step": r.name}
                    )
            elif r.gated and r.pending_parents <= 0 and r.state == StepState.PENDING:
                waiting.append((r.id, r.task_id, r.name))
    return waiting


def settle_tasks(
    conn: Connection, task_ids: Iterable[int], journal: Journal, *, lock: bool = False
) -> list[tuple[int, str]]:
    """Finalize the tasks whose steps are all settled; reopen an `error` task that has work again.

    With `lock` (PostgreSQL workers), the tasks' rows are locked first, in id order, so that of two
    siblings finishing at once in two workers, the second to count sees the first's committed state
    and the task settles exactly once. Returns (task_id, new status) for each task whose status
    changed.
    """
    ids = sorted(set(task_ids))
    if not ids:
        return []
    if lock:
        conn.execute(_LOCK, {"ids": ids}).all()
    counts: dict[int, TaskCounts] = {}
    statuses: dict[int, str] = {}
    parents: dict[int, int] = {}
    for task_id, task_status, parent_step, state, is_undo, undo, stops, n in conn.execute(
        _COUNTS, {"ids": ids}
    ):
        statuses[task_id] = task_status
        if parent_step is not None:
            parents[task_id] = parent_step
        step_counts = counts.setdefault(task_id, TaskCounts())
        if state is not None:
            step_counts.add(
                state, int(n), is_undo=bool(is_undo), undo=bool(undo), stops=bool(stops)
            )
    changed: list[tuple[int, str]] = []
    for task_id in sorted(statuses):
        status = TaskState(statuses[task_id])
        target = settle_move(status, counts[task_id])
        if target is None:
            continue
        finished = journal.now if target in FINISHED_TASK_STATES else None
        conn.execute(
            _SET_STATUS,
            {
                "task_id": task_id,
                "status": target.value,
                "finished_at": finished,
                "now": journal.now,
            },
        )
        journal.task(task_id, status, target)
        changed.append((task_id, target.value))
        journal.task_settled(task_id, status.value, target.value)
        if task_id in parents and target in FINISHED_TASK_STATES:
            wake_parent(conn, journal, parents[task_id])
    return changed


def wake_parent(conn: Connection, journal: Journal, step_id: int) -> None:
    """Give a parked `task:` step a `run_at` now that its child settled (and tell the workers)."""
    if conn.execute(WAKE_PARENT, {"step_id": step_id, "now": journal.now}).first() is not None:
        journal.readied.add(step_id)
