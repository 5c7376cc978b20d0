"""Deleting finished tasks with everything that names them: `tasker tasks purge`, the housekeeping
job's retention (`tasker.engine.housekeeping_job`), and bulk purges by filter (`delete_tasks`).

A task's rows live in seven tables: the task, its steps (their foreign key cascades), their edges,
both transition tables, its custom events and its signals. A purge picks finished tasks, oldest
first, a batch at a time, and deletes each batch's rows in one transaction, so that it never holds
locks on more than a batch (claims and completions go on beside it). Only finished tasks are
picked: a task still running, or compensating, is never touched.

On PostgreSQL the batch's task rows are picked `FOR UPDATE SKIP LOCKED`: a task an operator is
retrying at that moment (its row locked by the retry) is skipped rather than waited for, so a
purge neither deadlocks with the retry nor deletes a task the retry is reopening; a row it does
lock is checked finished after the lock (PostgreSQL re-reads the row it locks), and nothing can
reopen it until the deletes commit. On SQLite a write transaction excludes every other, so the
pick sees the latest state and keeps it to the end.

With an archive (`tasker.store.archive`), the batch is written there first, in the same
transaction; an archive that fails rolls it back and nothing is deleted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import and_, delete, func, not_, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from tasker.domain.retention import Cutoff, RetentionPolicy, StoredTemplate, TemplateName
from tasker.domain.states import FINISHED_TASK_STATES
from tasker.domain.templates import semver_key
from tasker.store import archive as archive_store
from tasker.store.archive import Archive
from tasker.store.schema import (
    custom_events,
    signals,
    step_edges,
    step_transitions,
    task_transitions,
    tasks,
    templates,
)

_FINISHED = sorted(s.value for s in FINISHED_TASK_STATES)
#: The log tables that name a task by `task_id` (the steps go with the task's foreign key).
_BY_TASK = (step_edges, step_transitions, task_transitions, custom_events, signals)
#: The most tasks one batch deletes (`delete_tasks` takes at most this many ids).
MAX_BATCH = 10_000


@dataclass(frozen=True)
class Purged:
    """What one batch deleted: the tasks' ids, how many per (namespace, status), how many were
    archived first."""

    ids: tuple[int, ...] = ()
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    archived: int = 0

    @property
    def deleted(self) -> int:
        return len(self.ids)


def purge_conditions(
    before: datetime, statuses: Sequence[str] | None, namespace: str | None
) -> list[ColumnElement[bool]]:
    """The tasks a purge by hand deletes: of these finished `statuses` (all when None), finished
    before `before`, of this `namespace` (any when None)."""
    wanted = [s for s in (statuses or _FINISHED) if s in _FINISHED]
    conditions: list[ColumnElement[bool]] = [
        tasks.c.status.in_(wanted),
        tasks.c.finished_at < before,
    ]
    if namespace is not None:
        conditions.append(tasks.c.namespace == namespace)
    return conditions


def _of_templates(names: Sequence[TemplateName]) -> ColumnElement[bool]:
    return or_(*(and_(tasks.c.namespace == ns, tasks.c.name == name) for ns, name in names))


def cutoff_conditions(cutoff: Cutoff, before: datetime) -> list[ColumnElement[bool]]:
    """The tasks a retention cut-off deletes (`tasker.domain.retention.Cutoff`): of its status,
    finished before `before`, of its templates (or of all but those it excludes)."""
    conditions = purge_conditions(before, [cutoff.status.value], None)
    if cutoff.templates is not None:
        conditions.append(_of_templates(cutoff.templates))
    elif cutoff.exclude:
        conditions.append(not_(_of_templates(cutoff.exclude)))
    return conditions


def count(
    conn: Connection, before: datetime, statuses: Sequence[str] | None, namespace: str | None
) -> int:
    """How many finished tasks a purge would delete."""
    where = purge_conditions(before, statuses, namespace)
    q = select(func.count()).select_from(tasks).where(*where)
    return int(conn.execute(q).scalar_one())


def purge_batch(
    conn: Connection,
    before: datetime,
    statuses: Sequence[str] | None,
    namespace: str | None,
    limit: int,
    *,
    archive: Archive | None = None,
    now: datetime | None = None,
) -> int:
    """Delete up to `limit` of the oldest matching tasks with their rows; returns how many."""
    where = purge_conditions(before, statuses, namespace)
    return purge_where(conn, where, limit, archive, now).deleted


def purge_where(
    conn: Connection,
    conditions: Sequence[ColumnElement[bool]],
    limit: int,
    archive: Archive | None = None,
    now: datetime | None = None,
) -> Purged:
    """Delete up to `limit` of the oldest finished tasks that meet `conditions`, archiving them
    first when `archive` is given; what it deleted."""
    q = (
        select(tasks.c.id, tasks.c.namespace, tasks.c.status)
        .where(tasks.c.status.in_(_FINISHED), *conditions)
        .order_by(tasks.c.finished_at, tasks.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    rows = conn.execute(q).all()
    if not rows:
        return Purged()
    ids = [int(r.id) for r in rows]
    archived = 0
    if archive is not None:
        docs = archive_store.documents(conn, ids, now or datetime.now(UTC))
        archive.write(conn, docs)
        archived = len(docs)
    for table in _BY_TASK:
        conn.execute(delete(table).where(table.c.task_id.in_(ids)))
    conn.execute(delete(tasks).where(tasks.c.id.in_(ids)))
    counts = Counter((str(r.namespace), str(r.status)) for r in rows)
    return Purged(tuple(ids), dict(counts), archived)


def delete_tasks(
    conn: Connection,
    ids: Sequence[int],
    *,
    archive: Archive | None = None,
    now: datetime | None = None,
) -> int:
    """Delete these tasks with every row that names them, archiving them first when `archive` is
    given (`tasker.store.archive.open_archive`); returns how many were deleted.

    Only tasks that are finished when the transaction gets to them are deleted: an unfinished
    one, an unknown id, or (on PostgreSQL) one whose row another transaction holds (an operator's
    retry) is left alone and not counted. At most `MAX_BATCH` ids: a caller with more runs one
    transaction per batch, so that no purge holds locks for long.
    """
    return delete_finished(conn, ids, archive=archive, now=now).deleted


def delete_finished(
    conn: Connection,
    ids: Sequence[int],
    *,
    archive: Archive | None = None,
    now: datetime | None = None,
) -> Purged:
    """`delete_tasks`, with the counts per namespace and status (for metrics and events)."""
    if len(ids) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} tasks per batch; got {len(ids)}")
    if not ids:
        return Purged()
    return purge_where(conn, [tasks.c.id.in_(list(ids))], len(ids), archive, now)


# -- what templates declare ----------------------------------------------------------------------
def template_ids(conn: Connection) -> set[int]:
    """The ids of every stored template snapshot (a snapshot never changes: its retention is read
    once per id)."""
    return {int(i) for i in conn.execute(select(templates.c.id)).scalars()}


def template_retention(conn: Connection, ids: Sequence[int]) -> list[StoredTemplate]:
    """These snapshots with the retention each declares (read from the definition's
    `retention` key alone)."""
    if not ids:
        return []
    rows = conn.execute(
        select(
            templates.c.id,
            templates.c.namespace,
            templates.c.name,
            templates.c.version,
            templates.c.definition["retention"].label("retention"),
        ).where(templates.c.id.in_(list(ids)))
    )
    out = []
    for r in rows:
        try:
            version_key: tuple[object, ...] = semver_key(r.version)
        except ValueError:  # stored before versions were checked: older than any semver
            version_key = ()
        try:
            policy = RetentionPolicy.from_stored(r.retention)
        except ValueError:  # a snapshot the loader would refuse today: it declares nothing
            policy = RetentionPolicy()
        out.append(StoredTemplate(int(r.id), r.namespace, r.name, version_key, policy))
    return out
