"""The reads behind the dashboard: keyset pages of tasks, the overview, the template versions.

The dashboard and the JSON API are delivery layers: they hold no SQL and call these use cases
through the `Tasker` facade. Each read is bounded by an index (migration 0004), so a page costs the
same with a thousand tasks or a million: listings walk an index from a cursor instead of skipping
rows with OFFSET, and never COUNT the matching rows, which on PostgreSQL visits every one of them.

Cursors are opaque to callers (base64 of a tagged task id) so that the ordering key can change later
without breaking bookmarked URLs silently: a cursor that does not decode is refused.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection

from tasker.domain.errors import TaskerInputError
from tasker.domain.records import Task
from tasker.domain.states import TERMINAL_TASK_STATES, TaskState
from tasker.store import listing
from tasker.store import overview as overview_store
from tasker.store.database import Database

#: The most tasks one page may hold (the API's and the dashboard's limit).
MAX_PAGE = 500
#: Minutes in the overview's throughput chart, the current (partial) minute included.
CHART_MINUTES = 60
LATEST_FAILURES = 10
#: Error messages in the overview are cut to this many characters: ten rows, not ten tracebacks.
MESSAGE_CHARS = 300
_CURSOR_TAG = "t1:"
_INT64_MAX = 2**63 - 1


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


@dataclass(frozen=True)
class TaskPage:
    """One page of tasks, newest first, and the cursors to its neighbours (None at either end)."""

    tasks: list[Task]  # Task.steps is [] in listings
    next_cursor: str | None  # older tasks: pass as after=
    prev_cursor: str | None  # newer tasks: pass as before=


@dataclass(frozen=True)
class MinuteCount:
    minute: datetime  # UTC, start of the minute
    completed: int  # step attempts that completed in that minute
    failed: int  # step attempts that failed (waiting_retry or error) in it


@dataclass(frozen=True)
class FailureRow:
    task_id: int
    template: str  # "ns/name@version"
    step: str
    error_class: str
    message: str  # cut to MESSAGE_CHARS
    at: datetime


@dataclass(frozen=True)
class Overview:
    tasks_by_status: dict[str, int]  # every TaskState value present, 0 when none
    steps_waiting_retry: int
    completed_last_hour: int  # tasks that finished complete in the last hour
    completed_last_day: int
    failed_last_hour: int  # tasks that finished in error in the last hour
    failed_last_day: int
    per_minute: list[MinuteCount]  # exactly CHART_MINUTES entries, oldest first, ending now
    latest_failures: list[FailureRow]  # newest first, at most LATEST_FAILURES
    generated_at: datetime


# -- cursors ---------------------------------------------------------------------------------------
def encode_cursor(task_id: int) -> str:
    raw = f"{_CURSOR_TAG}{task_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, name: str = "cursor") -> int:
    """The task id a cursor stands for; anything this module did not write is refused."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    digits = text[len(_CURSOR_TAG) :] if text.startswith(_CURSOR_TAG) else ""
    if not digits.isascii() or not digits.isdigit() or len(digits) > 19 or int(digits) > _INT64_MAX:
        raise TaskerInputError(
            f"{name}: not a cursor of this listing; fix: use the cursor a page returned"
        )
    return int(digits)


