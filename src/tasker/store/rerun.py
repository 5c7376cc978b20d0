"""Re-running a failed task from one of its steps: "deploy the fix, then run again from the failed
step" (Step Functions' redrive, DBOS's fork), as one transaction.

The step and every step downstream of it go back to the start with fresh attempts (the step
`ready`, its descendants `pending` on the parents they wait for again), their results, errors and
decisions cleared; everything upstream keeps its results, which the re-run reads. Each move is a
transition row with the operator's reason, and the task goes back to `pending`.

A fan-out step among them is expanded again when its parents complete: its earlier instances are
deleted with their edges and transition rows (the fan-out's re-arm transition says how many, in
which states), so the new instances take their names. A sub-workflow (`task:`) step among them
starts a new child task: the earlier child stays a child of the task, detached from the step (no
`parent_step_id`, its idempotency key suffixed with `~<its id>`, which frees the step's key for
the new child). A re-run from a gated step (a condition, a join, a fan-out) decides it again in
this transaction, as its parents' completion would.

Only a task in `error` is re-run: its finished steps are the engine's to redo. A running task is
refused (its steps would race the re-run), and a finished one too (complete, cancelled, resolved
and compensated tasks are counted for good by the analytics: create a new task instead).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import String, bindparam, cast, delete, or_, select, update
from sqlalchemy.engine import Connection

from tasker.domain.errors import NotFoundError, OperationError
from tasker.domain.graph import children_of, reachable
from tasker.domain.states import SATISFIED_STEP_STATES, StepState, TaskState, check_task_transition
from tasker.store.compensations import task_template
from tasker.store.decisions import decide_gated
from tasker.store.journal import Journal
from tasker.store.operations import task_status
from tasker.store.readiness import release_children, settle_tasks
from tasker.store.schema import step_edges, step_transitions, steps, tasks

_REARM = (
    update(steps)
    .where(steps.c.id == bindparam("step_id"))
    .values(
        state=bindparam("target"),
        pending_parents=bindparam("pending"),
        attempts=0,
        run_at=bindparam("run_at"),
        results=None,
        last_error=None,
        decision=None,
        fanout=None,
        gated=bindparam("gated"),
        wait=None,
        lease_owner=None,
        lease_expires_at=None,
        started_at=None,
        finished_at=None,
        updated_at=bindparam("now"),
    )
)


def rerun_from(
    conn: Connection,
    journal: Journal,
    task_id: int,
    step_name: str,
    *,
    lock: bool,
    reason: str | None = None,
) -> list[str]:
    """Re-arm `step_name` of a task in `error` and every step downstream of it; returns their
    names, in the template's order."""
    status = task_status(conn, task_id, lock)
    if status != TaskState.ERROR:
        raise OperationError(_refusal(task_id, status))
    template = task_template(conn, task_id)
    parents = {s.name: s.parents for s in template.step_templates}
    if step_name not in parents:
        raise NotFoundError(
            f"task {task_id} has no step '{step_name}'; steps: {', '.join(parents)}"
        )
    names = {step_name} | reachable(step_name, children_of(parents))
    rows = conn.execute(
        select(steps.c.id, steps.c.name, steps.c.state, steps.c.compensates).where(
            steps.c.task_id == task_id, steps.c.instance_of.is_(None)
        )
    ).all()
    if any(r.compensates is not None for r in rows):
        raise OperationError(
            f"task {task_id} has undone steps (its compensation failed); fix: retry or resolve"
            " the undos, or create a new task"
        )
    state_of = {r.name: r.state for r in rows}
    blocked = [p for p in parents[step_name] if state_of.get(p) not in SATISFIED_STEP_STATES]
    if blocked:
        raise OperationError(
            f"step '{step_name}' of task {task_id} waits for {', '.join(blocked)}, which did not"
            f" complete; fix: re-run from {blocked[0]} or retry the task (tasker tasks retry"
            f" {task_id})"
        )
    now = journal.now
    why = f"re-run from '{step_name}'" + (f": {reason}" if reason else "")
    order = [n for n in (s.name for s in template.step_templates) if n in names]
    by_name = {r.name: r for r in rows}
    # An expanded fan-out step is no longer gated (its instances' completion readies it): the
    # template says which steps wait for a decision again.
    gated = template.gated_steps()
    decide_first = step_name in gated  # else it is ready at once
    fanouts = [by_name[n].id for n in order if template.step(n).foreach is not None]
    dropped = _drop_instances(conn, task_id, fanouts) if fanouts else {}
    params: list[dict[str, Any]] = []
    for name in order:
        first, step_id = name == step_name, by_name[name].id
        waits_for = sum(
            1 for p in parents[name] if p in names or state_of.get(p) not in SATISFIED_STEP_STATES
        )
        target = StepState.READY if first and not decide_first else StepState.PENDING
        params.append(
            {
                "step_id": step_id,
                "target": target.value,
                "pending": 0 if first else waits_for,
                "gated": name in gated,
                "run_at": now if target == StepState.READY else None,
                "now": now,
            }
        )
        note = f"{why}; {_dropped_note(dropped[step_id])}" if step_id in dropped else why
        journal.step(step_id, task_id, None, target, 0, reason=note)
    subflows = [by_name[n].id for n in order if template.step(n).task is not None]
    detached = _detach_children(conn, task_id, subflows) if subflows else []
    conn.execute(_REARM, params)
    check_task_transition(status, TaskState.PENDING)
    conn.execute(
        update(tasks)
        .where(tasks.c.id == task_id)
        .values(status=TaskState.PENDING.value, finished_at=None, updated_at=now)
    )
    journal.task(task_id, status, TaskState.PENDING, why)
    event: dict[str, Any] = {"task_id": task_id, "steps": order, "from_step": step_name}
    if dropped:
        event["instances_dropped"] = sum(c.total() for c in dropped.values())
    if detached:
        event["children_detached"] = detached
    journal.event("task.retried", event)
    if decide_first:
        # Decided as its parents' completion would decide it: ready, skipped (with what that skip
        # decides downstream), failed, or expanded into instances.
        decided = decide_gated(conn, journal, [(by_name[step_name].id, task_id, step_name)])
        release_children(conn, decided.skipped, journal, decided.released)
        settle_tasks(conn, [task_id], journal)  # a re-run that skipped everything is over
    return order


