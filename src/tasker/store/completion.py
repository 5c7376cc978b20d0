"""Applying attempt outcomes: the single completion transaction of DESIGN section 4.

Result, state change, transition row, children readiness and task finalization are written together,
each step fenced by its claim token, for a whole batch of outcomes at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, String, bindparam, cast, column, update, values
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection

from tasker.engine.model import Outcome
from tasker.states import StepState
from tasker.store import systems
from tasker.store.journal import Journal
from tasker.store.readiness import release_children, settle_tasks
from tasker.store.schema import steps

TIMESTAMPTZ = DateTime(timezone=True)
_EVENT = {
    StepState.COMPLETE: "step.completed",
    StepState.WAITING_RETRY: "step.retry_scheduled",
    StepState.ERROR: "step.failed",
}
_FINISH = (
    update(steps)
    .where(steps.c.id == bindparam("step_id"), steps.c.claim_token == bindparam("token"),
           steps.c.state == StepState.IN_PROGRESS.value)
    .values(
        state=bindparam("target"), results=bindparam("results"), last_error=bindparam("error"),
        attempts=steps.c.attempts - bindparam("refund"),
        run_at=bindparam("run_at"), finished_at=bindparam("finished_at"),
        lease_owner=None, lease_expires_at=None, updated_at=bindparam("now"),
    )
)


def _finish_params(o: Outcome, now: datetime) -> dict[str, Any]:
    state = StepState(o.state)
    return {
        "step_id": o.step_id, "token": o.claim_token, "target": state.value, "now": now,
        "results": o.results if state == StepState.COMPLETE else None,
        "error": o.error if state != StepState.COMPLETE else None,
        "run_at": now + timedelta(seconds=o.retry_delay) if state == StepState.WAITING_RETRY else None,
        "finished_at": None if state == StepState.WAITING_RETRY else now,
        "refund": 1 if o.refund_attempt else 0,
    }


def _finish_batch(conn: Connection, params: list[dict[str, Any]]) -> set[int]:
    """PostgreSQL: fence and store every outcome with one UPDATE ... FROM (VALUES ...) round trip."""
    v = values(
        column("step_id", BigInteger), column("token", Integer), column("target", String),
        column("results", JSONB), column("error", JSONB), column("run_at", DateTime(timezone=True)),
        column("finished_at", DateTime(timezone=True)), column("refund", Integer),
        name="outcome",
    ).data([
        (p["step_id"], p["token"], p["target"], p["results"], p["error"], p["run_at"], p["finished_at"], p["refund"])
        for p in params
    ])
    now = params[0]["now"]
    stmt = (
        update(steps)
        .where(steps.c.id == v.c.step_id, steps.c.claim_token == v.c.token,
               steps.c.state == StepState.IN_PROGRESS.value)
        .values(state=v.c.target, results=cast(v.c.results, JSONB), last_error=cast(v.c.error, JSONB),
                run_at=cast(v.c.run_at, TIMESTAMPTZ), finished_at=cast(v.c.finished_at, TIMESTAMPTZ),
                attempts=steps.c.attempts - v.c.refund,
                lease_owner=None, lease_expires_at=None, updated_at=now)
        .returning(steps.c.id)
    )
    return set(conn.execute(stmt).scalars())


def apply_outcomes(
    conn: Connection,
    journal: Journal,
    outcomes: Sequence[Outcome],
    *,
    lock_tasks: bool,
    view: systems.SystemsView | None = None,
) -> tuple[list[Outcome], list[tuple[int, str]], list[tuple[int, int, str]]]:
    """Store outcomes.

    Returns the outcomes accepted (the others lost their claim), the tasks that settled, and the steps
    that became ready as (step_id, task_id, name).
    """
    if not outcomes:
        return [], [], []
    now = journal.now
    accepted: list[Outcome] = []
    completed: list[int] = []
    children: list[int] | None = []
    check: set[int] = set()
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
        journal.step(o.step_id, o.task_id, StepState.IN_PROGRESS, state, o.attempt, o.error, o.duration_ms)
        payload: dict[str, Any] = {"task_id": o.task_id, "step_id": o.step_id, "step": o.step, "attempt": o.attempt,
                                   "duration_ms": o.duration_ms}
        if o.error:
            payload["error"] = o.error
        if state == StepState.WAITING_RETRY:
            payload["retry_in_seconds"] = o.retry_delay
        journal.event(_EVENT[state], payload)
        journal.events.extend(o.events)
        if state == StepState.COMPLETE:
            completed.append(o.step_id)
            if o.children is None or children is None:
                children = None  # one parent of unknown children: read the edges for all
            else:
                children.extend(o.children)
        if state != StepState.WAITING_RETRY:
            check.add(o.task_id)
    _record_systems(conn, journal, accepted, view or systems.SystemsView(), lock=lock_tasks)
    readied = release_children(conn, completed, journal, children)
    settled = settle_tasks(conn, check - {task_id for _, task_id, _ in readied}, journal, lock=lock_tasks)
    return accepted, settled, readied


def _record_systems(conn: Connection, journal: Journal, accepted: list[Outcome], view: systems.SystemsView, *,
                    lock: bool) -> None:
    """Feed the circuit breakers: transient failures count, answers (success or a definite error) reset."""
    seen = systems.SystemOutcomes()
    for o in accepted:
        name = o.dependent_system
        if not name or (o.error or {}).get("class") in _NOT_THE_SYSTEMS_FAULT:
            continue
        if o.probe:
            (seen.probe_failed if o.transient_failure else seen.probe_ok).add(name)
        elif o.transient_failure:
            seen.failures[name] += 1
        else:
            seen.answered.add(name)
    systems.record(conn, journal, seen, view, lock=lock)


_NOT_THE_SYSTEMS_FAULT = {"HandlerNotFound", "UndeclaredEventError", "LeaseExpired"}