# -- tasks --------------------------------------------------------------------------------------
def check_query(query: TaskQuery) -> TaskQuery:
    """Refuse statuses that are not task states; drop empty strings (a form's "any")."""
    known = {s.value for s in TaskState}
    unknown = [s for s in query.statuses if s not in known]
    if unknown:
        raise TaskerInputError(
            f"status: unknown task state(s) {', '.join(map(repr, unknown))}; "
            f"fix: use one of {', '.join(sorted(known))}"
        )
    return TaskQuery(
        namespace=query.namespace or None,
        name=query.name or None,
        version=query.version or None,
        statuses=tuple(sorted(set(query.statuses))),
        created_from=_utc(query.created_from),
        created_to=_utc(query.created_to),
        key=query.key or None,
    )


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def page_tasks(
    db: Database,
    query: TaskQuery,
    *,
    limit: int,
    after: str | None,
    before: str | None,
    offset: int = 0,
) -> TaskPage:
    """A page of tasks newest first: the first, the one older than `after` or newer than `before`.

    One extra row is read to learn whether a further page exists, which is all a pager needs. Going
    back (`before`) reads upwards from the cursor and reverses, so pages are the same ones met going
    forward as long as no task was created in between. `offset` serves the API's older clients (it
    cannot be combined with a cursor); the cursors it answers let them switch to keyset paging.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise TaskerInputError(f"limit: must be between 1 and {MAX_PAGE}")
    if after is not None and before is not None:
        raise TaskerInputError("after and before: give at most one cursor")
    if offset and (after is not None or before is not None):
        raise TaskerInputError(
            "offset: cannot be combined with a cursor; fix: use after/before alone"
        )
    if not 0 <= offset <= _INT64_MAX:
        raise TaskerInputError("offset: must be between 0 and 2**63-1")
    after_id = decode_cursor(after, "after") if after is not None else None
    before_id = decode_cursor(before, "before") if before is not None else None
    query = check_query(query)
    with db.read() as conn:
        found = listing.page(
            conn, query, limit=limit + 1, after=after_id, before=before_id, offset=offset
        )
    more = len(found) > limit
    if before_id is not None:
        found = found[:limit][::-1]  # read upwards; the extra row is the newest one
        newer, older = more, True
    else:
        found = found[:limit]
        newer, older = after_id is not None or offset > 0, more
    if not found:  # an empty page still links back to where it came from
        return TaskPage(
            [],
            encode_cursor(min(before_id + 1, _INT64_MAX)) if before_id is not None else None,
            encode_cursor(after_id - 1) if after_id is not None and after_id > 0 else None,
        )
    return TaskPage(
        tasks=found,
        next_cursor=encode_cursor(found[-1].id) if older else None,
        prev_cursor=encode_cursor(found[0].id) if newer else None,
    )


def count_tasks(db: Database, query: TaskQuery) -> int:
    """How many tasks match (a full count: the API's legacy `total`, never a dashboard page)."""
    query = check_query(query)
    with db.read() as conn:
        return listing.count(conn, query)


# -- overview -----------------------------------------------------------------------------------
#: Tasks that finished longer ago than this count as settled: no late commit can still add to them.
SETTLED_MARGIN = timedelta(minutes=5)
#: How long a settled count is reused before it is counted again (one full index scan each time).
SETTLED_REFRESH = timedelta(minutes=10)


class FinalCounts:
    """Counts of tasks in final states, split at a moment in the past: a view reads the recent only.

    A grouped count of every task is an index-only scan of the whole table (~130 ms at 1,000,000 on
    PostgreSQL, measured in docs/benchmarks.md). Complete, cancelled and resolved tasks never change
    state again, so those that finished before `cutoff` are counted once and kept; each view adds
    the ones finished since (a short range of `(status, finished_at)`). The cutoff trails the clock
    by `SETTLED_MARGIN`, so a transaction that commits late with an earlier timestamp is still seen,
    and is moved forward every `SETTLED_REFRESH`. One per engine: nothing is shared between stores.
    """

    def __init__(self) -> None:
        self.cutoff: datetime | None = None
        self.settled: dict[str, int] = {}

    def counts(self, conn: Connection, now: datetime) -> dict[str, int]:
        final = sorted(s.value for s in TERMINAL_TASK_STATES)
        if self.cutoff is None or not now - SETTLED_REFRESH - SETTLED_MARGIN < self.cutoff <= now:
            self.cutoff = now - SETTLED_MARGIN
            self.settled = overview_store.final_by_status(conn, final, before=self.cutoff)
        recent = overview_store.final_by_status(conn, final, since=self.cutoff)
        unfinished = [s.value for s in TaskState if s not in TERMINAL_TASK_STATES]
        out = overview_store.unfinished_by_status(conn, unfinished)
        for status in final:
            out[status] = self.settled.get(status, 0) + recent.get(status, 0)
        return out


def overview(
    db: Database, final: FinalCounts | None = None, now: datetime | None = None
) -> Overview:
    """What an operator looks at first; each figure is one indexed query (store.overview).

    Without `final` (the engine keeps one), tasks are counted by status over the whole table.
    """
    now = now or datetime.now(UTC)
    current = now.replace(second=0, microsecond=0)
    first_minute = current - timedelta(minutes=CHART_MINUTES - 1)
    with db.read() as conn:
        by_status = final.counts(conn, now) if final else overview_store.tasks_by_status(conn)
        waiting = overview_store.steps_waiting_retry(conn)
        finished = overview_store.finished_since(
            conn, hour=now - timedelta(hours=1), day=now - timedelta(days=1)
        )
        minutes = overview_store.attempts_per_minute(conn, first_minute)
        failures = overview_store.latest_failures(conn, LATEST_FAILURES)
    counts = {s.value: by_status.get(s.value, 0) for s in TaskState}
    chart = []
    for i in range(CHART_MINUTES):
        minute = first_minute + timedelta(minutes=i)
        completed, failed = minutes.get(int(minute.timestamp()) // 60, (0, 0))
        chart.append(MinuteCount(minute=minute, completed=completed, failed=failed))
    return Overview(
        tasks_by_status=counts,
        steps_waiting_retry=waiting,
        completed_last_hour=finished.completed_hour,
        completed_last_day=finished.completed_day,
        failed_last_hour=finished.failed_hour,
        failed_last_day=finished.failed_day,
        per_minute=chart,
        latest_failures=[
            FailureRow(
                task_id=f.task_id,
                template=f"{f.namespace}/{f.name}@{f.version}",
                step=f.step,
                error_class=f.error_class or "Error",
                message=(f.message or "")[:MESSAGE_CHARS],
                at=f.at,
            )
            for f in failures
        ],
        generated_at=now,
    )
