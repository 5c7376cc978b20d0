"""Keyset pages of tasks: newest first by id, read from a cursor along an index, no OFFSET or COUNT.

Every filter the dashboard offers has an index that yields its tasks already in id order, so a page
reads about `limit` index entries whatever the table holds (migration 0004):
`(namespace, id)`, `(namespace, name, id)`, `(namespace, name, version, id)`, `(status, id)`,
`(created_at, id)`, and single-column indexes on the idempotency key and the correlation id.

A creation-time range is the exception: ids walked from the cursor may have to step over most of
the table to reach a range far in the past, so such a page reads the range itself when that is
cheaper (`_range_first`).

Several statuses at once cannot be read in id order from `(status, id)` as one range, so each status
is its own branch (one index range, `limit` rows at most) and the branches are merged: a handful of
short index scans instead of a scan and sort of every task in those states.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, func, or_, select, union_all

from tasker.domain.listing import TaskQuery
from tasker.domain.records import Task
from tasker.store.database import Database
from tasker.store.schema import tasks
from tasker.store.tasks import _task


def conditions(query: TaskQuery) -> list[ColumnElement[bool]]:
    """The filters of a listing, statuses excepted (they become branches)."""
    out: list[ColumnElement[bool]] = []
    if query.namespace:
        out.append(tasks.c.namespace == query.namespace)
    if query.name:
        out.append(tasks.c.name == query.name)
    if query.version:
        out.append(tasks.c.version == query.version)
    if query.created_from:
        out.append(tasks.c.created_at >= query.created_from)
    if query.created_to:
        out.append(tasks.c.created_at < query.created_to)
    if query.key:
        out.append(or_(tasks.c.idempotency_key == query.key, tasks.c.correlation_id == query.key))
    if query.min_priority is not None:
        out.append(tasks.c.priority >= query.min_priority)
    return out


def page(
    conn: Connection,
    query: TaskQuery,
    *,
    limit: int,
    after: int | None = None,
    before: int | None = None,
    offset: int = 0,
) -> list[Task]:
    """Up to `limit` tasks older than `after` (newest first) or newer than `before` (oldest first).

    Listings carry no steps (`Task.steps == []`): a page of 50 tasks is one query. `offset` exists
    for the API's older clients only: it skips rows one by one, so deep offsets are slow.
    """
    range_first = not offset and not query.by_priority and _range_first(conn, query, after, before)
    stmt = page_statement(
        query, limit=limit, after=after, before=before, offset=offset, range_first=range_first
    )
    return [_task(r, []) for r in conn.execute(stmt)]


def page_statement(
    query: TaskQuery,
    *,
    limit: int,
    after: int | None = None,
    before: int | None = None,
    offset: int = 0,
    range_first: bool = False,
) -> Select[Any]:
    """The statement of `page`; `range_first` reads the creation-time range whole (`_range_first`
    says when that is cheaper)."""
    conds = conditions(query)
    if after is not None:
        conds.append(tasks.c.id < after)
    if before is not None:
        conds.append(tasks.c.id > before)
    upwards = before is not None
    statuses = list(query.statuses)
    stmt: Select[Any]
    if query.by_priority:
        stmt = _by_priority(conds, statuses, query.min_priority, limit, offset)
    elif range_first:
        if statuses:
            conds.append(tasks.c.status.in_(statuses))
        # MATERIALIZED keeps the planner from turning this back into a walk of the primary key.
        in_range = select(tasks.c.id).where(*conds).cte("in_range").prefix_with("MATERIALIZED")
        chosen = select(in_range.c.id).order_by(_order(in_range.c.id, upwards)).limit(limit)
        stmt = select(tasks).where(tasks.c.id.in_(chosen)).order_by(_order(tasks.c.id, upwards))
    elif len(statuses) <= 1 or offset:
        if statuses:
            conds.append(
                tasks.c.status.in_(statuses) if len(statuses) > 1 else tasks.c.status == statuses[0]
            )
        stmt = select(tasks).where(*conds).order_by(_order(tasks.c.id, upwards)).limit(limit)
        if offset:
            stmt = stmt.offset(offset)
    else:
        branches = [
            select(tasks)
            .where(*conds, tasks.c.status == s)
            .order_by(_order(tasks.c.id, upwards))
            .limit(limit)
            .subquery()
            for s in statuses
        ]
        merged = union_all(*(select(b) for b in branches)).subquery()
        stmt = select(merged).order_by(_order(merged.c.id, upwards)).limit(limit)
    return stmt


def _by_priority(
    conds: list[ColumnElement[bool]],
    statuses: list[str],
    min_priority: int | None,
    limit: int,
    offset: int,
) -> Select[Any]:
    """Highest priority first, then newest, from an offset: the tasks with a priority from the
    partial `(priority, id)` index, those of priority 0 from the primary key, merged; each branch
    reads at most `offset + limit` rows."""
    if statuses:
        conds = [*conds, tasks.c.status.in_(statuses)]
    want = offset + limit
    branches = [
        select(tasks)
        .where(*conds, tasks.c.priority > 0)
        .order_by(tasks.c.priority.desc(), tasks.c.id.desc())
        .limit(want)
        .subquery()
    ]
    if not min_priority:
        branches.append(
            select(tasks)
            .where(*conds, tasks.c.priority == 0)
            .order_by(tasks.c.id.desc())
            .limit(want)
            .subquery()
        )
    merged = union_all(*(select(b) for b in branches)).subquery()
    return (
        select(merged)
        .order_by(merged.c.priority.desc(), merged.c.id.desc())
        .limit(limit)
        .offset(offset)
    )


def _range_first(conn: Connection, query: TaskQuery, after: int | None, before: int | None) -> bool:
    """Whether to read the creation-time range whole rather than walk ids from the cursor.

    Walking ids (newest first) must step over every task newer than the range before the first
    match: cheap for "today", a scan of most of the table for "a day last month". Reading the range
    from `(created_at, id)` and sorting it costs the size of the range instead. Ids grow with
    creation time, so the id of the first task created at a bound tells both costs in two index
    probes; the answer is exact either way, only its cost differs.
    """
    if query.created_from is None and query.created_to is None:
        return False
    top = conn.execute(select(func.max(tasks.c.id))).scalar()
    if top is None:
        return False
    start = _position(conn, query.created_from, top) if query.created_from else 0
    end = _position(conn, query.created_to, top) if query.created_to else top + 1
    newest = after if after is not None else top + 1
    skipped = start - before if before is not None else newest - end
    return end - start < skipped


def _position(conn: Connection, at: datetime, top: int) -> int:
    """The id of the first task created at or after `at` (past the newest when there is none)."""
    found = conn.execute(
        select(tasks.c.id)
        .where(tasks.c.created_at >= at)
        .order_by(tasks.c.created_at, tasks.c.id)
        .limit(1)
    ).scalar()
    return int(found) if found is not None else top + 1


def _order(column: Any, upwards: bool) -> Any:
    return column.asc() if upwards else column.desc()


def count(conn: Connection, query: TaskQuery, cap: int | None = None) -> int:
    """How many tasks match, counting at most `cap + 1` of them (all when `cap` is None).

    With a cap the count is an index read of at most `cap + 1` entries whatever the table holds;
    a result above `cap` means "more than `cap`".
    """
    return int(conn.execute(count_statement(query, cap)).scalar_one())


def count_statement(query: TaskQuery, cap: int | None = None) -> Select[Any]:
    """The statement of `count`."""
    conds = conditions(query)
    if query.statuses:
        conds.append(tasks.c.status.in_(list(query.statuses)))
    if cap is None:
        return select(func.count()).select_from(tasks).where(*conds)
    matches = select(tasks.c.id).where(*conds).limit(cap + 1)
    if _one_index_in_id_order(query):
        # The newest matches, from the index the page itself reads (the primary key, `(status,
        # id)` or `(namespace, ..., id)`), whose first pages the page has just brought into
        # memory. Left unordered, the planner counts from the smallest index instead (`(status,
        # finished_at)` on a big table), which at 10 M tasks costs a third more
        # (docs/benchmarks.md). Other filters stay unordered: ordering them by id could walk the
        # primary key past millions of rows that do not match.
        matches = matches.order_by(tasks.c.id.desc())
    return select(func.count()).select_from(matches.subquery())


def _one_index_in_id_order(query: TaskQuery) -> bool:
    """Whether one index holds exactly the query's matches in id order: no filter, one status
    alone, or a namespace (with its name, and version) alone."""
    if query.created_from or query.created_to or query.key or query.min_priority is not None:
        return False
    if query.statuses:
        return len(query.statuses) == 1 and not (query.namespace or query.name or query.version)
    # The fields given must be a prefix of the `(namespace, name, version, id)` index's columns.
    given = [bool(query.namespace), bool(query.name), bool(query.version)]
    return given == sorted(given, reverse=True)


def read_page(
    db: Database,
    query: TaskQuery,
    *,
    limit: int,
    after: int | None = None,
    before: int | None = None,
    offset: int = 0,
) -> list[Task]:
    """`page` in a read transaction of its own."""
    with db.read() as conn:
        return page(conn, query, limit=limit, after=after, before=before, offset=offset)


def count_matching(db: Database, query: TaskQuery, cap: int | None = None) -> int:
    """`count` in a read transaction of its own."""
    with db.read() as conn:
        return count(conn, query, cap)
