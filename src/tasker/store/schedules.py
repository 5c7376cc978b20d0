"""Schedules in the store (`tasker_schedules`): add, list, change, and the ones due.

A schedule's `next_at` is the next tick it will fire; firing a tick moves it on with a conditional
UPDATE (`advance`: only from the `next_at` it was read with), so two workers that both fired the
same tick (the task of which exists once: its idempotency key is the schedule and the tick) move
it once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from tasker.domain.errors import NotFoundError
from tasker.domain.schedules import CatchUp, Schedule
from tasker.store.schema import schedules


def _row(r: Any) -> Schedule:
    return Schedule(
        id=r.id,
        namespace=r.namespace,
        task_name=r.task_name,
        version=r.version,
        name=r.name,
        cron=r.cron,
        timezone=r.timezone,
        context=r.context or {},
        catch_up=CatchUp(r.catch_up),
        paused=bool(r.paused),
        origin=r.origin,
        next_at=r.next_at,
        last_at=r.last_at,
        last_task_id=r.last_task_id,
        created_at=r.created_at,
        updated_at=r.updated_at,
    )


def find(conn: Connection, namespace: str, task_name: str, name: str) -> Schedule | None:
    row = conn.execute(
        select(schedules).where(
            schedules.c.namespace == namespace,
            schedules.c.task_name == task_name,
            schedules.c.name == name,
        )
    ).first()
    return _row(row) if row is not None else None


def get(conn: Connection, schedule_id: int) -> Schedule:
    row = conn.execute(select(schedules).where(schedules.c.id == schedule_id)).first()
    if row is None:
        raise NotFoundError(
            f"no schedule with id {schedule_id}; fix: list them with 'tasker schedules list'"
        )
    return _row(row)


def all_schedules(conn: Connection, namespace: str | None = None) -> list[Schedule]:
    q = select(schedules).order_by(schedules.c.namespace, schedules.c.task_name, schedules.c.name)
    if namespace is not None:
        q = q.where(schedules.c.namespace == namespace)
    return [_row(r) for r in conn.execute(q)]


def add(conn: Connection, values: dict[str, Any]) -> Schedule:
    new_id = conn.execute(insert(schedules).values(**values).returning(schedules.c.id)).scalar_one()
    return get(conn, new_id)


def change(conn: Connection, schedule_id: int, now: datetime, **values: Any) -> Schedule:
    conn.execute(
        update(schedules).where(schedules.c.id == schedule_id).values(updated_at=now, **values)
    )
    return get(conn, schedule_id)


def remove(conn: Connection, schedule_id: int) -> bool:
    return bool(conn.execute(delete(schedules).where(schedules.c.id == schedule_id)).rowcount)


_DUE = (
    select(schedules)
    .where(schedules.c.paused.is_(False), schedules.c.next_at <= bindparam("now"))
    .order_by(schedules.c.next_at, schedules.c.id)
    .limit(bindparam("limit"))
)


def due(conn: Connection, now: datetime, limit: int = 100) -> list[Schedule]:
    """Schedules not paused whose next tick has come, earliest first."""
    return [_row(r) for r in conn.execute(_DUE, {"now": now, "limit": limit})]


def next_tick(conn: Connection) -> datetime | None:
    """The earliest next tick of a schedule that is not paused."""
    found: datetime | None = conn.execute(
        select(func.min(schedules.c.next_at)).where(schedules.c.paused.is_(False))
    ).scalar()
    return found


_ADVANCE = (
    update(schedules)
    .where(schedules.c.id == bindparam("schedule_id"), schedules.c.next_at == bindparam("was"))
    .values(
        next_at=bindparam("next_at"),
        last_at=bindparam("last_at"),
        last_task_id=bindparam("last_task_id"),
        updated_at=bindparam("now"),
    )
)


def advance(
    conn: Connection,
    schedule: Schedule,
    next_at: datetime,
    last_at: datetime | None,
    last_task_id: int | None,
    now: datetime,
) -> bool:
    """Move a schedule to its next tick, only from the tick it was read at (False: another worker
    moved it first)."""
    moved = conn.execute(
        _ADVANCE,
        {
            "schedule_id": schedule.id,
            "was": schedule.next_at,
            "next_at": next_at,
            "last_at": last_at if last_at is not None else schedule.last_at,
            "last_task_id": last_task_id if last_task_id is not None else schedule.last_task_id,
            "now": now,
        },
    )
    return bool(moved.rowcount)


def template_schedules(conn: Connection, namespace: str, task_name: str) -> list[Schedule]:
    """The schedules a template declares (origin `template`)."""
    return [
        _row(r)
        for r in conn.execute(
            select(schedules).where(
                schedules.c.namespace == namespace,
                schedules.c.task_name == task_name,
                schedules.c.origin == "template",
            )
        )
    ]
