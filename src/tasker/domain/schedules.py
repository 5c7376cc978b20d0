"""Cron schedules: which ticks are due, and what to do with the ones missed while nothing ran.

A schedule's times come from `cronsim` (a maintained cron parser; no home-made one) in the
schedule's IANA time zone, so "0 7 * * *" in Europe/Berlin is 7 AM Berlin time all year. Daylight
saving follows cron's (and cronsim's) rules: a time that does not exist on the day clocks go
forward (02:30 when 02:00 jumps to 03:00) fires once at the first existing minute after it, and a
time that happens twice on the day clocks go back fires once, at its first occurrence.

Pure: `due_ticks` takes the schedule's next tick and the current time and says which ticks fire and
which tick is next; `tasker.engine.schedules` creates the tasks (one per tick, keyed by the
schedule and the tick, so that no tick fires twice whichever workers run).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, field_validator

#: How late a tick may fire and still count as on time (a worker's schedule job runs every second;
#: a tick later than this was missed, and `catch_up` decides).
GRACE_SECONDS = 60.0
#: `catch_up: all` fires at most this many missed ticks (the newest); older ones are skipped.
MAX_CATCH_UP = 100
_NAME_CHARS = "letters, digits, '_', '-' or '.', starting with a letter or '_'"


class CatchUp(StrEnum):
    """What a schedule does with the ticks missed while no worker ran."""

    #: Fire none of them; the next tick fires as usual.
    SKIP = "skip"
    #: Fire once, for the newest missed tick (the default).
    ONCE = "once"
    #: Fire each missed tick (at most `MAX_CATCH_UP`, the newest).
    ALL = "all"


#: (A tick at most `GRACE_SECONDS` late is not missed: it fires whatever `catch_up` says.)


def zone(name: str) -> ZoneInfo:
    """The IANA time zone, or `ValueError` naming it and an example."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone '{name}'; use an IANA name such as UTC or Europe/Berlin"
        ) from None


def check_cron(expression: str) -> str:
    """The cron expression, or `ValueError` with cronsim's reason."""
    try:
        CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ValueError(
            f"'{expression}' is not a cron expression ({exc}); use five fields, for example"
            " '0 7 * * *' for 7 AM every day (or six, seconds first: '*/10 * * * * *')"
        ) from None
    return expression


def next_tick(cron: str, timezone: str, after: datetime) -> datetime:
    """The first tick strictly after `after`, in UTC."""
    local = after.astimezone(zone(timezone))
    found: datetime = next(CronSim(cron, local))
    return found.astimezone(UTC)


@dataclass(frozen=True)
class DueTicks:
    """The ticks to fire now (oldest first), how many were missed and not fired, and the next tick
    to wait for."""

    fire: list[datetime]
    skipped: int
    next_at: datetime


#: How many missed ticks beyond those fired are counted (for the log) before counting stops.
COUNT_MISSED = 10_000


def due_ticks(
    cron: str, timezone: str, next_at: datetime, now: datetime, catch_up: CatchUp
) -> DueTicks:
    """Which ticks fire at `now` for a schedule whose next tick was `next_at`.

    A tick at most `GRACE_SECONDS` old is on time and fires whatever `catch_up` says (the timers
    job looks every second, and a new holder takes over within seconds of the last one's death).
    Older ticks were missed while no worker ran: `skip` fires none of them, `once` the newest of
    them, `all` each of them (the newest `MAX_CATCH_UP`). The ticks are walked back from `now`, so
    a schedule of every second that was down for a month costs what one down for a minute does."""
    if now < next_at:
        return DueTicks([], 0, next_at)
    wanted = {CatchUp.SKIP: 0, CatchUp.ONCE: 1, CatchUp.ALL: MAX_CATCH_UP}[catch_up]
    on_time: list[datetime] = []
    late: list[datetime] = []
    missed = 0
    start = (now + timedelta(seconds=1)).astimezone(zone(timezone))
    for found in CronSim(cron, start, reverse=True):
        tick = found.astimezone(UTC)
        if tick > now:
            continue
        if tick < next_at or missed >= COUNT_MISSED:
            break
        if (now - tick).total_seconds() <= GRACE_SECONDS:
            on_time.append(tick)
        elif len(late) < wanted:
            late.append(tick)
        else:
            missed += 1
    fire = sorted(late + on_time)
    return DueTicks(fire, missed, next_tick(cron, timezone, now))


class ScheduleSpec(BaseModel):
    """A template's `schedules:` entry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    cron: str = Field(min_length=1, max_length=255)
    timezone: str = "UTC"
    context: dict[str, Any] = Field(default_factory=dict)
    catch_up: CatchUp = CatchUp.ONCE

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        from tasker.domain.templates import NAME  # templates imports this module

        if not NAME.match(v):
            raise ValueError(f"a schedule name uses {_NAME_CHARS}")
        return v

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        return check_cron(v)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        zone(v)
        return v

    @field_validator("context", mode="before")
    @classmethod
    def _context(cls, v: Any) -> Any:
        return {} if v is None else v


@dataclass(frozen=True)
class Schedule:
    """A stored schedule (`engine.schedules`)."""

    id: int
    namespace: str
    task_name: str
    version: str | None
    name: str
    cron: str
    timezone: str
    context: dict[str, Any]
    catch_up: CatchUp
    paused: bool
    origin: str
    next_at: datetime
    last_at: datetime | None
    last_task_id: int | None
    created_at: datetime
    updated_at: datetime

    @property
    def template(self) -> str:
        """`namespace/name`, or `namespace/name@version` when pinned."""
        ref = f"{self.namespace}/{self.task_name}"
        return f"{ref}@{self.version}" if self.version else ref


def tick_key(schedule_id: int, tick: datetime) -> str:
    """The idempotency key of the task a tick creates: one task per schedule and tick, whichever
    worker fires it and however often."""
    return f"schedule:{schedule_id}:{tick.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def first_tick(cron: str, timezone: str, now: datetime) -> datetime:
    """A new (or resumed) schedule's first tick: the first after `now`, less a second so that a
    schedule added at 07:00:00 for "0 7 * * *" fires now rather than tomorrow."""
    return next_tick(cron, timezone, now - timedelta(seconds=1))
