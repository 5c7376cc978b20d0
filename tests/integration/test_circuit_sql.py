"""The store's circuit-breaker and limit statements checked against the pure policy, on both stores.

Where several workers race for one change, `tasker.store.systems` repeats a rule of
`tasker.domain.circuits` in an UPDATE's WHERE clause (turning a circuit half-open, taking over a
lost probe, ending a streak without a row lock). Each test here puts a row in a given state, runs
the store's statement as a worker whose view of the row may be stale, and checks the row it leaves
against what the pure function makes of the row as it really was. The locked path (a cycle's
failures and probes) must write exactly the policy's circuit; the claim's room under the in-flight
limits must be the pure `room` of the counts. Last, the store refuses an illegal step transition.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from tasker.domain.circuits import (
    RESERVED,
    STATE_COLUMNS,
    Circuit,
    CircuitState,
    after_cycle,
    columns,
    on_answer,
    on_cooldown_elapsed,
    probe_lost,
    room,
    take_over_probe,
)
from tasker.domain.errors import InvalidTransitionError
from tasker.domain.records import Outcome
from tasker.domain.states import StepState, TaskState
from tasker.store import completion, systems
from tasker.store.database import Database
from tasker.store.journal import Journal
from tasker.store.schema import (
    circuit_transitions,
    dependent_systems,
    namespace_limits,
    steps,
    tasks,
    templates,
)

C = CircuitState
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def db(store_url: str) -> Iterator[Database]:
    database = Database(store_url)
    yield database
    database.dispose()


def put(conn: Connection, c: Circuit) -> None:
    conn.execute(
        insert(dependent_systems),
        {
            "name": c.name,
            "updated_at": NOW,
            "failure_threshold": c.failure_threshold,
            "cooldown_seconds": c.cooldown_seconds,
            "max_cooldown_seconds": c.max_cooldown_seconds,
            "max_outage_seconds": c.max_outage_seconds,
            "max_in_flight": c.max_in_flight,
            **columns(c),
        },
    )


def read(conn: Connection, name: str) -> Circuit:
    row = conn.execute(select(dependent_systems).where(dependent_systems.c.name == name)).one()
    return Circuit.of(row)


def fresh(**fields: Any) -> Circuit:
    return Circuit(f"sys-{uuid.uuid4().hex[:10]}", **fields)


def same_state(a: Circuit, b: Circuit) -> bool:
    """The circuits agree on every column the breaker writes (timestamps compared as instants)."""
    return columns(a) == columns(b)


# -- open -> half-open -----------------------------------------------------------------------------

OPEN_UNTIL = [None, NOW - timedelta(seconds=5), NOW, NOW + timedelta(seconds=5)]
ROW_CASES = list(itertools.product(list(CircuitState), OPEN_UNTIL))


@pytest.mark.parametrize(("state", "open_until"), ROW_CASES)
def test_cooldown_statement_matches_on_cooldown_elapsed(
    db: Database, state: CircuitState, open_until: datetime | None
) -> None:
    actual = fresh(
        state=state,
        consecutive_failures=5,
        open_until=open_until,
        opened_at=NOW - timedelta(seconds=30),
        current_cooldown_seconds=10.0,
        probe_step_id=None if state != C.HALF_OPEN else 77,
    )
    # The worker's view saw the circuit open and due (it may be stale by now).
    view = replace(actual, state=C.OPEN, open_until=NOW - timedelta(seconds=1), probe_step_id=None)
    with db.write() as conn:
        put(conn, actual)
        journal = Journal(NOW, "w")
        won = systems._begin_probe(conn, journal, view)
        after = read(conn, actual.name)
    expected = on_cooldown_elapsed(actual, NOW)
    assert won == (expected is not None)
    assert same_state(after, expected.circuit if expected is not None else actual)
    if won:
        assert after.probe_step_id == RESERVED
        assert [(m[1], m[2]) for m in journal.circuits] == [(C.OPEN, C.HALF_OPEN)]
    else:
        assert journal.circuits == []


# -- an answer ends a closed circuit's streak ------------------------------------------------------


@pytest.mark.parametrize("state", list(CircuitState))
def test_answer_statement_matches_on_answer(db: Database, state: CircuitState) -> None:
    actual = fresh(
        state=state,
        consecutive_failures=3,
        failing_since=NOW - timedelta(seconds=60),
        open_until=NOW + timedelta(seconds=5) if state != C.CLOSED else None,
    )
    view = replace(actual, state=C.CLOSED)  # the view still saw it closed with failures
    with db.write() as conn:
        put(conn, actual)
        systems._answered(conn, view, NOW)
        after = read(conn, actual.name)
    assert same_state(after, on_answer(actual))


# -- taking over a lost probe ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "seen", "now_holding"),
    [
        (C.HALF_OPEN, None, None),  # no probe yet: take it
        (C.HALF_OPEN, 41, 41),  # the probe's step is gone: take it over
        (C.HALF_OPEN, 41, 42),  # another worker took it over first
        (C.HALF_OPEN, None, 42),
        (C.CLOSED, 41, 41),  # closed meanwhile (the probe succeeded)
        (C.OPEN, 41, None),  # the probe failed meanwhile
    ],
)
def test_take_over_statement_matches_probe_lost(
    db: Database, state: CircuitState, seen: int | None, now_holding: int | None
) -> None:
    actual = fresh(state=state, probe_step_id=now_holding, consecutive_failures=5)
    view = replace(actual, state=C.HALF_OPEN, probe_step_id=seen)
    with db.write() as conn:
        put(conn, actual)
        won = systems._take_over_probe(conn, view, NOW)  # step `seen` does not exist: lost
        after = read(conn, actual.name)
    unchanged_since_view = actual.state == view.state and actual.probe_step_id == seen
    assert won == (unchanged_since_view and probe_lost(actual, None))
    assert same_state(after, take_over_probe(actual) if won else actual)


# -- a cycle's outcomes, under the row lock --------------------------------------------------------

maybe = st.one_of(st.none(), st.floats(min_value=0.5, max_value=120))


@st.composite
def stored_circuits(draw: st.DrawFn) -> Circuit:
    state = draw(st.sampled_from(list(CircuitState)))
    cooldown = draw(maybe)
    return fresh(
        state=state,
        consecutive_failures=draw(st.integers(min_value=0, max_value=12)),
        failure_threshold=draw(st.one_of(st.none(), st.integers(min_value=1, max_value=8))),
        cooldown_seconds=cooldown,
        max_cooldown_seconds=draw(maybe),
        current_cooldown_seconds=draw(maybe) if state != C.CLOSED else None,
        opened_at=NOW - timedelta(seconds=100) if state != C.CLOSED else None,
        open_until=NOW - timedelta(seconds=draw(st.integers(-50, 50))) if state == C.OPEN else None,
        probe_step_id=draw(st.one_of(st.none(), st.just(9))) if state == C.HALF_OPEN else None,
        failing_since=NOW - timedelta(seconds=30) if draw(st.booleans()) else None,
    )


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stored_circuits(),
    st.integers(min_value=0, max_value=6),
    st.sampled_from(["none", "ok", "failed"]),
)
def test_record_writes_exactly_the_policys_circuit(
    db: Database, actual: Circuit, failures: int, probe: str
) -> None:
    if failures == 0 and probe == "none":
        failures = 1  # a system the cycle did not touch is not read at all
    seen = systems.SystemOutcomes()
    if failures:
        seen.failures[actual.name] = failures
    if probe == "ok":
        seen.probe_ok.add(actual.name)
    elif probe == "failed":
        seen.probe_failed.add(actual.name)
    with db.write() as conn:
        put(conn, actual)
        journal = Journal(NOW, "w")
        systems.record(conn, journal, seen, systems.SystemsView(), lock=db.is_postgres)
        after = read(conn, actual.name)
        moves = conn.execute(
            select(circuit_transitions.c.from_state, circuit_transitions.c.to_state).where(
                circuit_transitions.c.system == actual.name
            )
        ).all()
    expected = after_cycle(
        actual, NOW, failures=failures, probe_ok=probe == "ok", probe_failed=probe == "failed"
    )
    assert same_state(after, expected.circuit), {
        k: (columns(after)[k], columns(expected.circuit)[k]) for k in STATE_COLUMNS
    }
    t = expected.transition
    assert [tuple(m) for m in moves] == ([(t.src.value, t.dst.value)] if t else [])


def test_record_creates_the_row_of_a_system_first_seen_failing(db: Database) -> None:
    name = f"sys-{uuid.uuid4().hex[:10]}"
    seen = systems.SystemOutcomes()
    seen.failures[name] = 2
    with db.write() as conn:
        systems.record(conn, Journal(NOW), seen, systems.SystemsView(), lock=db.is_postgres)
        after = read(conn, name)
    assert same_state(after, after_cycle(Circuit(name), NOW, failures=2).circuit)


# -- the claim's room under the in-flight limits ---------------------------------------------------


def _steps_running(conn: Connection, running: dict[tuple[str, str], int]) -> None:
    """Rows of `in_progress` steps per (system, namespace), under one throwaway task."""
    template_id = conn.execute(
        insert(templates).returning(templates.c.id),
        {
            "namespace": "ns",
            "name": "t",
            "version": "1",
            "content_hash": uuid.uuid4().hex,
            "definition": {},
            "created_at": NOW,
        },
    ).scalar_one()
    task_id = conn.execute(
        insert(tasks).returning(tasks.c.id),
        {
            "namespace": "ns",
            "name": "t",
            "version": "1",
            "template_id": template_id,
            "status": TaskState.IN_PROGRESS.value,
            "context": {},
            "idempotency_key": uuid.uuid4().hex,
            "correlation_id": "c",
            "created_at": NOW,
            "updated_at": NOW,
        },
    ).scalar_one()
    rows: list[dict[str, Any]] = []
    for (system, namespace), n in running.items():
        for i in range(n):
            rows.append(
                {
                    "task_id": task_id,
                    "name": f"{system}-{namespace}-{i}",
                    "position": len(rows),
                    "namespace": namespace,
                    "dependent_system": system,
                    "state": StepState.IN_PROGRESS.value,
                    "pending_parents": 0,
                    "retry_limit": 3,
                    "retryable": True,
                    "idempotency_key": uuid.uuid4().hex,
                    "created_at": NOW,
                    "updated_at": NOW,
                }
            )
    if rows:
        conn.execute(insert(steps), rows)


def test_claim_room_is_the_pure_room_of_the_counts(db: Database) -> None:
    tag = uuid.uuid4().hex[:6]
    sa, sb, sc = f"a-{tag}", f"b-{tag}", f"c-{tag}"
    na, nb = f"na-{tag}", f"nb-{tag}"
    running = {(sa, na): 2, (sa, nb): 1, (sb, na): 4, (sc, nb): 1}
    system_limits: dict[str, int | None] = {sa: 5, sb: 3, sc: None}
    ns_limits = {na: 10, nb: 1}
    with db.write() as conn:
        for name, limit in system_limits.items():
            put(conn, Circuit(name, max_in_flight=limit))
        for ns, limit in ns_limits.items():
            conn.execute(
                insert(namespace_limits),
                {"namespace": ns, "max_in_flight": limit, "updated_at": NOW},
            )
        _steps_running(conn, running)
        view = systems.load_view(conn)
        plan = systems.plan_claim(conn, Journal(NOW), view, lock=db.is_postgres)
    by_system: dict[str, int] = {}
    by_ns: dict[str, int] = {}
    for (system, ns), n in running.items():
        by_system[system] = by_system.get(system, 0) + n
        by_ns[ns] = by_ns.get(ns, 0) + n
    assert {k: v for k, v in plan.system_room.items() if tag in k} == room(system_limits, by_system)
    assert {k: v for k, v in plan.namespace_room.items() if tag in k} == room(ns_limits, by_ns)
    assert sb in plan.blocked and sa not in plan.blocked  # b is full
    assert plan.system_room[sa] == 2 and plan.namespace_room[nb] == 0


# -- the store honours the step state machine ------------------------------------------------------


@pytest.mark.parametrize(
    "target", [StepState.PENDING, StepState.RESOLVED_MANUALLY, StepState.IN_PROGRESS]
)
def test_an_illegal_outcome_raises_and_rolls_back(db: Database, target: StepState) -> None:
    with db.write() as conn:
        _steps_running(conn, {("sys", "ns"): 1})
        step_id, task_id, token = conn.execute(
            select(steps.c.id, steps.c.task_id, steps.c.claim_token)
            .order_by(steps.c.id.desc())
            .limit(1)
        ).one()
    outcome = Outcome(step_id=step_id, task_id=task_id, claim_token=token, attempt=1, state=target)
    refused = pytest.raises(InvalidTransitionError, match=f"'in_progress' to '{target.value}'")
    with refused, db.write() as conn:
        completion.apply_outcomes(conn, Journal(NOW, "w"), [outcome], lock_tasks=False)
    with db.read() as conn:
        state = conn.execute(select(steps.c.state).where(steps.c.id == step_id)).scalar_one()
    assert state == StepState.IN_PROGRESS  # nothing of the illegal move was committed


def test_a_legal_outcome_is_stored(db: Database) -> None:
    with db.write() as conn:
        _steps_running(conn, {("sys", "ns"): 1})
        step_id, task_id, token = conn.execute(
            select(steps.c.id, steps.c.task_id, steps.c.claim_token)
            .order_by(steps.c.id.desc())
            .limit(1)
        ).one()
        conn.execute(update(steps).where(steps.c.id == step_id).values(attempts=1))
    outcome = Outcome(
        step_id=step_id,
        task_id=task_id,
        claim_token=token,
        attempt=1,
        state=StepState.COMPLETE,
        results={"ok": True},
    )
    with db.write() as conn:
        journal = Journal(NOW, "w")
        accepted, _, _ = completion.apply_outcomes(conn, journal, [outcome], lock_tasks=False)
        journal.flush(conn)
    assert accepted == [outcome]
