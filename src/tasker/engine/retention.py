"""Deleting finished tasks: by hand (`engine.retention.purge(...)`, `tasker tasks purge`), and what
the retention in force is (`engine.retention.report()`, health, `tasker retention`).

Finished tasks (complete, error, cancelled, resolved by hand, compensated) older than a duration are
deleted with all their rows, oldest first, in batches that each commit by themselves, so a purge of
millions never blocks the workers for long. `dry_run` only counts; `archive` writes each task to
the table or a directory first (`tasker.store.archive`). The automatic deletion by retention is the
housekeeping job's (`tasker.engine.housekeeping_job`); both report what they deleted to the hooks
(`WorkerHooks.on_tasks_purged`: the `tasker_tasks_purged_total` counter) and as a `tasks.purged`
event on the engine's bus (by hand: one event per committed batch).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from tasker.domain.errors import TaskerInputError
from tasker.domain.events import Events
from tasker.domain.hooks import TasksPurged, WorkerHooks
from tasker.domain.reports import PurgePassReport, RetentionReport
from tasker.domain.retention import (
    MAX_RETENTION_SECONDS,
    PurgePass,
    RetentionPolicy,
    StoredTemplate,
    TemplateRetention,
    newest_per_template,
    parse_archive,
)
from tasker.domain.states import FINISHED_TASK_STATES
from tasker.domain.waits import duration_seconds
from tasker.engine import clock
from tasker.events.bus import EventBus
from tasker.store import archive as archive_store
from tasker.store import jobs
from tasker.store import purge as purge_store
from tasker.store.database import Database
from tasker.store.health import Probes

log = logging.getLogger("tasker.retention")

_FINISHED = sorted(s.value for s in FINISHED_TASK_STATES)
#: The housekeeping job's name in `tasker_jobs`.
JOB = "housekeeping"
#: How long `report` waits for the store.
REPORT_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class PurgeReport:
    """What a purge found and deleted (`deleted` is 0 for a dry run), and what it archived where
    (`archive_path`: the file a file archive wrote, None when it wrote none)."""

    matched: int
    deleted: int
    dry_run: bool
    archived: int = 0
    archive: str | None = None
    archive_path: str | None = None


class TemplatePolicies:
    """The retention each template declares, read from the stored snapshots (whichever worker
    loaded which template). A snapshot never changes, so each is read once per process."""

    def __init__(self, db: Database):
        self.db = db
        self._known: dict[int, StoredTemplate] = {}

    def current(self) -> list[TemplateRetention]:
        with self.db.read() as conn:
            ids = purge_store.template_ids(conn)
            new = sorted(ids - self._known.keys())
            for row in purge_store.template_retention(conn, new):
                self._known[row.row_id] = row
        return newest_per_template(self._known[i] for i in ids if i in self._known)


def report_purged(
    hooks: Sequence[WorkerHooks], purged: purge_store.Purged, trigger: str, worker: str | None
) -> None:
    """Tell the hooks about a committed batch; a hook that fails is logged and ignored."""
    if not purged.deleted:
        return
    event = TasksPurged(
        [(ns, status, n) for (ns, status), n in sorted(purged.counts.items())], trigger, worker
    )
    for hook in hooks:
        if type(hook).on_tasks_purged is WorkerHooks.on_tasks_purged:
            continue
        try:
            hook.on_tasks_purged(event)
        except Exception:
            log.exception("hook %r failed on purged tasks; ignored", hook)


def purged_event(
    deleted: dict[str, int],
    archived: int,
    archive: str | None,
    worker: str | None,
    trigger: str,
) -> dict[str, object]:
    """The payload of `tasks.purged`: the tasks deleted per status, and by whom (`trigger`:
    `retention` for the housekeeping job, `purge` or `bulk purge` by hand)."""
    return {
        "deleted": dict(sorted(deleted.items())),
        "total": sum(deleted.values()),
        "archived": archived,
        "archive": archive,
        "worker": worker,
        "trigger": trigger,
    }


def announce(
    hooks: Sequence[WorkerHooks],
    bus: EventBus | None,
    purged: purge_store.Purged,
    archive: str | None,
    trigger: str,
) -> None:
    """A batch deleted by hand committed: tell the hooks (metrics) and the bus."""
    report_purged(hooks, purged, "purge", None)
    if bus is None or not purged.deleted:
        return
    by_status: Counter[str] = Counter()
    for (_, status), n in purged.counts.items():
        by_status[status] += n
    bus.publish(
        Events.TASKS_PURGED, purged_event(dict(by_status), purged.archived, archive, None, trigger)
    )


def as_text(templates: Sequence[TemplateRetention]) -> dict[str, dict[str, str]]:
    """Templates' own retention as `tasker retention` and health show it."""
    return {f"{t.namespace}/{t.name}": t.policy.as_text() for t in templates}


