"""What a listing of tasks asks for and what one page of it holds (the dashboard's and the API's).

Records only: the store reads them (`tasker.store.listing`), the engine validates them and encodes
the cursors (`tasker.engine.queries`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tasker.domain.records import Task


@dataclass(frozen=True)
class TaskQuery:
    """Which tasks a listing shows; every field empty means all tasks."""

    namespace: str | None = None
    name: str | None = None  # template name
    version: str | None = None
    statuses: tuple[str, ...] = ()  # TaskState values
    created_from: datetime | None = None  # inclusive
    created_to: datetime | None = None  # exclusive
    key: str | None = None  # exact idempotency key OR correlation id
    min_priority: int | None = None  # tasks of at least this priority
    #: Highest priority first (then newest), paged by offset; else newest first, paged by cursor.
    by_priority: bool = False


#: Matches a listing counts at most; past it the count says "at least this many" (`Total.capped`).
TOTAL_CAP = 10_000


@dataclass(frozen=True)
class Total:
    """How many tasks match a listing, counted up to a cap so the count stays a short index read.

    `capped` means counting stopped at `count`: at least that many match. An exact count of all
    history visits every matching task (a second at 10,000,000), which no page should wait for.
    """

    count: int
    capped: bool


@dataclass(frozen=True)
class TaskPage:
    """One page of tasks, newest first, and the cursors to its neighbours (None at either end)."""

    tasks: list[Task]  # Task.steps is [] in listings
    next_cursor: str | None  # older tasks: pass as after=
    prev_cursor: str | None  # newer tasks: pass as before=
