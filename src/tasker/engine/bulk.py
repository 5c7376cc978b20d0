"""Bulk operations: `engine.bulk.retry(filter)`, `.cancel(filter)`, `.purge(filter)`.

An operator after an outage wants every task that failed on the payment gateway since 2 p.m.
retried, not 4,000 clicks. A run picks the tasks a `TaskFilter` matches and acts on them in chunks,
each chunk one transaction through the per-task operation's own store code (so a bulk retry records
the same transitions and emits the same events as `retry_task`, with the run's reason). Chunks are
keyset pages over the task id: a run never visits a task twice, can stop after `limit` tasks and go
on from `after=report.last_id`, and running it again changes nothing (a retried task no longer
matches: it is pending, or failed again after this run passed it). Tasks that stop matching
between the read that found them and their chunk's transaction are skipped and counted, as are
those the operation refuses (`BulkReport.refusals` says why).

A dry run counts what a run would pick now and changes nothing. An empty filter is refused: acting
on every task of a store is never what a typo meant (`status: error` picks every failed task).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from tasker.domain.bulk import BulkAction, BulkReport, FilterError, TaskFilter, parse_filter
from tasker.domain.errors import TaskerInputError
from tasker.domain.retention import parse_archive
from tasker.engine import clock
from tasker.engine.retention import Retention, announce
from tasker.engine.running import RunningWorkers
from tasker.events.bus import EventBus
from tasker.store import archive as archive_store
from tasker.store import bulk as bulk_store
from tasker.store.bulk import ChunkResult
from tasker.store.database import Database
from tasker.store.journal import Journal
from tasker.store.transactions import Events, journaled

log = logging.getLogger("tasker.bulk")
#: Tasks per chunk (one transaction each) unless a caller says otherwise, and the bounds.
DEFAULT_CHUNK = 500
MAX_CHUNK = 10_000
#: The longest reason recorded with a run's transitions.
MAX_REASON = 1000
#: One chunk's work in its transaction: (connection, journal, ids, careful) -> what it did.
Chunk = Callable[[Any, Journal, list[int], bool], ChunkResult]
_FIELDS = (
    "namespace, template, version, status, since, until, error_class, step, step_state, key, ids"
)


class Bulk:
    """Retry, cancel and purge the tasks a filter picks, in chunks (see the module's docstring)."""

    def __init__(self, db: Database, bus: EventBus, running: RunningWorkers, retention: Retention):
        self.db = db
        self.bus = bus
        self._running = running
        self._retention = retention

    def filter(
        self,
        *,
        template: str | None = None,
        namespace: str | None = None,
        version: str | None = None,
        status: str | list[str] | tuple[str, ...] = (),
        since: str | datetime | timedelta | None = None,
        until: str | datetime | timedelta | None = None,
        error_class: str | None = None,
        step: str | None = None,
        step_state: str | list[str] | tuple[str, ...] = (),
        key: str | None = None,
        ids: list[int] | tuple[int, ...] = (),
    ) -> TaskFilter:
        """A `TaskFilter` from text as a person writes it: `template="payments/refund@2.1.0"`,
        `since="2h"` (two hours ago) or an ISO time, `status="error"` or a list."""
        return parse_filter(
            now=clock.now(),
            template=template,
            namespace=namespace,
            version=version,
            statuses=(status,) if isinstance(status, str) else status,
            since=since,
            until=until,
            error_class=error_class,
            step=step,
            step_states=(step_state,) if isinstance(step_state, str) else step_state,
            key=key,
            ids=ids,
        )

    def count(self, action: BulkAction | str, task_filter: TaskFilter) -> int:
        """How many tasks `action` would pick now (what a dry run reports)."""
        act = _action(action)
        _check_filter(task_filter, act)
        with self.db.read() as conn:
            return bulk_store.count(conn, task_filter, act)

    def retry(
        self,
        task_filter: TaskFilter,
        *,
        reason: str | None = None,
        dry_run: bool = False,
        chunk: int = DEFAULT_CHUNK,
        after: int = 0,
        limit: int | None = None,
    ) -> BulkReport:
        """Re-arm the failed steps of every task in `error` the filter picks, as `retry_task`
        does; the transitions carry `reason` ("bulk retry: <reason>")."""
        why = _reason(BulkAction.RETRY, reason)
        lock = self.db.is_postgres

        def apply(conn: Any, journal: Journal, ids: list[int], careful: bool) -> ChunkResult:
            return bulk_store.retry_chunk(
                conn, journal, ids, task_filter, lock=lock, reason=why, careful=careful
            )

        report = self._run(BulkAction.RETRY, task_filter, dry_run, chunk, after, limit, apply)
        if report.changed:
            self._running.notify()
        return report

    def cancel(
        self,
        task_filter: TaskFilter,
        *,
        reason: str | None = None,
        compensate: bool = False,
        dry_run: bool = False,
        chunk: int = DEFAULT_CHUNK,
        after: int = 0,
        limit: int | None = None,
    ) -> BulkReport:
        """Cancel every unfinished or failed task the filter picks, as `cancel_task` does; with
        `compensate`, each then undoes what its completed steps did, where its template declares
        compensations (a task with nothing to undo is simply cancelled)."""
        why = _reason(BulkAction.CANCEL, reason)
        lock = self.db.is_postgres

        def apply(conn: Any, journal: Journal, ids: list[int], careful: bool) -> ChunkResult:
            return bulk_store.cancel_chunk(
                conn,
                journal,
                ids,
                task_filter,
                lock=lock,
                reason=why,
                compensate=compensate,
                careful=careful,
            )

        report = self._run(BulkAction.CANCEL, task_filter, dry_run, chunk, after, limit, apply)
        if report.changed and compensate:
            self._running.notify()
        return report

    def purge(
        self,
        task_filter: TaskFilter,
        *,
        archive: str | None = None,
        dry_run: bool = False,
        chunk: int = DEFAULT_CHUNK,
        after: int = 0,
        limit: int | None = None,
    ) -> BulkReport:
        """Delete every finished task the filter picks, with all the rows that name it (steps,
        transitions, events, signals). Running tasks are never touched. `archive` (`table` or a
        directory, as the `archive` setting) writes each task there first, in the transaction
        that deletes it: a chunk that cannot be archived is not deleted, and the run stops with
        `ArchiveError`."""
        try:
            target = parse_archive(archive)
        except ValueError as exc:
            raise FilterError("archive", str(exc)) from None
        lock = self.db.is_postgres
        now = clock.now()
        store = None if dry_run else archive_store.open_archive(target, now)

        def apply(conn: Any, journal: Journal, ids: list[int], careful: bool) -> ChunkResult:
            return bulk_store.purge_chunk(conn, ids, task_filter, lock=lock, archive=store, now=now)

        return self._run(BulkAction.PURGE, task_filter, dry_run, chunk, after, limit, apply, target)

    def run(
        self,
        action: BulkAction | str,
        task_filter: TaskFilter,
        *,
        reason: str | None = None,
        compensate: bool = False,
        archive: str | None = None,
        dry_run: bool = False,
        chunk: int = DEFAULT_CHUNK,
        after: int = 0,
        limit: int | None = None,
    ) -> BulkReport:
        """`retry`, `cancel` or `purge` by name (the API, the CLI and the dashboard pick one);
        `reason`, `compensate` and `archive` go to the actions that take them."""
        act = _action(action)
        common: dict[str, Any] = {
            "dry_run": dry_run,
            "chunk": chunk,
            "after": after,
            "limit": limit,
        }
        if act == BulkAction.RETRY:
            return self.retry(task_filter, reason=reason, **common)
        if act == BulkAction.CANCEL:
            return self.cancel(task_filter, reason=reason, compensate=compensate, **common)
        return self.purge(task_filter, archive=archive, **common)

    # -- the loop ----------------------------------------------------------------------------------
    def _run(
        self,
        action: BulkAction,
        task_filter: TaskFilter,
        dry_run: bool,
        chunk: int,
        after: int,
        limit: int | None,
        apply: Chunk,
        archive_target: str | None = None,
    ) -> BulkReport:
        _check_filter(task_filter, action)
        _check_numbers(chunk, after, limit)
        if dry_run:
            with self.db.read() as conn:
                found = bulk_store.count(conn, task_filter, action, after)
            matched = found if limit is None else min(found, limit)
            return BulkReport(action, matched, 0, 0, True, more=matched < found)
        matched = changed = skipped = archived = 0
        refusals: list[str] = []
        last = after
        more = False
        while True:
            size = chunk if limit is None else min(chunk, limit - matched)
            if size <= 0:
                more = True
                break
            with self.db.read() as conn:
                ids = bulk_store.next_chunk(conn, task_filter, action, last, size)
            if not ids:
                break
            result, events = self._chunk(apply, ids)
            for name, payload in events:
                self.bus.publish(name, payload)
            if result.purged is not None:  # counted and announced where every purge is
                announce(
                    self._retention.hooks, self.bus, result.purged, archive_target, "bulk purge"
                )
            matched += len(ids)
            changed += result.changed
            skipped += result.skipped
            archived += result.archived
            refusals.extend(result.refusals[: bulk_store.KEPT_REFUSALS - len(refusals)])
            last = ids[-1]
            if action == BulkAction.RETRY and result.changed:
                self._running.notify()  # workers start on this chunk while the next is read
            if len(ids) < size:
                break
        if more:
            with self.db.read() as conn:
                more = bool(bulk_store.next_chunk(conn, task_filter, action, last, 1))
        log.info(
            "bulk %s of %s: %d matched, %d changed, %d skipped",
            action.value,
            task_filter.describe(),
            matched,
            changed,
            skipped,
        )
        return BulkReport(
            action,
            matched,
            changed,
            skipped,
            False,
            tuple(refusals),
            last if matched else None,
            more,
            archived,
        )

    def _chunk(self, apply: Chunk, ids: list[int]) -> tuple[ChunkResult, Events]:
        """One chunk in one transaction.

        On PostgreSQL the chunk's tasks are locked in id order, then their steps, as the per-task
        operations lock (`Tasker._operate`); a deadlock with a worker aborts the transaction,
        which changed nothing and runs again (`journaled`). A refused task
        (`bulk_store.ChunkRefused`) rolls it back too, and it runs again with a savepoint per
        task, so the refusal is reported and the others change.
        """
        try:
            return journaled(
                self.db, lambda conn, journal: apply(conn, journal, ids, False), clock=clock.now
            )
        except bulk_store.ChunkRefused:
            return journaled(
                self.db, lambda conn, journal: apply(conn, journal, ids, True), clock=clock.now
            )


def _action(action: BulkAction | str) -> BulkAction:
    try:
        return BulkAction(action)
    except ValueError:
        known = ", ".join(a.value for a in BulkAction)
        raise TaskerInputError(f"unknown bulk action {str(action)[:40]!r}; use {known}") from None


def _check_filter(task_filter: TaskFilter, action: BulkAction) -> None:
    if not isinstance(task_filter, TaskFilter):
        raise TaskerInputError(
            f"a bulk {action.value} takes a TaskFilter (engine.bulk.filter(...) builds one from"
            f" text), not {type(task_filter).__name__}"
        )
    if task_filter.is_empty:
        raise FilterError(
            "filter",
            f"a bulk {action.value} needs at least one of {_FIELDS}; acting on every task is"
            f" refused (status {' or '.join(s.value for s in action.states)} picks every task it"
            " applies to)",
        )
    task_filter.statuses_for(action)


def _check_numbers(chunk: int, after: int, limit: int | None) -> None:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or not 1 <= chunk <= MAX_CHUNK:
        raise FilterError("chunk", f"must be a whole number from 1 to {MAX_CHUNK:,}")
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise FilterError("after", "must be a task id (0 to start at the beginning)")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise FilterError("limit", "must be a positive whole number, or left out for no limit")


def _reason(action: BulkAction, reason: str | None) -> str:
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
        raise FilterError("reason", f"must be text of at most {MAX_REASON} characters")
    text = (reason or "").strip()
    return f"bulk {action.value}" + (f": {text}" if text else "")
