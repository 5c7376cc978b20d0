"""Operator actions: cancel a task, retry a failed one or one step, resolve a step by hand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection

from tasker.domain.control import CONDITION_ERROR
from tasker.domain.deadlines import DEADLINE_EXCEEDED
from tasker.domain.errors import NotFoundError, OperationError
from tasker.domain.states import (
    FINISHED_TASK_STATES,
    SATISFIED_STEP_STATES,
    STEP_TRANSITIONS,
    StepState,
    TaskState,
    can_transition_step,
    check_task_transition,
)
from tasker.store import compensations
from tasker.store.journal import Journal
from tasker.store.readiness import release_children, settle_tasks
from tasker.store.schema import step_edges, steps, tasks

_CANCELLABLE = sorted(s.value for s in StepState if StepState.CANCELLED in STEP_TRANSITIONS[s])


def task_status(conn: Connection, task_id: int, lock: bool) -> TaskState:
    q = select(tasks.c.status).where(tasks.c.id == task_id)
    if lock:
        # FOR NO KEY UPDATE: serialises operations and completions on the task, yet lets other
        # workers' foreign-key checks (KEY SHARE, taken when they insert a transition row) through
        # instead of queueing them behind this transaction, which deadlocked with their step locks.
        q = q.with_for_update(key_share=True)
    status = conn.execute(q).scalar()
    if status is None:
        raise NotFoundError(f"no task with id {task_id}; fix: list tasks with 'tasker tasks list'")
    return TaskState(status)


_OPEN_CHILDREN = (
    select(tasks.c.id)
    .where(
        tasks.c.parent_task_id == bindparam("task_id"),
        tasks.c.status.not_in([s.value for s in FINISHED_TASK_STATES - {TaskState.ERROR}]),
    )
    .order_by(tasks.c.id)
)


def cancel_task(
    conn: Connection,
    journal: Journal,
    task_id: int,
    *,
    lock: bool,
    reason: str | None = None,
    compensate: bool = False,
) -> None:
    """Cancel every unfinished step (a running attempt's late result is discarded) and the task;
    with `compensate`, then undo what its completed steps did (the task goes `compensating`, its
    undo rows are written in this transaction), when there is anything to undo. A task being
    compensated is cancelled with its undos (an operator stopping the undo)."""
    status = task_status(conn, task_id, lock)
    if status in FINISHED_TASK_STATES - {TaskState.ERROR}:
        raise OperationError(
            f"task {task_id} is already {status}; only unfinished or failed tasks can be cancelled"
        )

    def undo() -> bool:
        return (
            compensate
            and status != TaskState.COMPENSATING
            and not compensations.has_undos(conn, task_id)
            and bool(compensations.undoable_steps(conn, task_id))
        )

    _stop(conn, journal, task_id, status, TaskState.CANCELLED, reason, undo)
    journal.event(
        "task.cancelled", {"task_id": task_id, "from_state": status.value, "reason": reason}
    )
    # Its sub-workflows go with it (and theirs, down the tree), in this transaction.
    for child in conn.execute(_OPEN_CHILDREN, {"task_id": task_id}).scalars():
        cancel_task(
            conn,
            journal,
            child,
            lock=lock,
            reason=f"parent task {task_id} cancelled",
            compensate=compensate,
        )


def expire_task(conn: Connection, journal: Journal, task_id: int, *, lock: bool) -> bool:
    """A task past its deadline: cancel its unfinished steps (a running attempt's late result is
    discarded) and end it in `error` with reason `deadline_exceeded`, or `compensating` when its
    template undoes a failure and completed steps declare compensations. Its sub-workflows are
    cancelled. False (nothing done) when it finished meanwhile."""
    status = task_status(conn, task_id, lock)
    if status not in (TaskState.PENDING, TaskState.IN_PROGRESS):
        return False
    _stop(
        conn,
        journal,
        task_id,
        status,
        TaskState.ERROR,
        DEADLINE_EXCEEDED,
        lambda: compensations.undoes_failure(conn, task_id),
    )
    for child in conn.execute(_OPEN_CHILDREN, {"task_id": task_id}).scalars():
        cancel_task(
            conn, journal, child, lock=lock, reason=f"parent task {task_id} {DEADLINE_EXCEEDED}"
        )
    return True


def _stop(
    conn: Connection,
    journal: Journal,
    task_id: int,
    status: TaskState,
    target: TaskState,
    reason: str | None,
    undoes: Callable[[], bool],
) -> None:
    """Cancel a task's unfinished steps and move it to `target`, or to `compensating` (its undo
    rows written now) when `undoes()` says so once the steps are cancelled."""
    now = journal.now
    cancelled = conn.execute(
        update(steps)
        .where(steps.c.task_id == task_id, steps.c.state.in_(_CANCELLABLE))
        .values(
            state=StepState.CANCELLED,
            lease_owner=None,
            lease_expires_at=None,
            finished_at=now,
            updated_at=now,
        )
        .returning(steps.c.id, steps.c.name, steps.c.attempts)
    ).all()
    for r in cancelled:
        journal.step(r.id, task_id, None, StepState.CANCELLED, r.attempts, reason=reason)
        journal.event("step.cancelled", {"task_id": task_id, "step_id": r.id, "step": r.name})
    undo = undoes()
    if undo:
        target = TaskState.COMPENSATING
    check_task_transition(status, target)
    conn.execute(
        update(tasks)
        .where(tasks.c.id == task_id)
        .values(status=target, finished_at=None if undo else now, updated_at=now)
    )
    journal.task(task_id, status, target, reason)
    if undo or target != TaskState.CANCELLED:
        journal.task_settled(task_id, status.value, target.value)
    if undo:
        compensations.plan_undos(conn, journal, [task_id], lock=False)


def compensate_task(conn: Connection, journal: Journal, task_id: int, *, lock: bool) -> int:
    """Undo what the completed steps of a task in `error` did (an operator's compensate of a task
    whose template says `on_failure: stop`, or that failed before it declared compensations);
    returns how many undo rows were written."""
    status = task_status(conn, task_id, lock)
    if status != TaskState.ERROR:
        raise OperationError(
            f"task {task_id} is {status}; only a task in error can be compensated (cancel a"
            f" running one with compensation: tasker tasks cancel {task_id} --compensate)"
        )
    if compensations.has_undos(conn, task_id):
        raise OperationError(
            f"task {task_id} was compensated already and an undo failed; fix: retry it"
            f" (tasker tasks retry {task_id}) or resolve it by hand"
        )
    if not compensations.undoable_steps(conn, task_id):
        raise OperationError(
            f"task {task_id} has nothing to undo: no completed step declares a compensation"
        )
    check_task_transition(status, TaskState.COMPENSATING)
    conn.execute(
        update(tasks)
        .where(tasks.c.id == task_id)
        .values(status=TaskState.COMPENSATING, finished_at=None, updated_at=journal.now)
    )
    journal.task(task_id, status, TaskState.COMPENSATING, "compensated by an operator")
    journal.task_settled(task_id, status.value, TaskState.COMPENSATING.value)
    return compensations.plan_undos(conn, journal, [task_id], lock=lock)


def _condition_failed(last_error: Any) -> bool:
    return isinstance(last_error, dict) and last_error.get("class") == CONDITION_ERROR


def condition_retry_message(task_id: int, names: list[str]) -> str:
    """The refusal to retry steps whose condition failed (pure, for tests)."""
    noun = "step" if len(names) == 1 else "steps"
    listed = ", ".join(repr(n) for n in names)
    return (
        f"{noun} {listed} of task {task_id} failed deciding a condition, and a retry would decide"
        " the same (the context and the results it reads do not change); fix: resolve the step by"
        f" hand (tasker tasks resolve {task_id} {names[0]} --result '{{}}') or cancel the task"
    )


def retry_task(conn: Connection, journal: Journal, task_id: int, *, lock: bool) -> int:
    """Re-arm every `error` step of a failed task with fresh attempts; returns how many. A step
    whose condition failed (`CONDITION_ERROR`) stays in error: deciding it again would fail the
    same way; it is refused when it is all there is to retry. Of a task whose compensation failed,
    only the failed undos are re-armed (the task compensates again); a compensated task is
    refused."""
    now = journal.now
    status = task_status(conn, task_id, lock)
    if status == TaskState.COMPENSATED:
        raise OperationError(
            f"task {task_id} is compensated: its completed steps were undone, and running it"
            " again would redo them on top of their undos; fix: create a new task"
        )
    if status != TaskState.ERROR:
        raise OperationError(f"task {task_id} is {status}; only a task in error can be retried")
    failed = conn.execute(
        select(steps.c.id, steps.c.name, steps.c.last_error, steps.c.compensates)
        .where(steps.c.task_id == task_id, steps.c.state == StepState.ERROR)
        .order_by(steps.c.position)
    ).all()
    if any(r.compensates is not None for r in failed):
        # A task whose undo failed: retrying is retrying the undos, not the steps they undo.
        failed = [r for r in failed if r.compensates is not None]
    undecided = [r.name for r in failed if _condition_failed(r.last_error)]
    if undecided and len(undecided) == len(failed):
        raise OperationError(condition_retry_message(task_id, undecided))
    rearmed = conn.execute(
        update(steps)
        .where(
            steps.c.id.in_([r.id for r in failed if r.name not in undecided]),
            steps.c.state == StepState.ERROR,
        )
        .values(state=StepState.READY, attempts=0, run_at=now, finished_at=None, updated_at=now)
        .returning(steps.c.id, steps.c.name)
    ).all()
    journal.event("task.retried", {"task_id": task_id, "steps": [r.name for r in rearmed]})
    for r in rearmed:
        journal.step(r.id, task_id, StepState.ERROR, StepState.READY, 0)
        journal.event("step.ready", {"task_id": task_id, "step_id": r.id, "step": r.name})
    settle_tasks(conn, [task_id], journal)
    return len(rearmed)


def retry_step(
    conn: Connection, journal: Journal, task_id: int, step_name: str, *, lock: bool
) -> None:
    """Re-arm one `error` step with fresh attempts.

    A step reaches `error` only by running, so its parents were finished then and, finished states
    being final, still are; the check is kept anyway so that no operator action can ever make a step
    ready ahead of its parents.
    """
    task_status(conn, task_id, lock)
    row = _step(conn, task_id, step_name)
    if row.state != StepState.ERROR:
        raise OperationError(
            f"step '{step_name}' of task {task_id} is {row.state}; only a step in error can be"
            " retried"
        )
    if _condition_failed(row.last_error):
        raise OperationError(condition_retry_message(task_id, [step_name]))
    _require_finished_parents(conn, task_id, row.id, step_name, "retried")
    conn.execute(
        update(steps)
        .where(steps.c.id == row.id)
        .values(
            state=StepState.READY,
            attempts=0,
            run_at=journal.now,
            finished_at=None,
            updated_at=journal.now,
        )
    )
    journal.step(row.id, task_id, StepState.ERROR, StepState.READY, 0)
    journal.event("step.ready", {"task_id": task_id, "step_id": row.id, "step": step_name})
    settle_tasks(conn, [task_id], journal)


def resolve_step(
    conn: Connection,
    journal: Journal,
    task_id: int,
    step_name: str,
    results: dict[str, Any],
    *,
    lock: bool,
) -> None:
    """An operator supplies the step's result; its dependents proceed as if it had completed."""
    status = task_status(conn, task_id, lock)
    if status in FINISHED_TASK_STATES - {TaskState.ERROR}:
        raise OperationError(f"task {task_id} is {status}; its steps can no longer be resolved")
    row = _step(conn, task_id, step_name)
    src = StepState(row.state)
    if not can_transition_step(src, StepState.RESOLVED_MANUALLY):
        hint = (
            " (it is running: wait for the attempt or cancel the task)"
            if src == StepState.IN_PROGRESS
            else ""
        )
        raise OperationError(
            f"step '{step_name}' of task {task_id} is {src} and cannot be resolved{hint}"
        )
    _require_finished_parents(conn, task_id, row.id, step_name, "resolved")
    conn.execute(
        update(steps)
        .where(steps.c.id == row.id)
        .values(
            state=StepState.RESOLVED_MANUALLY,
            results=results,
            run_at=None,
            finished_at=journal.now,
            updated_at=journal.now,
        )
    )
    journal.step(row.id, task_id, src, StepState.RESOLVED_MANUALLY, row.attempts)
    journal.event("step.resolved", {"task_id": task_id, "step_id": row.id, "step": step_name})
    release_children(conn, [row.id], journal)
    settle_tasks(conn, [task_id], journal)


