"""Applying attempt outcomes: the single completion transaction.

Result, state change, transition row, children readiness and task finalization are written together,
each step fenced by its claim token (a stale worker's late outcome changes nothing), for a whole
batch of outcomes at once. The circuit breakers of the steps' dependent systems hear of the outcomes
in the same transaction (`tasker.domain.failures.system_evidence` classifies each one).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.engine import Connection

from tasker.domain.compensation import is_undo
from tasker.domain.events import Events
from tasker.domain.failures import SystemEvidence, outcome_evidence
from tasker.domain.records import Outcome
from tasker.domain.states import StepState
from tasker.store import systems
from tasker.store.journal import Journal
from tasker.store.readiness import release_children, settle_tasks
from tasker.store.schema import steps
from tasker.store.signals import record_waits

_EVENT = {
    StepState.COMPLETE: "step.completed",
    StepState.WAITING_RETRY: "step.retry_scheduled",
    StepState.ERROR: "step.failed",
    StepState.SKIPPED: "step.skipped",
}
#: The states whose outcome releases the step's children (`on_timeout: skip` ends a wait skipped).
_RELEASES = (StepState.COMPLETE, StepState.SKIPPED)
#: An undo row's outcome says what happened to the undo.
_UNDO_EVENT = {
    StepState.COMPLETE: Events.STEP_COMPENSATED,
    StepState.ERROR: Events.STEP_COMPENSATION_FAILED,
}
_FINISH = (
    update(steps)
    .where(
        steps.c.id == bindparam("step_id"),
        steps.c.claim_token == bindparam("token"),
        steps.c.state == StepState.IN_PROGRESS.value,
    )
    .values(
        state=bindparam("target"),
        results=bindparam("results"),
        last_error=bindparam("error"),
        attempts=steps.c.attempts - bindparam("refund"),
        run_at=bindparam("run_at"),
        finished_at=bindparam("finished_at"),
        lease_owner=None,
        lease_expires_at=None,
        updated_at=bindparam("now"),
    )
)


def _finish_params(o: Outcome, now: datetime) -> dict[str, Any]:
    state = StepState(o.state)
    return {
        "step_id": o.step_id,
        "token": o.claim_token,
        "target": state.value,
        "now": now,
        "results": o.results if state == StepState.COMPLETE else None,
        "error": o.error if state != StepState.COMPLETE else None,
        "run_at": (
            now + timedelta(seconds=o.retry_delay)
            if state == StepState.WAITING_RETRY and not o.parks
            else None  # a parked step waits for its child task to wake it
        ),
        "finished_at": None if state == StepState.WAITING_RETRY else now,
        "refund": 1 if o.refund_attempt else 0,
    }


_FINISH_MANY = text(f"""
    UPDATE tasker_steps AS s
       SET state = v.target, results = v.results, last_error = v.error, run_at = v.run_at,
           finished_at = v.finished_at, attempts = s.attempts - v.refund,
           lease_owner = NULL, lease_expires_at = NULL, updated_at = :now
      FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS integer[]), CAST(:targets AS text[]),
                  CAST(CAST(:results AS text[]) AS jsonb[]),
                  CAST(CAST(:errors AS text[]) AS jsonb[]),
                  CAST(:run_ats AS timestamptz[]), CAST(:finished AS timestamptz[]),
                  CAST(:refunds AS integer[]))
           AS v(id, token, target, results, error, run_at, finished_at, refund)
     WHERE s.id = v.id AND s.claim_token = v.token AND s.state = '{StepState.IN_PROGRESS.value}'
    RETURNING s.id