def _drop_instances(conn: Connection, task_id: int, fanouts: list[int]) -> dict[int, Counter[str]]:
    """Delete the instances of the fan-out steps `fanouts`, with their edges and transition rows
    (an SQLite store may give a new row the id of a deleted one, so rows left behind could be
    taken for the new instances'). Returns, per fan-out step that had instances, how many were
    dropped in each state."""
    rows = conn.execute(
        select(steps.c.id, steps.c.instance_of, steps.c.state).where(
            steps.c.task_id == task_id, steps.c.instance_of.in_(fanouts)
        )
    ).all()
    if not rows:
        return {}
    # By subquery, not a list of ids: a fan-out may have thousands of instances.
    mine = (steps.c.task_id == task_id, steps.c.instance_of.in_(fanouts))
    ids = select(steps.c.id).where(*mine)
    conn.execute(
        delete(step_edges).where(
            step_edges.c.task_id == task_id,
            or_(step_edges.c.parent_id.in_(ids), step_edges.c.child_id.in_(ids)),
        )
    )
    conn.execute(  # by the task's index: the table has none on the step alone
        delete(step_transitions).where(
            step_transitions.c.task_id == task_id, step_transitions.c.step_id.in_(ids)
        )
    )
    conn.execute(delete(steps).where(*mine))
    states: dict[int, Counter[str]] = {}
    for r in rows:
        states.setdefault(r.instance_of, Counter())[r.state] += 1
    return states


def _dropped_note(states: Counter[str]) -> str:
    """What a fan-out's re-arm dropped, for its transition's reason."""
    n = states.total()
    return f"{n} instance{'s' if n != 1 else ''} dropped: " + ", ".join(
        f"{count} {state}" for state, count in sorted(states.items())
    )


def _detach_children(conn: Connection, task_id: int, subflows: list[int]) -> list[int]:
    """Detach the child tasks of the `task:` steps `subflows` from their steps, so that each step
    starts a new child: they stay children of the task, their idempotency keys suffixed with their
    own ids (the new child takes the step's key). Returns their ids."""
    children = list(
        conn.execute(
            select(tasks.c.id)
            .where(tasks.c.parent_task_id == task_id, tasks.c.parent_step_id.in_(subflows))
            .order_by(tasks.c.id)
        ).scalars()
    )
    if children:
        conn.execute(
            update(tasks)
            .where(tasks.c.id.in_(children))
            .values(
                parent_step_id=None,
                idempotency_key=tasks.c.idempotency_key + "~" + cast(tasks.c.id, String),
            )
        )
    return children


def _refusal(task_id: int, status: TaskState) -> str:
    if status in (TaskState.PENDING, TaskState.IN_PROGRESS, TaskState.COMPENSATING):
        return (
            f"task {task_id} is {status}: a re-run would race its running steps; wait until it"
            f" ends in error, or cancel it first (tasker tasks cancel {task_id})"
        )
    return (
        f"task {task_id} is {status}; only a task in error is re-run from a step (a finished one"
        " is counted for good: create a new task with the same context instead)"
    )