_UNFINISHED_PARENTS = (
    select(steps.c.name, steps.c.state)
    .select_from(step_edges.join(steps, steps.c.id == step_edges.c.parent_id))
    .where(
        step_edges.c.child_id == bindparam("child"),
        steps.c.state.not_in([s.value for s in SATISFIED_STEP_STATES]),
    )
    .order_by(steps.c.position)
)


def unfinished_parents_message(
    task_id: int, step_name: str, action: str, parents: list[tuple[str, str]]
) -> str:
    """The refusal of an operator action that would let a step overtake its parents (pure, for
    tests)."""
    listed = ", ".join(f"{name} ({state})" for name, state in parents)
    noun = "parent" if len(parents) == 1 else "parents"
    verb = "is" if len(parents) == 1 else "are"
    return (
        f"step '{step_name}' of task {task_id} cannot be {action} while its {noun} {listed} {verb}"
        f" not finished; fix: resolve or wait for the {noun} first (a step runs only after every"
        " parent is complete, resolved or skipped)"
    )


def _require_finished_parents(
    conn: Connection, task_id: int, step_id: int, step_name: str, action: str
) -> None:
    """Refuse an action that would let `step_name`'s dependents run before its own parents finished.

    Resolving a `pending` step whose parent was still running released its children at once, so a
    grandchild could run before its grandparent: the DAG order broke. The operator is told which
    parents to resolve or wait for; the action does not wait by itself (docs/operations.md).
    """
    unfinished = [(r.name, r.state) for r in conn.execute(_UNFINISHED_PARENTS, {"child": step_id})]
    if unfinished:
        raise OperationError(unfinished_parents_message(task_id, step_name, action, unfinished))


def _step(conn: Connection, task_id: int, name: str) -> Any:
    row = conn.execute(
        select(steps.c.id, steps.c.state, steps.c.attempts, steps.c.last_error).where(
            steps.c.task_id == task_id, steps.c.name == name
        )
    ).first()
    if row is None:
        q = select(steps.c.name).where(steps.c.task_id == task_id).order_by(steps.c.position)
        names = conn.execute(q).scalars()
        raise NotFoundError(f"task {task_id} has no step '{name}'; steps: {', '.join(names)}")
    return row
