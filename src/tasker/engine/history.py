"""What happened to tasks, read back from the store: the `engine.history` part of `Tasker`.

The durable record is the transition tables (every state change of every task and step) and the
event log merged from them (every worker process's events, with a cursor to follow it). Live events
of this process are on `engine.bus` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from tasker.domain.history import StepTransition, TaskTransition
from tasker.store import event_log
from tasker.store import tasks as task_store
from tasker.store.database import Database
from tasker.store.event_log import EventPage


class History:
    """Transitions and the durable event log of one store."""

    def __init__(self, db: Database):
        self.db = db

    def step_transitions(self, task_id: int) -> list[StepTransition]:
        """Every state change of the task's steps, oldest first: the audit trail."""
        return task_store.read_step_transitions(self.db, task_id)

    def task_transitions(self, task_id: int) -> list[TaskTransition]:
        """Every state change of the task itself, oldest first."""
        return task_store.read_task_transitions(self.db, task_id)

    def read_events(
        self,
        after: str | None = None,
        *,
        task_id: int | None = None,
        namespace: str | None = None,
        names: Sequence[str] | None = None,
        limit: int = 1000,
    ) -> EventPage:
        """Events from the durable log (every worker process's), oldest first, after the cursor
        `after`.

        Pass the page's `cursor` back as `after` to continue; `names` takes glob patterns
        (`step.*`).
        """
        with self.db.read() as conn:
            return event_log.read(
                conn,
                after,
                task_id=task_id,
                namespace=namespace,
                names=names,
                limit=limit,
                now=datetime.now(UTC),
            )

    def events_tail(self) -> str:
        """A cursor at the end of the event log, to follow only what happens from now on."""
        with self.db.read() as conn:
            return event_log.tail(conn)
