"""What one transaction records besides its updates: transition rows and the events to publish.

Collected while the transaction runs and written with one multi-row insert per table at the end, so
a cycle that finishes ten steps and readies ten more still costs two inserts.

Every step and task transition is checked against the state machines (`tasker.domain.states`) as it
is recorded: an illegal one raises `InvalidTransitionError`, and the transaction that made it rolls
back. The check is a set lookup, no query.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert

from tasker.domain.events import TASK_EVENT_FOR_STATE
from tasker.domain.records import FailureRecord
from tasker.domain.states import (
    StepState,
    TaskState,
    check_step_transition,
    check_task_transition,
)
from tasker.store.notify import CHANNEL
from tasker.store.schema import custom_events, step_transitions, task_transitions

_INSERT_STEP = insert(step_transitions)
_INSERT_TASK = insert(task_transitions)
_INSERT_CUSTOM = insert(custom_events)
#: PostgreSQL: every transition row of a transaction and its NOTIFY in one statement whose text
#: never changes (one JSON document per table), so psycopg prepares it once and a flush is one round
#: trip instead of up to three. A row carries only its own values: the time and the worker are the
#: journal's, sent once, and a column a row leaves out is NULL (`jsonb_to_recordset`).
_FLUSH_PG = f"""
    WITH step_rows AS (
        INSERT INTO tasker_step_transitions
               (step_id, task_id, from_state, to_state, attempt, at, worker, error_class,
                error_message, duration_ms, reason)
        SELECT step_id, task_id, from_state, to_state, attempt, %(at)s::timestamptz,
               %(worker)s::text, error_class, error_message, duration_ms, reason
          FROM jsonb_to_recordset(%(steps)s::jsonb)
               AS r(step_id bigint, task_id bigint, from_state text, to_state text,
                    attempt integer, error_class text, error_message text,
                    duration_ms double precision, reason text)
    ), task_rows AS (
        INSERT INTO tasker_task_transitions (task_id, from_state, to_state, at, worker, reason)
        SELECT task_id, from_state, to_state, %(at)s::timestamptz, %(worker)s::text, reason
          FROM jsonb_to_recordset(%(tasks)s::jsonb)
               AS r(task_id bigint, from_state text, to_state text, reason text)
    )
    SELECT pg_notify('{CHANNEL}', '') WHERE %(notify)s
