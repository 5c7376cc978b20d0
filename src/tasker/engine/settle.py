"""After a cycle settled tasks: the worker's hooks and the templates' task handlers see them.

The settled tasks are read from the store at most once per cycle, off the event loop, and only when
someone needs them (a hook that observes settled tasks, such as tracing, or a template with a
`task_handler_class`); every reader shares that read. The task handlers' `on_complete` / `on_error`
run here, and what they return is stored with the task.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from tasker.domain.records import Task
from tasker.domain.states import TaskState
from tasker.domain.templates import TaskTemplate
from tasker.engine.hooks import Hooks
from tasker.engine.resolver import Resolver
from tasker.handlers.base import TaskHandler
from tasker.store import tasks as task_store
from tasker.store.database import Database
from tasker.templates.loader import resolve_task_handler

log = logging.getLogger("tasker")

_ENDED_WELL = frozenset({TaskState.COMPLETE, TaskState.RESOLVED_MANUALLY})
_ENDED_BADLY = frozenset({TaskState.ERROR, TaskState.CANCELLED, TaskState.COMPENSATED})


class SettledBatch:
    """The tasks one cycle settled (`tasker.domain.hooks.SettledTasks`), read once on first use."""

    __slots__ = ("_db", "_definitions", "_read", "_snapshots_of", "settled")

    def __init__(
        self,
        db: Database,
        settled: Sequence[tuple[int, str]],
        snapshots_of: frozenset[int] = frozenset(),
    ):
        self._db = db
        self.settled = settled
        #: Tasks whose template snapshot the worker does not hold: read with the tasks.
        self._snapshots_of = snapshots_of
        self._read: list[Task] | None = None
        self._definitions: dict[int, dict[str, Any] | None] = {}

    def tasks(self) -> list[Task]:
        if self._read is None:
            ids = list(dict.fromkeys(task_id for task_id, _ in self.settled))
            with self._db.read() as conn:
                self._read = task_store.get_tasks(conn, ids)
                for task_id in self._snapshots_of:
                    self._definitions[task_id] = task_store.task_template_definition(conn, task_id)
        return self._read

    def definition(self, task_id: int) -> dict[str, Any] | None:
        self.tasks()
        return self._definitions.get(task_id)


class TaskHandlers:
    """Calls the task handler hooks of settled tasks whose template names a `task_handler_class`."""

    def __init__(self, resolver: Resolver, db: Database):
        self.resolver = resolver
        self.db = db

    def run(self, batch: SettledBatch, hooked: Mapping[int, int | None]) -> None:
        """`hooked`: the settled tasks that may have a task handler, by id, with their template id
        (None when the worker does not know it: the task settled on another worker's behalf)."""
        try:
            by_id = {t.id: t for t in batch.tasks()}
        except Exception:
            log.exception("could not read tasks %s for their task handler hooks", sorted(hooked))
            return
        for task_id, status in batch.settled:
            if task_id not in hooked:
                continue
            try:
                self._run_one(batch, by_id.get(task_id), hooked[task_id], TaskState(status))
            except Exception:
                log.exception(
                    "task handler hook failed for task %s; the task is not affected", task_id
                )

    def _run_one(
        self, batch: SettledBatch, task: Task | None, template_id: int | None, state: TaskState
    ) -> None:
        if task is None:
            return
        handler = self._handler(batch, task.id, template_id)
        if handler is None:
            return
        if state in _ENDED_WELL:
            hook = handler.on_complete
        elif state in _ENDED_BADLY:
            hook = handler.on_error
        else:
            return  # reopened (pending) or running: not an ending
        notes = hook(task)
        if notes:
            task_store.annotate(self.db, task.id, notes)

    def _handler(
        self, batch: SettledBatch, task_id: int, template_id: int | None
    ) -> TaskHandler | None:
        if template_id is not None and self.resolver.known(template_id):
            found = self.resolver.task_handler(template_id)
            return found if isinstance(found, TaskHandler) else None
        definition = batch.definition(task_id)
        if definition is None:
            return None
        template = TaskTemplate.from_snapshot(definition)
        if not template.task_handler_class:
            return None
        made = resolve_task_handler(template.task_handler_class, where=template.key)()
        return made if isinstance(made, TaskHandler) else None


def deliver_settled(
    hooks: Hooks, handlers: TaskHandlers, batch: SettledBatch, hooked: Mapping[int, int | None]
) -> None:
    """Off the event loop: the hooks that observe settled tasks, then the task handlers."""
    hooks.tasks_settled(batch)
    if hooked:
        handlers.run(batch, hooked)