class Retention:
    """The store's finished tasks: their deletion by hand, and the retention in force."""

    def __init__(
        self,
        db: Database,
        hooks: Sequence[WorkerHooks] | None = None,
        bus: EventBus | None = None,
    ):
        self.db = db
        self.bus = bus
        self._hooks = None if hooks is None else list(hooks)
        self.templates = TemplatePolicies(db)
        self._probes = Probes()

    @property
    def hooks(self) -> list[WorkerHooks]:
        """Who hears of deleted tasks: the default hooks (metrics) unless given."""
        if self._hooks is None:
            from tasker.observability.hooks import default_hooks  # as `Tasker.worker` does

            self._hooks = default_hooks()
        return self._hooks

    def purge(
        self,
        older_than: float | str | timedelta,
        *,
        statuses: Sequence[str] | None = None,
        namespace: str | None = None,
        dry_run: bool = False,
        batch: int = 500,
        archive: str | None = None,
    ) -> PurgeReport:
        """Delete the finished tasks that finished more than `older_than` ago (seconds, `30d`,
        `P30D`), of these `statuses` (finished ones only) and this `namespace`, with every row
        that names them; returns how many matched and were deleted.

        `archive`: `table` or a directory writes each task there before it is deleted (the
        format of docs/operations.md); a batch that cannot be archived is not deleted, and the
        purge stops with `ArchiveError`."""
        try:
            seconds = duration_seconds(older_than, MAX_RETENTION_SECONDS)
        except ValueError as exc:
            raise TaskerInputError(f"older_than: {exc}") from None
        wrong = [s for s in statuses or () if s not in _FINISHED]
        if wrong:
            raise TaskerInputError(
                f"only finished tasks are purged; {', '.join(wrong)} is not a finished state"
                f" ({', '.join(_FINISHED)})"
            )
        if not 1 <= batch <= 10_000:
            raise TaskerInputError("batch must be between 1 and 10,000")
        try:
            target = parse_archive(archive)
        except ValueError as exc:
            raise TaskerInputError(f"archive: {exc}") from None
        now = clock.now()
        before = now - timedelta(seconds=seconds)
        with self.db.read() as conn:
            matched = purge_store.count(conn, before, statuses, namespace)
        if dry_run:
            return PurgeReport(matched, 0, True, archive=target)
        store = archive_store.open_archive(target, now)
        where = purge_store.purge_conditions(before, statuses, namespace)
        deleted = archived = 0
        while True:
            with self.db.write() as conn:
                done = purge_store.purge_where(conn, where, batch, store, now)
            announce(self.hooks, self.bus, done, target, "purge")
            deleted += done.deleted
            archived += done.archived
            if done.deleted < batch:
                path = getattr(store, "path", None)
                return PurgeReport(
                    matched,
                    deleted,
                    False,
                    archived=archived,
                    archive=target,
                    archive_path=str(path) if path is not None else None,
                )

    def report(
        self, default: RetentionPolicy | None = None, archive: str | None = None
    ) -> RetentionReport:
        """The retention in force: `default` (this process's setting), the templates' own, and
        the housekeeping job's holder and last pass. Read under a deadline (`TimeoutError`)."""
        return self._probes.run(
            "retention", lambda: self._report(default, archive), REPORT_TIMEOUT_SECONDS
        )

    def _report(self, default: RetentionPolicy | None, archive: str | None) -> RetentionReport:
        own = self.templates.current()
        with self.db.read() as conn:
            job = jobs.state(conn, JOB)
        last = PurgePass.from_json(job.last_pass)
        return RetentionReport(
            default=(default or RetentionPolicy()).as_text(),
            templates=as_text(own),
            archive=archive,
            holder=job.holder,
            lease_until=job.lease_until,
            last_pass=None if last is None else _pass_report(last),
        )


def _pass_report(last: PurgePass) -> PurgePassReport:
    return PurgePassReport(
        started_at=last.started_at,
        worker=last.worker,
        seconds=last.seconds,
        deleted=dict(last.deleted),
        total=last.total,
        archived=last.archived,
        archive=last.archive,
        workers_pruned=last.workers_pruned,
        complete=last.complete,
        error=last.error,
        default=dict(last.default),
    )