"""
#: The columns a recorded row may leave out (NULL), per table.
STEP_ROW_GAPS: dict[str, Any] = dict.fromkeys(
    ("from_state", "error_class", "error_message", "duration_ms", "reason")
)
TASK_ROW_GAPS: dict[str, Any] = dict.fromkeys(("from_state", "reason"))


@dataclass
class Journal:
    now: datetime
    worker: str | None = None
    step_rows: list[dict[str, Any]] = field(default_factory=list)
    task_rows: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: Custom events (`ctx.publish`) to store in the durable event log, whether or not anyone
    #: listens here.
    custom_rows: list[dict[str, Any]] = field(default_factory=list)
    #: False when nobody listens to events: hot paths then skip building payloads nobody would read.
    collect: bool = True
    #: Steps made ready here and not claimed by this same transaction: other workers should hear of
    #: them.
    readied: set[int] = field(default_factory=set)
    #: Circuit changes made here, (system, from, to, reason), for the worker to log once committed.
    circuits: list[tuple[str, str, str, str]] = field(default_factory=list)
    #: Child tasks created here (by `task:` steps), so a worker run for one task runs them too.
    children: list[int] = field(default_factory=list)
    #: Due steps a claim deferred to a later slot of their system's rate limit, by system.
    deferred: Counter[str] = field(default_factory=Counter)
    #: Due steps a claim passed over because their fair-share key was full, by template scope.
    key_waits: Counter[str] = field(default_factory=Counter)
    #: The engine's clock, for what must be timed at the moment it happens rather than when the
    #: transaction began (a rate limit's starts, read after waiting for its lock).
    clock: Callable[[], datetime] | None = None

    def current(self) -> datetime:
        """The time now by the engine's clock (`now` when none was given), never before `now`."""
        return self.now if self.clock is None else max(self.now, self.clock())

    def step(
        self,
        step_id: int,
        task_id: int,
        src: StepState | str | None,
        dst: StepState | str,
        attempt: int,
        error: FailureRecord | None = None,
        duration_ms: float | None = None,
        reason: str | None = None,
    ) -> None:
        """Record a step's transition (src None: its creation or a cancellation, see
        `check_step_transition`), with why it moved when no attempt moved it (`reason`); raises
        `InvalidTransitionError` if the move is illegal."""
        check_step_transition(src, dst)
        if dst == StepState.READY:
            self.readied.add(step_id)
        elif dst == StepState.IN_PROGRESS:
            self.readied.discard(step_id)
        row: dict[str, Any] = {
            "step_id": step_id,
            "task_id": task_id,
            "to_state": dst,
            "attempt": attempt,
        }
        if src is not None:
            row["from_state"] = src
        if error:
            row["error_class"], row["error_message"] = error["class"], error["message"]
        if duration_ms is not None:
            row["duration_ms"] = duration_ms
        if reason is not None:
            row["reason"] = reason
        self.step_rows.append(row)

    def task(
        self,
        task_id: int,
        src: TaskState | str | None,
        dst: TaskState | str,
        reason: str | None = None,
    ) -> None:
        """Record a task's transition (src None: its creation); raises `InvalidTransitionError` if
        the move is illegal."""
        check_task_transition(src, dst)
        row: dict[str, Any] = {"task_id": task_id, "to_state": dst}
        if src is not None:
            row["from_state"] = src
        if reason is not None:
            row["reason"] = reason
        self.task_rows.append(row)

    def custom(self, name: str, task_id: int, step_id: int | None, payload: dict[str, Any]) -> None:
        self.custom_rows.append(
            {
                "name": name,
                "task_id": task_id,
                "step_id": step_id,
                "namespace": payload.get("namespace"),
                "payload": payload,
                "at": self.now,
                "worker": self.worker,
            }
        )

    def event(self, name: str, payload: dict[str, Any]) -> None:
        if self.collect:
            self.events.append((name, payload))

    def task_settled(self, task_id: int, src: str, dst: str) -> None:
        """The event of a task that settled from `src` to `dst`, when that state has one."""
        name = TASK_EVENT_FOR_STATE.get(dst)
        if name:
            self.event(name, {"task_id": task_id, "from_state": src, "to_state": dst})

    def written(self) -> None:
        """The statement that made these moves wrote their transition rows itself (PostgreSQL's
        claim-only cycle): keep the events, drop the rows."""
        self.step_rows, self.task_rows, self.readied = [], [], set()

    def whole_rows(
        self, rows: list[dict[str, Any]], gaps: dict[str, Any], at: Any = None
    ) -> list[dict[str, Any]]:
        """Rows with every column (an executemany needs the same keys in each): the gaps as NULL,
        the journal's time (or `at`, the time as a store writes it) and worker."""
        when = self.now if at is None else at
        return [{**gaps, **r, "at": when, "worker": self.worker} for r in rows]

    def flush_statement(self) -> tuple[str, dict[str, Any]] | None:
        """PostgreSQL: the statement (psycopg's placeholders) that writes the collected transition
        rows and the NOTIFY, with its values, or None when there is nothing to write. The rows are
        taken: the caller runs it before the commit (custom events are left for it to write)."""
        steps, tasks, notify = self.step_rows, self.task_rows, bool(self.readied)
        self.step_rows, self.task_rows, self.readied = [], [], set()
        if not (steps or tasks or notify):
            return None
        # One JSON document per table: cheaper to send than a dozen typed arrays. Its values are
        # numbers and strings (the states are `str` enums), so the encoder needs no fallback.
        params = {
            "steps": json.dumps(steps),
            "tasks": json.dumps(tasks),
            "at": self.now,
            "worker": self.worker,
            "notify": notify,
        }
        return _FLUSH_PG, params

    def flush(self, conn: Connection) -> None:
        """Write the collected transition rows and wake other workers (call before the commit)."""
        if conn.dialect.name == "postgresql":
            statement = self.flush_statement()
            if statement is not None:
                conn.exec_driver_sql(*statement)
        else:
            if self.step_rows:
                conn.execute(_INSERT_STEP, self.whole_rows(self.step_rows, STEP_ROW_GAPS))
            if self.task_rows:
                conn.execute(_INSERT_TASK, self.whole_rows(self.task_rows, TASK_ROW_GAPS))
        self.step_rows = []
        self.task_rows = []
        if self.custom_rows:
            conn.execute(_INSERT_CUSTOM, self.custom_rows)
            self.custom_rows = []
