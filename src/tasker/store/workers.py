"""The registry of worker processes: who is running, since when, and when each was last heard from.

Long-running workers write their row at start, refresh `last_seen_at` every few seconds and stamp
`stopped_at` on a clean exit; a worker killed outright simply stops being seen. Health and status
read it instead of asking the workers, which may be on other machines.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, Connection, and_, delete, func, insert, select, update

from tasker.domain.history import WorkerRecord
from tasker.store.schema import workers

#: How often a running worker refreshes its row, and how long after that it still counts as alive.
SEEN_EVERY_SECONDS = 10.0
ALIVE_WITHIN_SECONDS = 60.0
#: A worker starting forgets the rows of workers not seen for this long (a day): stopped and
#: vanished workers stay in the table that long for an operator to look at, then their rows go.
PRUNE_AFTER_SECONDS = 86_400.0


def announce(
    conn: Connection,
    worker_id: str,
    *,
    namespaces: list[str] | None,
    concurrency: int,
    now: datetime,
) -> None:
    conn.execute(delete(workers).where(workers.c.id == worker_id))
    conn.execute(
        insert(workers).values(
            id=worker_id,
            hostname=socket.gethostname()[:255],
            pid=os.getpid(),
            namespaces=namespaces,
            concurrency=concurrency,
            started_at=now,
            last_seen_at=now,
            steps_run=0,
        )
    )


def seen(
    conn: Connection, worker_id: str, *, steps_run: int, now: datetime, stopped: bool = False
) -> None:
    values: dict[str, Any] = {"last_seen_at": now, "steps_run": steps_run}
    if stopped:
        values["stopped_at"] = now
    conn.execute(update(workers).where(workers.c.id == worker_id).values(**values))


def _alive(now: datetime, within_seconds: float) -> ColumnElement[bool]:
    return and_(
        workers.c.last_seen_at >= now - timedelta(seconds=within_seconds),
        workers.c.stopped_at.is_(None),
    )


def recent(
    conn: Connection,
    now: datetime,
    within_seconds: float = ALIVE_WITHIN_SECONDS,
    limit: int | None = None,
) -> list[WorkerRecord]:
    """Workers heard from within `within_seconds` that have not stopped, most recently seen
    first."""
    q = (
        select(workers)
        .where(_alive(now, within_seconds))
        .order_by(workers.c.last_seen_at.desc())
        .limit(limit)
    )
    return [cast(WorkerRecord, dict(r._mapping)) for r in conn.execute(q)]


def count_recent(
    conn: Connection, now: datetime, within_seconds: float = ALIVE_WITHIN_SECONDS
) -> int:
    return int(
        conn.execute(
            select(func.count()).select_from(workers).where(_alive(now, within_seconds))
        ).scalar()
        or 0
    )


def prune(conn: Connection, older_than: datetime) -> int:
    """Forget workers not seen since `older_than` (their rows only serve history)."""
    return int(
        conn.execute(delete(workers).where(workers.c.last_seen_at < older_than)).rowcount or 0
    )
