"""Jobs that one worker at a time does for all (`tasker_jobs`): a lease row per job.

A worker takes a job's lease when it is free, expired or already its own, and keeps it by taking
it again before it runs out; a worker that dies simply stops renewing, and another takes over
after `lease_seconds`. One conditional UPDATE (after an INSERT that does nothing if the row
exists) decides, on SQLite and PostgreSQL alike: no advisory lock to leak with a pooled
connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from tasker.store.schema import jobs

_TAKE = (
    update(jobs)
    .where(
        jobs.c.name == bindparam("job"),
        or_(
            jobs.c.holder.is_(None),
            jobs.c.holder == bindparam("worker"),
            jobs.c.lease_until <= bindparam("now"),
        ),
    )
    .values(
        holder=bindparam("worker"), lease_until=bindparam("until"), last_run_at=bindparam("now")
    )
)


def take(conn: Connection, job: str, worker: str, now: datetime, lease_seconds: float) -> bool:
    """Take (or renew) the job's lease for `worker`; False when another worker holds it."""
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(insert(jobs).values(name=job).on_conflict_do_nothing(index_elements=["name"]))
    until = now + timedelta(seconds=lease_seconds)
    taken = conn.execute(_TAKE, {"job": job, "worker": worker, "now": now, "until": until})
    return bool(taken.rowcount)


def release(conn: Connection, job: str, worker: str) -> None:
    """Give the lease up (a worker that stops), so that another takes over at once."""
    conn.execute(
        update(jobs)
        .where(jobs.c.name == job, jobs.c.holder == worker)
        .values(holder=None, lease_until=None)
    )


def holder(conn: Connection, job: str) -> tuple[str | None, datetime | None, datetime | None]:
    """Who holds the job, until when, and when it last ran (Nones: never taken)."""
    row = conn.execute(
        select(jobs.c.holder, jobs.c.lease_until, jobs.c.last_run_at).where(jobs.c.name == job)
    ).first()
    return (row.holder, row.lease_until, row.last_run_at) if row else (None, None, None)


@dataclass(frozen=True)
class JobState:
    """A job's row: who holds it until when, when it last ran, and its last pass as the job
    recorded it (JSON; None: it records none, or never ran)."""

    holder: str | None = None
    lease_until: datetime | None = None
    last_run_at: datetime | None = None
    last_pass: Mapping[str, Any] | None = None


def record_pass(conn: Connection, job: str, worker: str, report: Mapping[str, Any]) -> bool:
    """Store what the holder's pass did (only while `worker` holds the job: a holder that lost it
    meanwhile leaves the new holder's record alone); False when it did not hold it."""
    done = conn.execute(
        update(jobs)
        .where(jobs.c.name == job, jobs.c.holder == worker)
        .values(last_pass=dict(report))
    )
    return bool(done.rowcount)


def state(conn: Connection, job: str) -> JobState:
    """The job's row (all None: never taken)."""
    row = conn.execute(
        select(jobs.c.holder, jobs.c.lease_until, jobs.c.last_run_at, jobs.c.last_pass).where(
            jobs.c.name == job
        )
    ).first()
    if row is None:
        return JobState()
    return JobState(row.holder, row.lease_until, row.last_run_at, row.last_pass)