""")


def _finish_batch(conn: Connection, params: list[dict[str, Any]]) -> set[int]:
    """PostgreSQL: fence and store every outcome in one statement whose text never changes (arrays
    of values, unnested), so it is compiled and planned once instead of once per batch size."""

    def js(value: Any) -> str | None:
        return None if value is None else json.dumps(value)

    rows = conn.execute(
        _FINISH_MANY,
        {
            "now": params[0]["now"],
            "ids": [p["step_id"] for p in params],
            "tokens": [p["token"] for p in params],
            "targets": [p["target"] for p in params],
            "results": [js(p["results"]) for p in params],
            "errors": [js(p["error"]) for p in params],
            "run_ats": [p["run_at"] for p in params],
            "finished": [p["finished_at"] for p in params],
            "refunds": [p["refund"] for p in params],
        },
    )
    return set(rows.scalars())


#: PostgreSQL: a fan-out step's results gathered from its instances' in one statement.
_COLLECT_PG = text("""
    UPDATE tasker_steps g
       SET results = jsonb_build_object(
               'count', g.fanout,
               'results', coalesce((SELECT jsonb_agg(coalesce(i.results, '{}'::jsonb)
                                                    ORDER BY i.item_index)
                                      FROM tasker_steps i
                                     WHERE i.task_id = g.task_id AND i.instance_of = g.id),
                                   '[]'::jsonb))
     WHERE g.id = ANY(CAST(:ids AS bigint[]))
    RETURNING g.id, g.results
