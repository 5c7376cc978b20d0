"""The overview's figures, each one query bounded by an index so the page stays fast on a big store.

- tasks by status: states a task can leave are counted from ranges of `(status, id)`; final states
  (complete, cancelled, resolved) from `(status, finished_at)`: the part finished long ago once,
  the recent part at each view (see `FinalCounts`);
- steps waiting for retry: the partial index over active steps, whose size follows the queue;
- tasks finished in the last hour and day: ranges of the `(status, finished_at)` index;
- attempts per minute and the latest failures: ranges of the `(to_state, at)` index of step
  transitions, read from the end, so only the last hour's (or the last few) rows are visited.

`overview` reads them all in one transaction and returns the typed report
(`tasker.domain.reports.Overview`) that the API serves and the dashboard draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    Select,
    case,
    cast,
    func,
    or_,
    select,
    text,
    union_all,
)

from tasker.domain.reports import FailureRow, MinuteCount, Overview
from tasker.domain.states import TERMINAL_TASK_STATES, StepState, TaskState
from tasker.store.database import Database
from tasker.store.schema import ACTIVE, OUTCOMES, step_transitions, steps, tasks

#: Transitions that end an attempt in failure (a graceful release back to `ready` is not one).
FAILED_STATES = (StepState.WAITING_RETRY.value, StepState.ERROR.value)
#: Minutes in the overview's throughput chart, the current (partial) minute included.
CHART_MINUTES = 60
LATEST_FAILURES = 10
#: Error messages in the overview are cut to this many characters: ten rows, not ten tracebacks.
MESSAGE_CHARS = 300
#: Tasks that finished longer ago than this count as settled: no late commit can still add to them.
SETTLED_MARGIN = timedelta(minutes=5)
#: How often the settled count moves forward (by counting the range of finish times it moves over).
SETTLED_REFRESH = timedelta(minutes=10)
#: How often the settled count is counted whole again (one index-only scan of all finished tasks).
SETTLED_RECOUNT = timedelta(hours=6)


@dataclass(frozen=True)
class Finished:
    completed_hour: int
    completed_day: int
    failed_hour: int
    failed_day: int


@dataclass(frozen=True)
class Failure:
    task_id: int
    namespace: str
    name: str
    version: str
    step: str
    error_class: str | None
    message: str | None
    at: datetime


def tasks_by_status(conn: Connection) -> dict[str, int]:
    """Every task counted (an index-only scan of all: ~130 ms at 1,000,000 on PostgreSQL)."""
    rows = conn.execute(select(tasks.c.status, func.count()).group_by(tasks.c.status))
    return {str(status): int(n) for status, n in rows}


def unfinished_by_status(conn: Connection, statuses: Sequence[str]) -> dict[str, int]:
    """Tasks in states a task can leave (pending, in progress, error): ranges of `(status, id)`."""
    rows = conn.execute(
        select(tasks.c.status, func.count())
        .where(tasks.c.status.in_(statuses))
        .group_by(tasks.c.status)
    )
    return {str(status): int(n) for status, n in rows}


def final_by_status(
    conn: Connection,
    statuses: Sequence[str],
    *,
    before: datetime | None = None,
    since: datetime | None = None,
) -> dict[str, int]:
    """Tasks in final states that finished in `[since, before)`; without `before`, since `since`
    or with no finish at all (ranges of `(status, finished_at)`).

    A final state is never left, so the count before a moment in the past never changes: the
    engine counts it once, moves it forward by the range in between, and adds the recent range.
    """
    rows = conn.execute(final_by_status_statement(statuses, before=before, since=since))
    return {str(status): int(n) for status, n in rows}


def final_by_status_statement(
    statuses: Sequence[str], *, before: datetime | None = None, since: datetime | None = None
) -> Select[Any]:
    """The statement of `final_by_status`."""
    where: list[ColumnElement[bool]] = [tasks.c.status.in_(statuses)]
    if before is not None:
        where.append(tasks.c.finished_at < before)
        if since is not None:
            where.append(tasks.c.finished_at >= since)
    else:
        where.append(or_(tasks.c.finished_at >= since, tasks.c.finished_at.is_(None)))
    return select(tasks.c.status, func.count()).where(*where).group_by(tasks.c.status)


def steps_waiting_retry(conn: Connection) -> int:
    # The literal predicate of the partial index is repeated so that SQLite, which only matches
    # predicates textually, uses it as PostgreSQL does.
    return int(
        conn.execute(
            select(func.count())
            .select_from(steps)
            .where(text(ACTIVE), steps.c.state == StepState.WAITING_RETRY.value)
        ).scalar_one()
    )


_FINISHED = (TaskState.COMPLETE.value, TaskState.ERROR.value)


def finished_since(conn: Connection, *, hour: datetime, day: datetime) -> Finished:
    """Tasks now complete or in error that finished since `day`, and of those since `hour`."""
    in_hour = func.sum(case((tasks.c.finished_at >= hour, 1), else_=0))
    rows = {
        str(r[0]): (int(r[1] or 0), int(r[2] or 0))
        for r in conn.execute(
            select(tasks.c.status, in_hour, func.count())
            .where(tasks.c.status.in_(_FINISHED), tasks.c.finished_at >= day)
            .group_by(tasks.c.status)
        )
    }
    complete = rows.get(TaskState.COMPLETE.value, (0, 0))
    error = rows.get(TaskState.ERROR.value, (0, 0))
    return Finished(
        completed_hour=complete[0],
        completed_day=complete[1],
        failed_hour=error[0],
        failed_day=error[1],
    )


def _minute(conn: Connection) -> Any:
    """Minutes since the epoch of a transition (UTC), as an integer, in either dialect."""
    at = step_transitions.c.at
    if conn.dialect.name == "sqlite":
        return cast(func.strftime("%s", at), Integer) // 60
    return cast(func.floor(func.extract("epoch", at) / 60), Integer)


def attempts_per_minute(conn: Connection, since: datetime) -> dict[int, tuple[int, int]]:
    """Completed and failed attempts by minute since `since`, keyed by minutes since the epoch."""
    st = step_transitions
    minute = _minute(conn).label("minute")
    failed = func.sum(case((st.c.to_state == StepState.COMPLETE.value, 0), else_=1))
    rows = conn.execute(
        select(minute, func.count() - failed, failed)
        .where(
            text(OUTCOMES),  # the partial index's predicate, as written (SQLite matches text)
            st.c.to_state.in_((StepState.COMPLETE.value, *FAILED_STATES)),
            st.c.at >= since,
            st.c.from_state == StepState.IN_PROGRESS.value,
        )
        .group_by(minute)
    )
    return {int(m): (int(done), int(bad)) for m, done, bad in rows}


def latest_failures(conn: Connection, limit: int) -> list[Failure]:
    """The last `limit` failed attempts with an error, newest first, with their task and step names.

    One backward range of `(to_state, at)` per failed state, merged, then joined by primary key: the
    joins touch `limit` rows, not the history.
    """
    st = step_transitions
    branches = [
        select(st.c.id, st.c.task_id, st.c.step_id, st.c.at, st.c.error_class, st.c.error_message)
        .where(text(OUTCOMES), st.c.to_state == state, st.c.error_class.is_not(None))
        .order_by(st.c.at.desc(), st.c.id.desc())
        .limit(limit)
        .subquery()
        for state in FAILED_STATES
    ]
    merged = union_all(*(select(b) for b in branches)).subquery()
    last = select(merged).order_by(merged.c.at.desc(), merged.c.id.desc()).limit(limit).subquery()
    rows = conn.execute(
        select(
            last.c.task_id,
            tasks.c.namespace,
            tasks.c.name,
            tasks.c.version,
            steps.c.name.label("step"),
            last.c.error_class,
            last.c.error_message,
            last.c.at,
        )
        .join(tasks, tasks.c.id == last.c.task_id)
        .join(steps, steps.c.id == last.c.step_id)
        .order_by(last.c.at.desc(), last.c.id.desc())
    )
    return [
        Failure(
            task_id=int(r.task_id),
            namespace=r.namespace,
            name=r.name,
            version=r.version,
            step=r.step,
            error_class=r.error_class,
            message=r.error_message,
            at=r.at,
        )
        for r in rows
    ]


class FinalCounts:
    """Counts of tasks in final states, split at a moment in the past: a view reads the recent only.

    A grouped count of every task is an index-only scan of the whole table (~130 ms at 1,000,000 on
    PostgreSQL, measured in docs/benchmarks.md). Complete, cancelled and resolved tasks never change
    state again, so those that finished before `cutoff` are counted once and kept; each view adds
    the ones finished since (a short range of `(status, finished_at)`). The cutoff trails the clock
    by `SETTLED_MARGIN`, so a transaction that commits late with an earlier timestamp is still seen,
    and is moved forward every `SETTLED_REFRESH` by counting the range it moves over. Every
    `SETTLED_RECOUNT` the settled part is counted whole again, which corrects it for tasks deleted
    since (by hand or by retention). One per engine: nothing is shared between stores.
    """

    def __init__(self) -> None:
        self.cutoff: datetime | None = None
        self.counted_at: datetime | None = None
        self.settled: dict[str, int] = {}

    def counts(self, conn: Connection, now: datetime) -> dict[str, int]:
        final = sorted(s.value for s in TERMINAL_TASK_STATES)
        cutoff = now - SETTLED_MARGIN
        if (
            self.cutoff is None
            or self.counted_at is None
            or self.cutoff > cutoff
            or not now - SETTLED_RECOUNT < self.counted_at <= now
        ):
            self.cutoff, self.counted_at = cutoff, now
            self.settled = final_by_status(conn, final, before=cutoff)
        elif self.cutoff <= cutoff - SETTLED_REFRESH:
            moved = final_by_status(conn, final, since=self.cutoff, before=cutoff)
            for status, n in moved.items():
                self.settled[status] = self.settled.get(status, 0) + n
            self.cutoff = cutoff
        recent = final_by_status(conn, final, since=self.cutoff)
        unfinished = [s.value for s in TaskState if s not in TERMINAL_TASK_STATES]
        out = unfinished_by_status(conn, unfinished)
        for status in final:
            out[status] = self.settled.get(status, 0) + recent.get(status, 0)
        return out


def overview(
    db: Database, final: FinalCounts | None = None, now: datetime | None = None
) -> Overview:
    """What an operator looks at first; each figure is one indexed query, all in one read.

    Without `final` (the engine keeps one), tasks are counted by status over the whole table.
    """
    now = now or datetime.now(UTC)
    current = now.replace(second=0, microsecond=0)
    first_minute = current - timedelta(minutes=CHART_MINUTES - 1)
    with db.read() as conn:
        by_status = final.counts(conn, now) if final else tasks_by_status(conn)
        waiting = steps_waiting_retry(conn)
        finished = finished_since(conn, hour=now - timedelta(hours=1), day=now - timedelta(days=1))
        minutes = attempts_per_minute(conn, first_minute)
        failures = latest_failures(conn, LATEST_FAILURES)
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
