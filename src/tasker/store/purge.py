"""Deleting finished tasks with everything that names them (`tasker tasks purge`).

A task's rows live in seven tables: the task, its steps (their foreign key cascades), their edges,
both transition tables, its custom events and its signals. A purge picks finished tasks finished
before a time, oldest first, a batch at a time, and deletes each batch's rows in one transaction,
so that it never holds locks on more than a batch (claims and completions go on beside it). Only
finished tasks are picked: a task still running, or compensating, is never touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from tasker.domain.states import FINISHED_TASK_STATES
from tasker.store.schema import (
    custom_events,
    signals,
    step_edges,
    step_transitions,
    task_transitions,
    tasks,
)

_FINISHED = sorted(s.value for s in FINISHED_TASK_STATES)
#: The log tables that name a task by `task_id` (the steps go with the task's foreign key).
_BY_TASK = (step_edges, step_transitions, task_transitions, custom_events, signals)


def _picked(
    before: datetime, statuses: Sequence[str] | None, namespace: str | None
) -> list[ColumnElement[bool]]:
    wanted = [s for s in (statuses or _FINISHED) if s in _FINISHED]
    conditions: list[ColumnElement[bool]] = [
        tasks.c.status.in_(wanted),
        tasks.c.finished_at < before,
    ]
    if namespace is not None:
        conditions.append(tasks.c.namespace == namespace)
    return conditions


def count(
    conn: Connection, before: datetime, statuses: Sequence[str] | None, namespace: str | None
) -> int:
    """How many finished tasks a purge would delete."""
    q = select(func.count()).select_from(tasks).where(*_picked(before, statuses, namespace))
    return int(conn.execute(q).scalar_one())


def purge_batch(
    conn: Connection,
    before: datetime,
    statuses: Sequence[str] | None,
    namespace: str | None,
    limit: int,
) -> int:
    """Delete up to `limit` of the oldest matching tasks with their rows; returns how many."""
    ids = list(
        conn.execute(
            select(tasks.c.id)
            .where(*_picked(before, statuses, namespace))
            .order_by(tasks.c.finished_at, tasks.c.id)
            .limit(limit)
        ).scalars()
    )
    if not ids:
        return 0
    for table in _BY_TASK:
        conn.execute(delete(table).where(table.c.task_id.in_(ids)))
    conn.execute(delete(tasks).where(tasks.c.id.in_(ids)))
    return len(ids)