""")
_INSTANCE_RESULTS = (
    select(steps.c.results)
    .where(steps.c.task_id == bindparam("task_id"), steps.c.instance_of == bindparam("step_id"))
    .order_by(steps.c.item_index)
)
_SET_RESULTS = (
    update(steps).where(steps.c.id == bindparam("step_id")).values(results=bindparam("results"))
)


def collect_fanouts(conn: Connection, groups: Sequence[Outcome]) -> None:
    """Store each completed fan-out step's results, `{"count": n, "results": [...]}` with its
    instances' results in item order (`tasker.domain.control.fanout_results` reads them), and
    put them on the outcomes for the rest of the cycle."""
    if conn.dialect.name == "postgresql":
        ids = [o.step_id for o in groups]
        stored: dict[int, Any] = {r.id: r.results for r in conn.execute(_COLLECT_PG, {"ids": ids})}
        for o in groups:
            o.results = stored.get(o.step_id)
        return
    for o in groups:
        found = conn.execute(_INSTANCE_RESULTS, {"task_id": o.task_id, "step_id": o.step_id})
        values = [r or {} for r in found.scalars()]
        o.results = {"count": len(values), "results": values}
        conn.execute(_SET_RESULTS, {"step_id": o.step_id, "results": o.results})


_WAITING_FOR = (
    update(steps).where(steps.c.id == bindparam("step_id")).values(decision=bindparam("decision"))
)


def create_child(conn: Connection, journal: Journal, o: Outcome) -> None:
    """Create the child task of a `task:` step that parks, in the transaction that parks it."""
    # tasks -> sqlite_cycle -> cycle_rows -> this module: imported here, not at the top
    from tasker.store.tasks import NewTask, insert_tasks

    assert o.child is not None
    child = o.child
    (created,) = insert_tasks(
        conn,
        journal,
        child.template,
        [
            NewTask(
                child.context,
                child.idempotency_key,
                child.correlation_id,
                parent_task_id=o.task_id,
                parent_step_id=o.step_id,
                priority=child.priority,
                concurrency_key=child.concurrency_key,
            )
        ],
    )
    journal.children.append(created.id)
    why = f"waiting for child task {created.id} ({created.template_key})"
    conn.execute(_WAITING_FOR, {"step_id": o.step_id, "decision": why})
    journal.event(
        "task.child_created",
        {
            "task_id": o.task_id,
            "step_id": o.step_id,
            "step": o.step,
            "child_task_id": created.id,
            "template": created.template_key,
        },
    )


def apply_outcomes(
    conn: Connection,
    journal: Journal,
    outcomes: Sequence[Outcome],
    *,
    lock_tasks: bool,
    view: systems.SystemsView | None = None,
) -> tuple[list[Outcome], list[tuple[int, str]], list[tuple[int, int, str]]]:
    """Store outcomes.

    Returns the outcomes accepted (the others lost their claim), the tasks that settled, and the
    steps that became ready as (step_id, task_id, name).
    """
    if not outcomes:
        return [], [], []
    now = journal.now
    accepted: list[Outcome] = []
    completed: list[int] = []
    children: list[int] | None = []
    check: set[int] = set()
    if any(o.exhausted for o in outcomes):  # before anything is written: it may change their states
        systems.hold_for_outages(
            conn, journal, outcomes, view or systems.SystemsView(), lock=lock_tasks
        )
    params = [_finish_params(o, now) for o in outcomes]
    if conn.dialect.name == "postgresql" and len(params) > 1:
        taken = _finish_batch(conn, params)
    else:
        taken = {p["step_id"] for p in params if conn.execute(_FINISH, p).rowcount}
    for o in outcomes:
        if o.step_id not in taken:
            continue  # cancelled, or the lease was lost and another worker owns this step now
        state = StepState(o.state)
        accepted.append(o)
        journal.step(
            o.step_id, o.task_id, StepState.IN_PROGRESS, state, o.attempt, o.error, o.duration_ms
        )
        for name, payload in o.events:
            journal.custom(name, o.task_id, o.step_id, payload)
        if journal.collect:
            outcome_event(journal, o, state)
        if state in _RELEASES:
            completed.append(o.step_id)
            if o.children is None or children is None:
                children = None  # one parent of unknown children: read the edges for all
            else:
                children.extend(o.children)
        if state != StepState.WAITING_RETRY:
            check.add(o.task_id)
    groups = [o for o in accepted if o.collects]
    if groups:
        collect_fanouts(conn, groups)
    for o in accepted:
        if o.child is not None:
            create_child(conn, journal, o)
    record_waits(conn, journal, accepted)
    _record_systems(conn, journal, accepted, view or systems.SystemsView(), lock=lock_tasks)
    readied = release_children(conn, completed, journal, children)
    settled = settle_tasks(
        conn, check - {task_id for _, task_id, _ in readied}, journal, lock=lock_tasks
    )
    return accepted, settled, readied


def outcome_event(journal: Journal, o: Outcome, state: StepState) -> None:
    """The event of a stored outcome (`step.completed`, `step.retry_scheduled`, `step.failed`)."""
    payload: dict[str, Any] = {
        "task_id": o.task_id,
        "step_id": o.step_id,
        "step": o.step,
        "attempt": o.attempt,
        "duration_ms": o.duration_ms,
    }
    if o.error:
        payload["error"] = o.error
    if state == StepState.WAITING_RETRY:
        payload["retry_in_seconds"] = o.retry_delay
    name = _EVENT[state]
    if o.wait_note is not None:
        payload["wait"] = o.wait_note
        if state == StepState.WAITING_RETRY:
            name = Events.STEP_WAITING
    if is_undo(o.step):
        name = _UNDO_EVENT.get(state, name)
    journal.event(name, payload)
    journal.events.extend(o.events)


def _record_systems(
    conn: Connection,
    journal: Journal,
    accepted: list[Outcome],
    view: systems.SystemsView,
    *,
    lock: bool,
) -> None:
    """Feed the circuit breakers: transient failures count, answers (success or a definite error)
    reset."""
    seen = systems.SystemOutcomes()
    for o in accepted:
        name = o.dependent_system
        if not name or not view.has_breaker(name):
            continue
        evidence = outcome_evidence(o)
        if evidence == SystemEvidence.NONE:
            continue
        if o.probe:
            (seen.probe_failed if evidence == SystemEvidence.FAULT else seen.probe_ok).add(name)
        elif evidence == SystemEvidence.FAULT:
            seen.failures[name] += 1
        else:
            seen.answered.add(name)
    systems.record(conn, journal, seen, view, lock=lock)
