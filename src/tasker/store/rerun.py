"""Re-running a failed task from one of its steps: "deploy the fix, then run again from the failed
step" (Step Functions' redrive, DBOS's fork), as one transaction.

The step and every step downstream of it go back to the start with fresh attempts (the step
`ready`, its descendants `pending` on the parents they wait for again), their results, errors and
decisions cleared; everything upstream keeps its results, which the re-run reads. Each move is a
transition row with the operator's reason, and the task goes back to `pending`.

Only a task in `error` is re-run: its finished steps are the engine's to redo. A running task is
refused (its steps would race the re-run), a finished one too (complete, cancelled, resolved and
compensated tasks are counted for good by the analytics: create a new task instead), and so is a
re-run through a fan-out or a sub-workflow step, whose instances and child task this first version
does not redo.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection

from tasker.domain.errors import NotFoundError, OperationError
from tasker.domain.graph import children_of, reachable
from tasker.domain.states import SATISFIED_STEP_STATES, StepState, TaskState, check_task_transition
from tasker.store.compensations import task_template
from tasker.store.journal import Journal
from tasker.store.operations import task_status
from tasker.store.schema import steps, tasks

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
    special = [n for n in parents if n in names and _redone_elsewhere(template.step(n))]
    if special:
        raise OperationError(
            f"re-running task {task_id} from '{step_name}' would redo {', '.join(special)}, a"
            " fan-out or sub-workflow step, which a re-run does not redo yet; fix: re-run from a"
            " step after it, or create a new task"
        )
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
    params: list[dict[str, Any]] = []
    for name in order:
        first = name == step_name
        waits_for = sum(
            1 for p in parents[name] if p in names or state_of.get(p) not in SATISFIED_STEP_STATES
        )
        target = StepState.READY if first else StepState.PENDING
        params.append(
            {
                "step_id": by_name[name].id,
                "target": target.value,
                "pending": 0 if first else waits_for,
                "run_at": now if first else None,
                "now": now,
            }
        )
        journal.step(by_name[name].id, task_id, None, target, 0, reason=why)
    conn.execute(_REARM, params)
    check_task_transition(status, TaskState.PENDING)
    conn.execute(
        update(tasks)
        .where(tasks.c.id == task_id)
        .values(status=TaskState.PENDING.value, finished_at=None, updated_at=now)
    )
    journal.task(task_id, status, TaskState.PENDING, why)
    journal.event("task.retried", {"task_id": task_id, "steps": order, "from_step": step_name})
    journal.readied.add(by_name[step_name].id)
    return order


def _redone_elsewhere(step: Any) -> bool:
    return step.foreach is not None or step.task is not None


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
