"""When a task starts and by when it must finish: delayed starts and deadlines.

`task_times` turns what a caller gives (`run_at` or `delay`; `deadline` as a time or as a duration
from the start; the template's `timeout_seconds`) into the two times stored with the task, or says
plainly what is wrong. Pure: the current time is an argument.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from tasker.domain.waits import duration_seconds

#: The reason recorded when a task runs past its deadline.
DEADLINE_EXCEEDED = "deadline_exceeded"


class TimingError(ValueError):
    """A start time or deadline that cannot be used; the message says which and why."""


def _aware(value: datetime, field: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise TimingError(
            f"{field} {value.isoformat()} has no time zone; give one, like"
            " 2026-12-24T07:00:00+01:00 or 2026-12-24T06:00:00Z (in Python, an aware datetime)"
        )
    return value


def _seconds(value: Any, field: str) -> float:
    try:
        return duration_seconds(value)
    except ValueError as exc:
        raise TimingError(f"{field}: {exc}") from None


def task_times(
    now: datetime,
    timeout_seconds: float | None,
    run_at: datetime | None = None,
    delay: float | timedelta | str | None = None,
    deadline: datetime | float | timedelta | str | None = None,
) -> tuple[datetime | None, datetime | None]:
    """(starts_at, deadline_at) of a new task: starts_at None for a task that starts now, a
    start in the past counts as now; deadline_at from `deadline` or else the template's
    `timeout_seconds`, counted from the start."""
    if run_at is not None and delay is not None:
        raise TimingError("give run_at or delay, not both")
    starts_at: datetime | None = None
    if run_at is not None:
        if not isinstance(run_at, datetime):
            raise TimingError(f"run_at must be a datetime, not {type(run_at).__name__}")
        starts_at = _aware(run_at, "run_at")
    elif delay is not None:
        starts_at = now + timedelta(seconds=_seconds(delay, "delay"))
    if starts_at is not None and starts_at <= now:
        starts_at = None
    start = starts_at or now
    deadline_at: datetime | None = None
    if isinstance(deadline, datetime):
        deadline_at = _aware(deadline, "deadline")
        if deadline_at <= start:
            raise TimingError(
                f"deadline {deadline_at.isoformat()} is not after the task's start"
                f" ({start.isoformat()}); give a later time"
            )
    elif deadline is not None:
        deadline_at = start + timedelta(seconds=_seconds(deadline, "deadline"))
    elif timeout_seconds is not None:
        deadline_at = start + timedelta(seconds=timeout_seconds)
    return starts_at, deadline_at
