"""What one transaction records besides its updates: transition rows and the events to publish.

Collected while the transaction runs and written with one multi-row insert per table at the end, so
a cycle that finishes ten steps and readies ten more still costs two inserts.

Every step and task transition is checked against the state machines (`tasker.domain.states`) as it
is recorded: an illegal one raises `InvalidTransitionError`, and the transaction that made it rolls
back. The check is a set lookup, no query.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, text

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
#: never changes (arrays of values, unnested), so psycopg prepares it once and a flush is one round
#: trip instead of up to three.
_FLUSH_PG = text(f"""
    WITH step_rows AS (
        INSERT INTO tasker_step_transitions
               (step_id, task_id, from_state, to_state, attempt, at, worker, error_class,
                error_message, duration_ms)
        SELECT * FROM unnest(CAST(:step_ids AS bigint[]), CAST(:task_ids AS bigint[]),
                             CAST(:froms AS text[]), CAST(:tos AS text[]),
                             CAST(:attempts AS integer[]), CAST(:ats AS timestamptz[]),
                             CAST(:workers AS text[]), CAST(:classes AS text[]),
                             CAST(:messages AS text[]), CAST(:durations AS double precision[]))
    ), task_rows AS (
        INSERT INTO tasker_task_transitions (task_id, from_state, to_state, at, worker, reason)
        SELECT * FROM unnest(CAST(:t_task_ids AS bigint[]), CAST(:t_froms AS text[]),
                             CAST(:t_tos AS text[]), CAST(:t_ats AS timestamptz[]),
                             CAST(:t_workers AS text[]), CAST(:t_reasons AS text[]))
    )
    SELECT pg_notify('{CHANNEL}', '') WHERE CAST(:notify AS boolean)
""")


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

    def step(
        self,
        step_id: int,
        task_id: int,
        src: StepState | str | None,
        dst: StepState | str,
        attempt: int,
        error: FailureRecord | None = None,
        duration_ms: float | None = None,
    ) -> None:
        """Record a step's transition (src None: its creation or a cancellation, see
        `check_step_transition`); raises `InvalidTransitionError` if the move is illegal."""
        check_step_transition(src, dst)
        if dst == StepState.READY:
            self.readied.add(step_id)
        elif dst == StepState.IN_PROGRESS:
            self.readied.discard(step_id)
        self.step_rows.append(
            {
                "step_id": step_id,
                "task_id": task_id,
                "from_state": src,
                "to_state": dst,
                "attempt": attempt,
                "at": self.now,
                "worker": self.worker,
                "error_class": error["class"] if error else None,
                "error_message": error["message"] if error else None,
                "duration_ms": duration_ms,
            }
        )

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
        self.task_rows.append(
            {
                "task_id": task_id,
                "from_state": src,
                "to_state": dst,
                "at": self.now,
                "worker": self.worker,
                "reason": reason,
            }
        )

    def custom(self, name: str, task_id: int, step_id: int, payload: dict[str, Any]) -> None:
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

    def _flush_pg(self, conn: Connection, notify: bool) -> None:
        steps, tasks = self.step_rows, self.task_rows
        conn.execute(
            _FLUSH_PG,
            {
                "step_ids": [r["step_id"] for r in steps],
                "task_ids": [r["task_id"] for r in steps],
                "froms": [r["from_state"] for r in steps],
                "tos": [r["to_state"] for r in steps],
                "attempts": [r["attempt"] for r in steps],
                "ats": [r["at"] for r in steps],
                "workers": [r["worker"] for r in steps],
                "classes": [r["error_class"] for r in steps],
                "messages": [r["error_message"] for r in steps],
                "durations": [r["duration_ms"] for r in steps],
                "t_task_ids": [r["task_id"] for r in tasks],
                "t_froms": [r["from_state"] for r in tasks],
                "t_tos": [r["to_state"] for r in tasks],
                "t_ats": [r["at"] for r in tasks],
                "t_workers": [r["worker"] for r in tasks],
                "t_reasons": [r["reason"] for r in tasks],
                "notify": notify,
            },
        )

    def flush(self, conn: Connection) -> None:
        """Write the collected transition rows and wake other workers (call before the commit)."""
        if conn.dialect.name == "postgresql":
            notify = bool(self.readied)
            if self.step_rows or self.task_rows or notify:
                self._flush_pg(conn, notify)
            self.readied = set()
        else:
            if self.step_rows:
                conn.execute(_INSERT_STEP, self.step_rows)
            if self.task_rows:
                conn.execute(_INSERT_TASK, self.task_rows)
        self.step_rows = []
        self.task_rows = []
        if self.custom_rows:
            conn.execute(_INSERT_CUSTOM, self.custom_rows)
            self.custom_rows = []
