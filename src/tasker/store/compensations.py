"""Writing a task's compensations: the undo rows of a task that is `compensating`.

A task enters `compensating` in a settle (a failure with completed steps to undo, on any path,
the driver-level ones included) or by an operator's cancel with compensation or compensate; the
undo rows are then written by `plan_undos`, in a transaction of its own for a settle (the worker
that settled the task calls it at once; a sweep catches a task whose worker died in between) and
in the operator's transaction otherwise. The plan is `tasker.domain.compensation.plan_compensation`:
one row per completed step whose template declares a `compensation`, named `undo:<step>`, with
`compensates` set to the step's id and the step's results in `item` (the handler's
`ctx.forward_results`), waiting for the undos of the step's nearest undone descendants through
ordinary edges. From there they are steps like any other: claimed, leased, retried, fenced.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, exists, insert, select, update
from sqlalchemy.engine import Connection

from tasker.domain.compensation import plan_compensation, undo_name
from tasker.domain.control import parse_instance
from tasker.domain.errors import NotFoundError
from tasker.domain.states import StepState, TaskState, check_task_transition
from tasker.domain.templates import TaskTemplate
from tasker.store.journal import Journal
from tasker.store.schema import step_edges, steps, tasks, templates
from tasker.store.step_keys import step_idempotency_key

_TASK = (
    select(
        tasks.c.id,
        tasks.c.status,
        tasks.c.namespace,
        tasks.c.name,
        tasks.c.idempotency_key,
        tasks.c.template_id,
        templates.c.content_hash,
        templates.c.definition,
    )
    .select_from(tasks.join(templates, templates.c.id == tasks.c.template_id))
    .where(tasks.c.id == bindparam("task_id"))
)
_LOCK = select(tasks.c.id).where(tasks.c.id == bindparam("task_id")).with_for_update()
_STEPS = select(
    steps.c.id,
    steps.c.name,
    steps.c.state,
    steps.c.position,
    steps.c.namespace,
    steps.c.dependent_system,
    steps.c.retry_limit,
    steps.c.retryable,
    steps.c.results,
    steps.c.finished_at,
    steps.c.instance_of,
    steps.c.compensates,
    steps.c.priority,
    steps.c.concurrency_key,
).where(steps.c.task_id == bindparam("task_id"))
_EDGES = select(step_edges.c.parent_id, step_edges.c.child_id).where(
    step_edges.c.task_id == bindparam("task_id")
)
_HAS_UNDOS = select(
    exists().where(steps.c.task_id == bindparam("task_id"), steps.c.compensates.is_not(None))
)
_INSERT = insert(steps).returning(steps.c.id, steps.c.name, sort_by_parameter_order=True)
_SET_STATUS = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"))
    .values(status=bindparam("status"), finished_at=None, updated_at=bindparam("now"))
)
#: Tasks left `compensating` without undo rows (their settling worker died before writing them).
UNPLANNED = (
    select(tasks.c.id)
    .where(
        tasks.c.status == TaskState.COMPENSATING.value,
        ~exists().where(steps.c.task_id == tasks.c.id, steps.c.compensates.is_not(None)),
    )
    .order_by(tasks.c.id)
    .limit(100)
)

#: Template snapshots by content hash, parsed once per process (as `decisions` does).
_TEMPLATES: dict[str, TaskTemplate] = {}
_TEMPLATES_LOCK = threading.Lock()


@dataclass(frozen=True)
class _Row:
    """A step row of the task, as the plan reads it."""

    id: int
    name: str
    state: str
    position: int
    namespace: str
    dependent_system: str
    retry_limit: int
    retryable: bool
    results: Any
    finished_at: Any
    instance_of: int | None
    #: Its task's priority and fair-share key, which its undo row carries too.
    priority: int = 0
    concurrency_key: str | None = None


def template_of(content_hash: str, definition: dict[str, Any]) -> TaskTemplate:
    found = _TEMPLATES.get(content_hash)
    if found is None:
        found = TaskTemplate.from_snapshot(definition)
        with _TEMPLATES_LOCK:
            _TEMPLATES[content_hash] = found
    return found


def task_template(conn: Connection, task_id: int) -> TaskTemplate:
    """The template snapshot a task was created with (parsed once per process); `NotFoundError`
    for an unknown task."""
    task = conn.execute(_TASK, {"task_id": task_id}).first()
    if task is None:
        raise NotFoundError(f"no task with id {task_id}; fix: list tasks with 'tasker tasks list'")
    return template_of(task.content_hash, task.definition)


def has_undos(conn: Connection, task_id: int) -> bool:
    return bool(conn.execute(_HAS_UNDOS, {"task_id": task_id}).scalar())


def undoable_steps(conn: Connection, task_id: int) -> list[str]:
    """The steps of a task that a compensation would undo now (completed, with a compensation
    declared), in plan order: what an operator's compensate is refused without."""
    task = conn.execute(_TASK, {"task_id": task_id}).one()
    template = template_of(task.content_hash, task.definition)
    rows = _rows(conn, task_id)
    return list(_plan(template, rows, _parents(conn, task_id, rows)).steps)


