"""Deciding gated steps in the transaction that finished their last parent.

A gated step (`tasker.domain.control.gated`) stays `pending` when its parents' completion brings its
count of unfinished parents to zero; `readiness.release_children` hands it here, in the same
transaction. The decision reads only that step's parents, the results its condition names and its
task's context (`tasker.domain.control.decide` makes it), then the step becomes `ready`, `skipped`
(a skip finishes it: its own children are released in turn) or `error` (its condition failed).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection

from tasker.domain.control import CONDITION_ERROR, Decision, StepControl, Verdict, decide
from tasker.domain.records import FailureRecord
from tasker.domain.states import StepState
from tasker.domain.storable import MAX_MESSAGE_CHARS, storable_text
from tasker.domain.templates import TaskTemplate
from tasker.store.journal import Journal
from tasker.store.schema import steps, tasks, templates

_RAN = (StepState.COMPLETE.value, StepState.RESOLVED_MANUALLY.value)
_TASKS = (
    select(tasks.c.id, tasks.c.template_id, tasks.c.context, templates.c.content_hash)
    .select_from(tasks.join(templates, templates.c.id == tasks.c.template_id))
    .where(tasks.c.id.in_(bindparam("ids", expanding=True)))
)
_READS = select(steps.c.task_id, steps.c.name, steps.c.state, steps.c.results).where(
    steps.c.task_id.in_(bindparam("ids", expanding=True)),
    steps.c.name.in_(bindparam("names", expanding=True)),
)
_DEFINITION = select(templates.c.definition).where(templates.c.id == bindparam("template_id"))
_MOVE = (
    update(steps)
    .where(steps.c.id == bindparam("step_id"), steps.c.state == StepState.PENDING.value)
    .values(
        state=bindparam("target"),
        run_at=bindparam("run_at"),
        finished_at=bindparam("finished_at"),
        last_error=bindparam("error"),
        decision=bindparam("decision"),
        updated_at=bindparam("now"),
    )
)

#: Each template snapshot's controls by its content hash, compiled once per process: a hash names
#: one definition in every store (an id does not: two stores, or a wiped one, reuse ids).
_CONTROLS: dict[str, dict[str, StepControl]] = {}
_LOCK = threading.Lock()


def controls_of(conn: Connection, template_id: int, digest: str) -> dict[str, StepControl]:
    """The control-flow rules of a stored template snapshot's steps (`digest`: its hash)."""
    found = _CONTROLS.get(digest)
    if found is None:
        definition = conn.execute(_DEFINITION, {"template_id": template_id}).scalar_one()
        found = TaskTemplate.from_snapshot(definition).controls()
        with _LOCK:
            _CONTROLS[digest] = found
    return found


def condition_failure(reason: str) -> FailureRecord:
    """The stored failure of a step whose condition could not be decided."""
    return {
        "class": CONDITION_ERROR,
        "message": storable_text(reason, MAX_MESSAGE_CHARS),
        "retryable": False,
        "system_fault": False,
        "no_system_evidence": True,
    }


def decide_gated(
    conn: Connection, journal: Journal, waiting: Sequence[tuple[int, int, str]]
) -> tuple[list[tuple[int, int, str]], list[int]]:
    """Decide the gated steps in `waiting`, (step_id, task_id, name) of steps whose parents are
    all finished. Returns the steps made ready, as `release_children` does, and the ids of those
    skipped (finished: their children are to be released)."""
    task_ids = sorted({task_id for _, task_id, _ in waiting})
    found: dict[int, tuple[int, Any, str]] = {
        r.id: (r.template_id, r.context, r.content_hash)
        for r in conn.execute(_TASKS, {"ids": task_ids})
    }
    controls = {
        (step_id, task_id): controls_of(conn, found[task_id][0], found[task_id][2])[name]
        for step_id, task_id, name in waiting
    }
    names = sorted({n for c in controls.values() for n in c.reads})
    seen: dict[tuple[int, str], tuple[str, Any]] = {}
    if names:
        for r in conn.execute(_READS, {"ids": task_ids, "names": names}):
            seen[(r.task_id, r.name)] = (r.state, r.results)
    readied: list[tuple[int, int, str]] = []
    skipped: list[int] = []
    for step_id, task_id, name in waiting:
        control = controls[(step_id, task_id)]
        parents = {p: seen[(task_id, p)][0] for p in control.parents}
        results = {}
        if control.when is not None:
            for ref in control.when.steps:
                state, value = seen.get((task_id, ref), (None, None))
                if state in _RAN:
                    results[ref] = value if value is not None else {}
        decision = decide(control, parents, found[task_id][1], results)
        if _apply(conn, journal, step_id, task_id, name, decision):
            if decision.verdict == Verdict.RUN:
                readied.append((step_id, task_id, name))
            elif decision.verdict == Verdict.SKIP:
                skipped.append(step_id)
    return readied, skipped


def _apply(
    conn: Connection, journal: Journal, step_id: int, task_id: int, name: str, decision: Decision
) -> bool:
    """Store one decision (fenced on the step being `pending`); False when it was not."""
    now = journal.now
    error: FailureRecord | None = None
    if decision.verdict == Verdict.RUN:
        target, run_at, finished = StepState.READY, now, None
    elif decision.verdict == Verdict.SKIP:
        target, run_at, finished = StepState.SKIPPED, None, now
    else:
        target, run_at, finished = StepState.ERROR, None, now
        error = condition_failure(decision.reason)
    reason = storable_text(decision.reason, MAX_MESSAGE_CHARS) if decision.reason else None
    params = {
        "decision": reason,
        "step_id": step_id,
        "target": target.value,
        "run_at": run_at,
        "finished_at": finished,
        "error": error,
        "now": now,
    }
    if not conn.execute(_MOVE, params).rowcount:
        return False
    journal.step(step_id, task_id, StepState.PENDING, target, 0, error, reason=reason)
    payload: dict[str, Any] = {"task_id": task_id, "step_id": step_id, "step": name}
    if target == StepState.READY:
        journal.event("step.ready", payload)
    elif target == StepState.SKIPPED:
        journal.event("step.skipped", {**payload, "reason": reason})
    else:
        journal.event("step.failed", {**payload, "attempt": 0, "error": error})
    return True
