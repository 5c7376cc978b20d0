"""Settling tasks in SQL decides what the pure policy decides (`final_task_state` and the task
transition table), and a cycle that fails part-way leaves nothing behind.

On PostgreSQL the pipelined cycle (`tasker.store.pg_cycle`) settles tasks with one statement whose
decision is written in SQL; everywhere else `readiness.settle_tasks` decides in Python. Every task
status is put against every combination of step states (each state present or absent: 512 mixes),
and the status each path leaves is compared with the pure function's. The SQL statement exists on
PostgreSQL only; on SQLite the Python path is checked against the same table, so the table itself
is tested on both stores.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from tasker.domain.errors import InvalidTransitionError, StoreError
from tasker.domain.records import Outcome
from tasker.domain.states import StepState, TaskState, settle_move
from tasker.store import readiness
from tasker.store.cycle_rows import Cycle, CycleInput
from tasker.store.database import Database
from tasker.store.journal import Journal
from tasker.store.schema import step_transitions, steps, task_transitions, tasks, templates

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MIXES = [
    tuple(s for s, present in zip(StepState, mask, strict=True) if present)
    for mask in itertools.product((False, True), repeat=len(StepState))
]


@pytest.fixture
def db(store_url: str) -> Iterator[Database]:
    database = Database(store_url)
    yield database
    database.dispose()


def expected(status: TaskState, states: tuple[StepState, ...]) -> TaskState | None:
    """What the pure policy makes of it: the new status, None for no change; raises for a move the
    transition table forbids."""
    return settle_move(status, {s.value: 1 for s in states})


def put_tasks(conn: Connection, cases: list[tuple[TaskState, tuple[StepState, ...]]]) -> list[int]:
    template_id = conn.execute(
        insert(templates)
        .values(
            namespace="t",
            name="settle",
            version="1.0.0",
            content_hash="h",
            definition={},
            created_at=NOW,
        )
        .returning(templates.c.id)
    ).scalar_one()
    ids = []
    for i, (status, states) in enumerate(cases):
        task_id = conn.execute(
            insert(tasks)
            .values(
                namespace="t",
                name="settle",
                version="1.0.0",
                template_id=template_id,
                status=status.value,
                context={},
                idempotency_key=f"k{i}",
                correlation_id="c",
                created_at=NOW,
                updated_at=NOW,
            )
            .returning(tasks.c.id)
        ).scalar_one()
        ids.append(task_id)
        if states:
            conn.execute(
                insert(steps),
                [
                    {
                        "task_id": task_id,
                        "name": f"s{j}",
                        "position": j,
                        "namespace": "t",
                        "dependent_system": "default",
                        "state": s.value,
                        "pending_parents": 0,
                        "retry_limit": 3,
                        "retryable": True,
                        "idempotency_key": f"k{i}-{j}",
                        "created_at": NOW,
                        "updated_at": NOW,
                    }
                    for j, s in enumerate(states)
                ],
            )
    return ids


def statuses(db: Database, ids: list[int]) -> dict[int, str]:
    with db.read() as conn:
        rows = conn.execute(select(tasks.c.id, tasks.c.status).where(tasks.c.id.in_(ids)))
        return {r.id: r.status for r in rows}


def legal_cases() -> list[tuple[TaskState, tuple[StepState, ...]]]:
    cases = []
    for status in TaskState:
        for states in MIXES:
            try:
                expected(status, states)
            except InvalidTransitionError:
                continue
            cases.append((status, states))
    return cases


def test_python_settle_matches_the_policy_for_every_mix(db: Database) -> None:
    cases = legal_cases()
    with db.write() as conn:
        ids = put_tasks(conn, cases)
    with db.write() as conn:
        journal = Journal(NOW, "test")
        readiness.settle_tasks(conn, ids, journal, lock=db.is_postgres)
        journal.flush(conn)
    after = statuses(db, ids)
    for task_id, (status, states) in zip(ids, cases, strict=True):
        want = expected(status, states)
        assert after[task_id] == (want or status).value, (status, states)


def test_sql_settle_matches_the_policy_for_every_mix(db: Database) -> None:
    if not db.is_postgres:
        pytest.skip("the settle statement is the pipelined PostgreSQL cycle's")
    from tasker.store import pg_cycle

    cases = legal_cases()
    with db.write() as conn:
        ids = put_tasks(conn, cases)
    with db.write() as conn:
        moved = {
            r[0]: (r[1], r[2])
            for r in conn.exec_driver_sql(
                pg_cycle._SETTLE, {"ids": ids, "now": NOW, "worker": "test"}
            )
        }
        logged = conn.execute(select(task_transitions.c.task_id)).scalars().all()
    after = statuses(db, ids)
    for task_id, (status, states) in zip(ids, cases, strict=True):
        want = expected(status, states)
        assert after[task_id] == (want or status).value, (status, states)
        assert (task_id in moved) == (want is not None)
        if want is not None:
            assert moved[task_id] == (status.value, want.value)
    assert sorted(logged) == sorted(moved)  # one transition row per move, none for the others


def test_sql_settle_refuses_a_move_the_table_forbids(db: Database) -> None:
    if not db.is_postgres:
        pytest.skip("the settle statement is the pipelined PostgreSQL cycle's")
    from tasker.store import pg_cycle

    case = (TaskState.ERROR, (StepState.COMPLETE,))
    with pytest.raises(InvalidTransitionError):
        expected(*case)
    with db.write() as conn:
        ids = put_tasks(conn, [case])
    with (
        pytest.raises(StoreError, match="task cannot go from error to complete"),
        db.write() as conn,
    ):
        conn.exec_driver_sql(pg_cycle._SETTLE, {"ids": ids, "now": NOW, "worker": "test"})
    assert statuses(db, ids) == {ids[0]: "error"}


def test_a_pipelined_cycle_that_fails_leaves_nothing_and_its_connection_works(
    db: Database,
) -> None:
    """The settle statement fails (an operator's `error` task whose last step completes would move
    to `complete`, which the table forbids): the outcome stored by the first statement is rolled
    back with it, no transition is written, and the pool's connection serves the next cycle."""
    if not db.is_postgres:
        pytest.skip("the pipelined cycle is PostgreSQL's")
    from tasker.store import pg_cycle

    with db.write() as conn:
        [task_id] = put_tasks(conn, [(TaskState.ERROR, (StepState.IN_PROGRESS,))])
        step_id = conn.execute(select(steps.c.id).where(steps.c.task_id == task_id)).scalar_one()
        conn.execute(update(steps).where(steps.c.id == step_id).values(claim_token=1))
    outcome = Outcome(
        step_id=step_id,
        task_id=task_id,
        claim_token=1,
        attempt=1,
        state=StepState.COMPLETE,
        results={"ok": True},
        children=[],
        step="s0",
    )

    def cycle() -> Cycle:
        with db.direct() as conn:
            work = CycleInput(
                [outcome],
                {},
                worker="w",
                room=0,
                scan=False,
                namespaces=None,
                task_ids=None,
                lease_seconds=30,
            )
            return pg_cycle.run_cycle(conn, Journal(NOW, "w"), work)

    for _ in range(2):  # the second run finds the same row and a working connection
        with pytest.raises(StoreError, match="task cannot go from error to complete"):
            cycle()
        with db.read() as conn:
            row = conn.execute(select(steps.c.state, steps.c.results).where(steps.c.id == step_id))
            assert row.one() == ("in_progress", None)
            assert conn.execute(select(step_transitions.c.id)).first() is None
    # Once the task is no longer in `error`, the same outcome is stored and the task settles.
    with db.write() as conn:
        conn.execute(update(tasks).where(tasks.c.id == task_id).values(status="in_progress"))
    done = cycle()
    assert [o.step_id for o in done.accepted] == [step_id]
    assert done.settled == [(task_id, "complete")]
    assert statuses(db, [task_id]) == {task_id: "complete"}
