"""Bulk operations' queries: the tasks a `TaskFilter` picks, a chunk at a time in id order, and the
per-task operations applied to each chunk in one transaction (`tasker.engine.bulk` drives them).

A chunk is found by a read (`next_chunk`: `id > after ORDER BY id LIMIT n`, keyset over the primary
key, so a run is resumable from any id and never visits a task twice), then its write transaction
reads it again under lock (PostgreSQL: `FOR NO KEY UPDATE`, in id order, as the per-task operations
lock) with the same conditions: a task that stopped matching in between (retried by someone else,
say) is skipped, not acted on. Each remaining task goes through the very store code of the
per-task operation (`operations.retry_task`, `operations.cancel_task`), so transitions, reasons and
events are exactly theirs; a task the operation refuses is rolled back to a savepoint and reported,
and the rest of the chunk goes on. A purge deletes the chunk through retention's own deletion
(`purge.delete_finished`), which owns the list of the rows that name a task.

Every condition is on the tasks table's indexed columns, but for the step conditions, an `EXISTS`
over the task's own steps (their `(task_id, name)` unique index), so a chunk costs one index range
per status and a few probes per task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import exists, func, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from tasker.domain.bulk import BulkAction, TaskFilter
from tasker.domain.errors import TaskerInputError
from tasker.store import operations, purge
from tasker.store.archive import Archive
from tasker.store.journal import Journal
from tasker.store.schema import steps, tasks

#: How many refusal messages a chunk keeps (a report shows a few, not ten thousand).
KEPT_REFUSALS = 20


@dataclass
class ChunkResult:
    """What one chunk's transaction did: how many tasks it changed and skipped, why the operation
    refused some (the first few messages), and, for a purge, what it deleted (for the hooks that
    count deleted tasks)."""

    changed: int = 0
    skipped: int = 0
    refusals: list[str] = field(default_factory=list)
    purged: purge.Purged | None = None
    archived: int = 0


def conditions(f: TaskFilter, action: BulkAction) -> list[ColumnElement[bool]]:
    """The WHERE clause of `f` for `action` (its statuses narrowed to those the action applies
    to; see `TaskFilter.matches` for the same in Python)."""
    wanted = [s.value for s in f.statuses_for(action)]
    out: list[ColumnElement[bool]] = [tasks.c.status.in_(wanted)]
    if f.namespace is not None:
        out.append(tasks.c.namespace == f.namespace)
    if f.name is not None:
        out.append(tasks.c.name == f.name)
    if f.version is not None:
        out.append(tasks.c.version == f.version)
    if f.created_since is not None:
        out.append(tasks.c.created_at >= f.created_since)
    if f.created_until is not None:
        out.append(tasks.c.created_at < f.created_until)
    if f.key is not None:
        out.append(or_(tasks.c.idempotency_key == f.key, tasks.c.correlation_id == f.key))
    if f.ids:
        out.append(tasks.c.id.in_(f.ids))
    if f.has_step_condition:
        step_where: list[ColumnElement[bool]] = [
            steps.c.task_id == tasks.c.id,
            steps.c.state.in_([s.value for s in f.wanted_step_states]),
        ]
        if f.step is not None:
            step_where.append(steps.c.name == f.step)
        if f.error_class is not None:
            step_where.append(steps.c.last_error["class"].as_string() == f.error_class)
        out.append(exists(select(steps.c.id).where(*step_where)))
    return out


def count(conn: Connection, f: TaskFilter, action: BulkAction, after: int = 0) -> int:
    """How many tasks `action` would pick now (a dry run), from id `after` on."""
    q = select(func.count()).select_from(tasks).where(tasks.c.id > after, *conditions(f, action))
    return int(conn.execute(q).scalar_one())


def next_chunk(
    conn: Connection, f: TaskFilter, action: BulkAction, after: int, limit: int
) -> list[int]:
    """The ids of the next `limit` tasks picked after id `after`, in id order."""
    q = (
        select(tasks.c.id)
        .where(tasks.c.id > after, *conditions(f, action))
        .order_by(tasks.c.id)
        .limit(limit)
    )
    return [int(i) for i in conn.execute(q).scalars()]


def _still_matching(
    conn: Connection, ids: Sequence[int], f: TaskFilter, action: BulkAction, lock: bool
) -> list[int]:
    """Of `ids`, those the filter still picks, locked in id order (PostgreSQL) as a per-task
    operation locks its task, so two bulk runs or a run and an operator queue instead of
    deadlocking."""
    q = (
        select(tasks.c.id)
        .where(tasks.c.id.in_(list(ids)), *conditions(f, action))
        .order_by(tasks.c.id)
    )
    if lock:
        q = q.with_for_update(key_share=True, of=tasks)
    return [int(i) for i in conn.execute(q).scalars()]


def retry_chunk(
    conn: Connection,
    journal: Journal,
    ids: Sequence[int],
    f: TaskFilter,
    *,
    lock: bool,
    reason: str,
    careful: bool = False,
) -> ChunkResult:
    """Retry each task of the chunk the filter still picks, as `retry_task` does, each transition
    it records carrying `reason` (a retry by hand records none: the operator is the reason). See
    `_each` for `careful`."""

    def retry(task_id: int) -> None:
        operations.retry_task(conn, journal, task_id, lock=lock)

    return _each(conn, journal, ids, f, BulkAction.RETRY, lock, retry, reason, careful)


def cancel_chunk(
    conn: Connection,
    journal: Journal,
    ids: Sequence[int],
    f: TaskFilter,
    *,
    lock: bool,
    reason: str,
    compensate: bool,
    careful: bool = False,
) -> ChunkResult:
    """Cancel each task of the chunk the filter still picks, as `cancel_task` does (with
    `compensate`: then undo what its completed steps did, where its template declares how). See
    `_each` for `careful`."""

    def cancel(task_id: int) -> None:
        operations.cancel_task(
            conn, journal, task_id, lock=lock, reason=reason, compensate=compensate
        )

    return _each(conn, journal, ids, f, BulkAction.CANCEL, lock, cancel, reason, careful)


def purge_chunk(
    conn: Connection,
    ids: Sequence[int],
    f: TaskFilter,
    *,
    lock: bool,
    archive: Archive | None = None,
    now: datetime | None = None,
) -> ChunkResult:
    """Delete the finished tasks of the chunk the filter still picks, with every row that names
    them, writing each to `archive` first (in this transaction: an archive that fails deletes
    nothing)."""
    still = _still_matching(conn, ids, f, BulkAction.PURGE, lock)
    # Retention's own deletion (`purge.delete_finished`: it owns the list of rows that name a
    # task and the archive's format, and deletes only tasks still finished once locked).
    done = purge.delete_finished(conn, still, archive=archive, now=now)
    return ChunkResult(
        changed=done.deleted, skipped=len(ids) - done.deleted, purged=done, archived=done.archived
    )


@dataclass
class _Mark:
    """How far a journal had got before one task's operation, to forget what a refused one
    recorded."""

    steps: int
    tasks: int
    events: int
    custom: int
    children: int
    readied: set[int]

    @classmethod
    def of(cls, j: Journal) -> _Mark:
        return cls(
            len(j.step_rows),
            len(j.task_rows),
            len(j.events),
            len(j.custom_rows),
            len(j.children),
            set(j.readied),
        )

    def rewind(self, j: Journal) -> None:
        del j.step_rows[self.steps :]
        del j.task_rows[self.tasks :]
        del j.events[self.events :]
        del j.custom_rows[self.custom :]
        del j.children[self.children :]
        j.readied = self.readied


class ChunkRefused(Exception):
    """A task of a chunk run without savepoints was refused: the chunk's transaction is rolled
    back, to be run again `careful`."""


def _each(
    conn: Connection,
    journal: Journal,
    ids: Sequence[int],
    f: TaskFilter,
    action: BulkAction,
    lock: bool,
    operation: Callable[[int], None],
    reason: str,
    careful: bool,
) -> ChunkResult:
    """Apply `operation` to each task of the chunk the filter still picks.

    A refusal is rare (the filter already picked tasks in a state the operation takes), and a
    savepoint per task costs two more round trips each, so a chunk first runs without any: a
    refusal raises `ChunkRefused` and the caller runs the chunk again `careful`, each task in a
    savepoint of its own, so that a refused task's writes and journal are undone and the others
    go on.
    """
    still = _still_matching(conn, ids, f, action, lock)
    result = ChunkResult(skipped=len(ids) - len(still))
    for task_id in still:
        if not careful:
            steps_at, tasks_at = len(journal.step_rows), len(journal.task_rows)
            try:
                operation(task_id)
            except TaskerInputError as exc:
                raise ChunkRefused(task_id) from exc
            _stamp(journal, steps_at, tasks_at, reason)
            result.changed += 1
            continue
        mark = _Mark.of(journal)
        savepoint = conn.begin_nested()
        try:
            operation(task_id)
        except TaskerInputError as exc:  # refused (an OperationError): this task only
            savepoint.rollback()
            mark.rewind(journal)
            result.skipped += 1
            if len(result.refusals) < KEPT_REFUSALS:
                result.refusals.append(f"task {task_id}: {exc}")
            continue
        savepoint.commit()
        _stamp(journal, mark.steps, mark.tasks, reason)
        result.changed += 1
    return result


def _stamp(journal: Journal, steps_at: int, tasks_at: int, reason: str) -> None:
    """Give the transitions recorded since these positions that carry no reason this one."""
    for row in (*journal.step_rows[steps_at:], *journal.task_rows[tasks_at:]):
        if row.get("reason") is None:
            row["reason"] = reason
