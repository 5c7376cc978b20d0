"""What one transaction records besides its updates: transition rows and the events to publish.

Collected while the transaction runs and written with one multi-row insert per table at the end, so a
cycle that finishes ten steps and readies ten more still costs two inserts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert

from tasker.store.schema import step_transitions, task_transitions

_INSERT_STEP = insert(step_transitions)
_INSERT_TASK = insert(task_transitions)


@dataclass
class Journal:
    now: datetime
    worker: str | None = None
    step_rows: list[dict[str, Any]] = field(default_factory=list)
    task_rows: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: False when nobody listens to events: hot paths then skip building payloads nobody would read.
    collect: bool = True
    #: Steps made ready here and not claimed by this same transaction: other workers should hear of them.
    readied: set[int] = field(default_factory=set)

    def step(self, step_id: int, task_id: int, src: str | None, dst: str, attempt: int,
             error: dict[str, Any] | None = None, duration_ms: float | None = None) -> None:
        if dst == "ready":
            self.readied.add(step_id)
        elif dst == "in_progress":
            self.readied.discard(step_id)
        self.step_rows.append({
            "step_id": step_id, "task_id": task_id, "from_state": src, "to_state": dst, "attempt": attempt,
            "at": self.now, "worker": self.worker,
            "error_class": (error or {}).get("class"), "error_message": (error or {}).get("message"),
            "duration_ms": duration_ms,
        })

    def task(self, task_id: int, src: str | None, dst: str, reason: str | None = None) -> None:
        self.task_rows.append({"task_id": task_id, "from_state": src, "to_state": dst, "at": self.now,
                               "worker": self.worker, "reason": reason})

    def event(self, name: str, payload: dict[str, Any]) -> None:
        if self.collect:
            self.events.append((name, payload))

    def flush(self, conn: Connection) -> None:
        """Write the collected transition rows and wake other workers (call before the commit)."""
        if self.readied and conn.dialect.name == "postgresql":
            from tasker.store.notify import notify_ready

            notify_ready(conn)
            self.readied = set()
        if self.step_rows:
            conn.execute(_INSERT_STEP, self.step_rows)
            self.step_rows = []
        if self.task_rows:
            conn.execute(_INSERT_TASK, self.task_rows)
            self.task_rows = []