def undoes_failure(conn: Connection, task_id: int) -> bool:
    """Whether a task that fails now compensates: its template undoes failures (`on_failure`
    is not `stop`) and completed steps declare compensations."""
    task = conn.execute(_TASK, {"task_id": task_id}).one()
    template = template_of(task.content_hash, task.definition)
    if not template.compensates_on_failure:
        return False
    rows = _rows(conn, task_id)
    return bool(_plan(template, rows, _parents(conn, task_id, rows)).steps)


def plan_undos(conn: Connection, journal: Journal, task_ids: Sequence[int], *, lock: bool) -> int:
    """Write the undo rows of each task in `task_ids` that is `compensating` and has none yet;
    returns how many rows were written. A task with nothing left to undo ends in `error` (its
    failure stands). Idempotent: a task planned already, or no longer compensating, is passed
    over, so the settling worker and the sweep may both try."""
    written = 0
    for task_id in sorted(set(task_ids)):
        if lock:
            conn.execute(_LOCK, {"task_id": task_id}).all()
        task = conn.execute(_TASK, {"task_id": task_id}).first()
        if task is None or task.status != TaskState.COMPENSATING or has_undos(conn, task_id):
            continue
        written += _write(conn, journal, task, template_of(task.content_hash, task.definition))
    return written


def _rows(conn: Connection, task_id: int) -> list[_Row]:
    return [
        _Row(
            r.id,
            r.name,
            r.state,
            r.position,
            r.namespace,
            r.dependent_system,
            r.retry_limit,
            r.retryable,
            r.results,
            r.finished_at,
            r.instance_of,
            r.priority,
            r.concurrency_key,
        )
        for r in conn.execute(_STEPS, {"task_id": task_id})
        if r.compensates is None
    ]


def _parents(conn: Connection, task_id: int, rows: list[_Row]) -> dict[str, list[str]]:
    """Each step's parents by name; a fan-out's instance also has its fan-out step's parents (its
    edges lead only to its step and, under `max_parallel`, to its next sibling)."""
    name_of = {r.id: r.name for r in rows}
    parents: dict[str, list[str]] = {r.name: [] for r in rows}
    for parent_id, child_id in conn.execute(_EDGES, {"task_id": task_id}):
        if parent_id in name_of and child_id in name_of:
            parents[name_of[child_id]].append(name_of[parent_id])
    for r in rows:
        if r.instance_of is not None and r.instance_of in name_of:
            step = name_of[r.instance_of]
            inherited = [p for p in parents[step] if parse_instance(p) is None]
            parents[r.name] = sorted(set(parents[r.name]) | set(inherited))
    return parents


def _plan(template: TaskTemplate, rows: list[_Row], parents: dict[str, list[str]]) -> Any:
    declares = {r.name for r in rows if template.compensation_of(r.name) is not None}
    return plan_compensation(
        parents,
        {r.name: r.state for r in rows},
        declares,
        {r.name: r.finished_at for r in rows if r.finished_at is not None},
    )


def _write(conn: Connection, journal: Journal, task: Any, template: TaskTemplate) -> int:
    now = journal.now
    rows = _rows(conn, task.id)
    plan = _plan(template, rows, _parents(conn, task.id, rows))
    if not plan.steps:  # nothing of the engine's to undo (a race with an operator's action)
        check_task_transition(TaskState.COMPENSATING, TaskState.ERROR)
        conn.execute(_SET_STATUS, {"task_id": task.id, "status": TaskState.ERROR.value, "now": now})
        journal.task(task.id, TaskState.COMPENSATING, TaskState.ERROR, "nothing to undo")
        return 0
    by_name = {r.name: r for r in rows}
    values = []
    for name in plan.steps:
        forward = by_name[name]
        comp = template.compensation_of(name)
        assert comp is not None
        waits = len(plan.waits_for[name])
        values.append(
            {
                "task_id": task.id,
                "name": undo_name(name),
                "position": forward.position,
                "namespace": forward.namespace,
                "dependent_system": comp.dependent_system or forward.dependent_system,
                "state": StepState.PENDING.value if waits else StepState.READY.value,
                "pending_parents": waits,
                "run_at": None if waits else now,
                "attempts": 0,
                "retry_limit": comp.retry_limit or forward.retry_limit,
                "retryable": forward.retryable,
                "claim_token": 0,
                "idempotency_key": step_idempotency_key(
                    task.namespace, task.name, task.idempotency_key, undo_name(name)
                ),
                "created_at": now,
                "updated_at": now,
                "compensates": forward.id,
                "item": forward.results if forward.results is not None else {},
                "priority": forward.priority,
                "concurrency_key": forward.concurrency_key,
            }
        )
    ids = {r.name: r.id for r in conn.execute(_INSERT, values)}
    edges = [
        {"task_id": task.id, "parent_id": ids[undo_name(w)], "child_id": ids[undo_name(name)]}
        for name in plan.steps
        for w in plan.waits_for[name]
    ]
    if edges:
        conn.execute(insert(step_edges), edges)
    for v in values:
        journal.step(ids[v["name"]], task.id, None, StepState(v["state"]), 0)
    for v in values:
        if v["state"] == StepState.READY.value:
            journal.readied.add(ids[v["name"]])
    return len(values)
