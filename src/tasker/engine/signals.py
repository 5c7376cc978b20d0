"""Signals to tasks: `engine.signal(...)` and `engine.signals`.

A signal is how the outside world tells a running task that something happened (a payment webhook,
a person's approval, an e-mail confirmed). A step with `wait_for: <name>`, or a handler that
returned `ctx.wait_for_signal(<name>)`, is parked until it arrives, holding no worker slot, lease
or attempt. A signal that arrives before its step waits is kept; a repeated idempotency key is the
same signal; one to a finished task, or of a name no step of the task's template declares, is
refused saying why.
"""

from __future__ import annotations

from typing import Any

from tasker.domain.errors import NotFoundError, TaskerInputError
from tasker.domain.records import Signal
from tasker.domain.storable import find_unstorable
from tasker.domain.templates import NAME
from tasker.engine import clock
from tasker.engine.running import RunningWorkers
from tasker.events.bus import EventBus
from tasker.store import signals as signal_store
from tasker.store.compensations import task_template
from tasker.store.database import Database
from tasker.store.transactions import journaled


class Signals:
    """Send signals to tasks and read those a task received."""

    def __init__(self, db: Database, bus: EventBus, running: RunningWorkers):
        self.db = db
        self.bus = bus
        self._running = running

    def send(
        self,
        task_id: int,
        name: str,
        payload: Any = None,
        *,
        idempotency_key: str | None = None,
        sender: str | None = None,
    ) -> Signal:
        """Send the signal `name` with a JSON `payload` to a task; the steps parked for it wake
        now. Returns the signal stored (`deduplicated` when the key was seen before)."""
        if not isinstance(name, str) or not NAME.match(name) or len(name) > 128:
            raise TaskerInputError(
                f"signal name {name!r} is not valid; use letters, digits, '_', '-' or '.',"
                " starting with a letter or '_' (at most 128 characters)"
            )
        problem = find_unstorable(payload, "payload")
        if problem is not None:
            raise TaskerInputError(f"the signal's payload cannot be stored: {problem}")
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 255
        ):
            raise TaskerInputError("idempotency_key must be a string of 1 to 255 characters")
        with self.db.read() as conn:  # the snapshot is parsed once per process
            declared = task_template(conn, task_id).signal_names()
        if name not in declared:
            raise TaskerInputError(
                f"task {task_id} does not wait for a signal named '{name}'; its template declares"
                f" {', '.join(sorted(declared)) or 'no signals'} (a step's wait_for: or"
                " signals:)"
            )
        signal, events = journaled(
            self.db,
            lambda conn, journal: signal_store.send(
                conn,
                journal,
                task_id,
                name,
                payload,
                idempotency_key=idempotency_key,
                sender=sender,
            ),
            clock=clock.now,
        )
        for event, data in events:
            self.bus.publish(event, data)
        if signal.woke:
            self._running.notify()
        return signal

    def of_task(self, task_id: int) -> list[Signal]:
        """The signals a task received, oldest first."""
        with self.db.read() as conn:
            if not signal_store.task_exists(conn, task_id):
                raise NotFoundError(f"no task with id {task_id}")
            return signal_store.list_signals(conn, task_id)
