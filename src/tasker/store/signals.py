"""Signals and durable waits in the store.

- `send`: a signal to a task is a row of `tasker_signals` (kept, so that one that arrives before
  its step waits is not lost; a repeated idempotency key is the same signal), and the steps of the
  task parked for that name get a `run_at` of now, in the same transaction.
- `lookup`: what a claim of a step that may wait reads (its stored wait, its task's signals).
- `record_waits`: the completion path stores each outcome's wait with it; a step that parks for a
  signal which arrived meanwhile is woken at once.

A signal must never slip between a step's claim and its parking (committed while the step still
ran, so it woke nothing, and not seen by the parking): on PostgreSQL, `send` locks the task's
running and parked steps (`FOR UPDATE`, in id order) before it looks at their waits. A step being
parked meanwhile is waited for and seen parked; a step parked after the lock is released parks in
a transaction that starts its signal check after the signal committed, and so sees it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection

from tasker.domain.errors import OperationError
from tasker.domain.events import Events
from tasker.domain.records import Outcome, Signal
from tasker.domain.states import FINISHED_TASK_STATES, StepState, TaskState
from tasker.domain.waits import Wait, WaitKind, WaitLookup
from tasker.store.database import Database
from tasker.store.journal import Journal
from tasker.store.operations import task_status
from tasker.store.schema import signals, steps, tasks

#: The custom event a signal writes to the durable event log (and the live bus).
SIGNAL_RECEIVED = Events.SIGNAL_RECEIVED

_SIGNAL_COLUMNS = (
    signals.c.id,
    signals.c.task_id,
    signals.c.name,
    signals.c.payload,
    signals.c.idempotency_key,
    signals.c.created_at,
    signals.c.sender,
)
_BY_KEY = select(*_SIGNAL_COLUMNS).where(
    signals.c.task_id == bindparam("task_id"),
    signals.c.name == bindparam("name"),
    signals.c.idempotency_key == bindparam("key"),
)
#: The task's steps that are parked, or running and so may park (locked: see the module's doc).
_PARKED = (
    select(steps.c.id, steps.c.state, steps.c.wait)
    .where(
        steps.c.task_id == bindparam("task_id"),
        steps.c.state.in_([StepState.WAITING_RETRY.value, StepState.IN_PROGRESS.value]),
    )
    .order_by(steps.c.id)
    .with_for_update()
)
_WAKE = (
    update(steps)
    .where(steps.c.id == bindparam("step_id"), steps.c.state == StepState.WAITING_RETRY.value)
    .values(run_at=bindparam("now"), updated_at=bindparam("now"))
)
_STORE_WAIT = (
    update(steps)
    .where(steps.c.id == bindparam("step_id"))
    .values(wait=bindparam("wait"), decision=bindparam("note"))
)
_FIRST_SIGNALS = (
    select(signals.c.name, signals.c.payload)
    .where(
        signals.c.task_id == bindparam("task_id"),
        signals.c.name.in_(bindparam("names", expanding=True)),
    )
    .order_by(signals.c.id.desc())
)
_STEP_WAIT = select(steps.c.wait).where(steps.c.id == bindparam("step_id"))


def _signal(row: Any, *, deduplicated: bool = False, woke: Sequence[int] = ()) -> Signal:
    return Signal(
        id=row.id,
        task_id=row.task_id,
        name=row.name,
        payload=row.payload,
        idempotency_key=row.idempotency_key,
        created_at=row.created_at,
        sender=row.sender,
        deduplicated=deduplicated,
        woke=tuple(woke),
    )


def send(
    conn: Connection,
    journal: Journal,
    task_id: int,
    name: str,
    payload: Any,
    *,
    idempotency_key: str | None,
    sender: str | None,
) -> Signal:
    """Store a signal to an unfinished task and wake its steps parked for that name; a repeated
    idempotency key returns the first signal (`deduplicated`), changing nothing. Raises
    `OperationError` for a finished task (the caller checks the name against the template)."""
    status = task_status(conn, task_id, lock=False)
    if idempotency_key is not None:
        found = conn.execute(
            _BY_KEY, {"task_id": task_id, "name": name, "key": idempotency_key}
        ).first()
        if found is not None:
            return _signal(found, deduplicated=True)
    if status in FINISHED_TASK_STATES or status == TaskState.COMPENSATING:
        raise OperationError(
            f"task {task_id} is {status}; a signal can only be sent to a task that is still"
            " running (pending or in_progress)"
        )
    now = journal.now
    row = conn.execute(
        insert(signals)
        .values(
            task_id=task_id,
            name=name,
            payload=payload,
            idempotency_key=idempotency_key,
            created_at=now,
            sender=sender,
        )
        .returning(*_SIGNAL_COLUMNS)
    ).one()
    woke = []
    for parked in conn.execute(_PARKED, {"task_id": task_id}).all():
        wait = Wait.from_json(parked.wait)
        if parked.state != StepState.WAITING_RETRY.value or wait is None:
            continue
        if wait.kind != WaitKind.SIGNAL or wait.signal != name or wait.over:
            continue
        if conn.execute(_WAKE, {"step_id": parked.id, "now": now}).rowcount:
            woke.append(parked.id)
            journal.readied.add(parked.id)
    event = {"task_id": task_id, "signal": name, "signal_id": row.id, "woke": woke}
    journal.custom(SIGNAL_RECEIVED, task_id, None, {**event, "payload": payload})
    journal.event(SIGNAL_RECEIVED, event)
    return _signal(row, woke=woke)


def lookup(conn: Connection, task_id: int, step_id: int, names: Iterable[str]) -> WaitLookup:
    """A step's stored wait and the first payload of each named signal its task received (and of
    the signal the stored wait names)."""
    wait = Wait.from_json(conn.execute(_STEP_WAIT, {"step_id": step_id}).scalar())
    wanted = set(names)
    if wait is not None and wait.signal:
        wanted.add(wait.signal)
    found: dict[str, Any] = {}
    if wanted:
        # Newest first, each name overwritten down to its first signal.
        for r in conn.execute(_FIRST_SIGNALS, {"task_id": task_id, "names": sorted(wanted)}):
            found[r.name] = r.payload
    return WaitLookup(wait, found)


def record_waits(conn: Connection, journal: Journal, accepted: Sequence[Outcome]) -> None:
    """Store the waits of these stored outcomes, and wake at once the steps that park for a signal
    their task already holds (sent while the step ran)."""
    noted = [o for o in accepted if o.wait_note is not None]
    if not noted:
        return
    conn.execute(
        _STORE_WAIT, [{"step_id": o.step_id, "wait": o.wait, "note": o.wait_note} for o in noted]
    )
    for o in noted:
        if o.waits_for is None:
            continue
        held = conn.execute(
            select(signals.c.id)
            .where(signals.c.task_id == o.task_id, signals.c.name == o.waits_for)
            .limit(1)
        ).first()
        if (
            held is not None
            and conn.execute(_WAKE, {"step_id": o.step_id, "now": journal.now}).rowcount
        ):
            journal.readied.add(o.step_id)


def list_signals(conn: Connection, task_id: int) -> list[Signal]:
    """A task's signals, oldest first."""
    rows = conn.execute(
        select(*_SIGNAL_COLUMNS).where(signals.c.task_id == task_id).order_by(signals.c.id)
    )
    return [_signal(r) for r in rows]


def task_exists(conn: Connection, task_id: int) -> bool:
    return conn.execute(select(tasks.c.id).where(tasks.c.id == task_id)).first() is not None


def read_wait(db: Database, task_id: int, step_id: int, names: Iterable[str]) -> WaitLookup:
    """`lookup` on a connection of its own (what a worker's claim of a waiting step reads)."""
    with db.read() as conn:
        return lookup(conn, task_id, step_id, names)
