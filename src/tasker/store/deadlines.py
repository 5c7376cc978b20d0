"""Deadlines in the store: the unfinished tasks past theirs, and the next one due.

Both read the partial index `ix_tasker_tasks_deadlines` (unfinished tasks with a deadline), whose
condition the statements repeat as literals so that a generic plan can use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import bindparam, func, select, text
from sqlalchemy.engine import Connection

from tasker.store.schema import DEADLINED, tasks

_EXPIRED = (
    select(tasks.c.id)
    .where(text(DEADLINED), tasks.c.deadline_at <= bindparam("now"))
    .order_by(tasks.c.deadline_at, tasks.c.id)
    .limit(bindparam("limit"))
)


def expired(
    conn: Connection, now: datetime, limit: int, task_ids: Sequence[int] | None = None
) -> list[int]:
    """Unfinished tasks whose deadline has passed, earliest first (of `task_ids` only, if
    given)."""
    q = _EXPIRED
    if task_ids is not None:
        q = q.where(tasks.c.id.in_(list(task_ids)))
    return list(conn.execute(q, {"now": now, "limit": limit}).scalars())


def next_deadline(conn: Connection, task_ids: Sequence[int] | None = None) -> datetime | None:
    """The earliest deadline of an unfinished task (of `task_ids` only, if given)."""
    q = select(func.min(tasks.c.deadline_at)).where(text(DEADLINED))
    if task_ids is not None:
        q = q.where(tasks.c.id.in_(list(task_ids)))
    found: datetime | None = conn.execute(q).scalar()
    return found
