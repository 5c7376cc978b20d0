"""The housekeeping job: finished tasks past their retention are deleted (archived first when so
configured), and the rows of long-gone workers forgotten, by one worker at a time.

Every `interval_seconds` each long-running worker tries to take the `housekeeping` job's lease
(`tasker.store.jobs`, as the timers do); the one that holds it makes a pass:

1. the retention in force: the settings' default and what templates declare
   (`tasker.domain.retention.cutoffs`);
2. per cut-off, the oldest tasks past it, `batch` at a time, each batch its own short transaction
   that renews the lease first (a holder that lost the job deletes nothing more) and picks its rows
   `FOR UPDATE SKIP LOCKED` on PostgreSQL (`tasker.store.purge`), so claims, completions and an
   operator's retry are never held up for more than a batch;
3. worker rows not seen for `worker_rows_seconds`;
4. what it did, in `tasker_jobs.last_pass`, to the hooks (`tasker_tasks_purged_total`) and as a
   `tasks.purged` event on the worker's bus.

A pass stops after `interval_seconds` of work, when the worker stops, or when it loses the job;
the next pass goes on where it stopped (oldest first), so a store that has piled up millions of
tasks is caught up over several passes rather than by one that never ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from tasker.domain.events import Events
from tasker.domain.hooks import WorkerHooks
from tasker.domain.retention import (
    Cutoff,
    HousekeepingConfig,
    PurgePass,
    TemplateRetention,
    cutoffs,
)
from tasker.engine import clock
from tasker.engine.retention import (
    JOB,
    TemplatePolicies,
    as_text,
    purged_event,
    report_purged,
)
from tasker.events.bus import EventBus
from tasker.store import archive as archive_store
from tasker.store import jobs
from tasker.store import purge as purge_store
from tasker.store import workers as worker_rows
from tasker.store.archive import Archive
from tasker.store.database import Database

log = logging.getLogger("tasker.housekeeping")

#: A holder renews its lease at every pass and every batch; a dead holder's job is taken over after
#: this many intervals (at least `MIN_LEASE_SECONDS`).
LEASE_INTERVALS = 3
MIN_LEASE_SECONDS = 10.0


def configured() -> HousekeepingConfig:
    """The housekeeping settings of this process (`TASKER_RETENTION`, `tasker.toml`...); the
    defaults, which delete nothing by default, when they cannot be read."""
    from tasker.settings import Settings  # read once per worker, on its first look

    try:
        return Settings.load().housekeeping()
    except Exception as exc:  # a bad tasker.toml must not stop the worker: only this job defaults
        log.warning(
            "the housekeeping job cannot read the settings (%s); it deletes only what templates"
            " declare",
            exc,
        )
        return HousekeepingConfig()


@dataclass
class _Tally:
    """What a pass deleted so far (committed batches only)."""

    deleted: Counter[str] = field(default_factory=Counter)
    archived: int = 0


class _Stop(Exception):
    """The pass ends early: its time is up, the worker stops, or another worker holds the job."""


class HousekeepingJob:
    """One worker's part in the housekeeping job."""

    def __init__(
        self,
        db: Database,
        worker_id: str,
        bus: EventBus,
        hooks: Sequence[WorkerHooks],
        config: HousekeepingConfig | None = None,
    ):
        self.db = db
        self.worker_id = worker_id
        self.bus = bus
        self.hooks = list(hooks)
        self._config = config
        self.templates = TemplatePolicies(db)
        #: This worker took the job's lease at its last look.
        self.holding = False
        self._stopping = threading.Event()
        self._running = False
        self._next_at: float | None = None

    @property
    def config(self) -> HousekeepingConfig:
        """The given settings, else this process's (read on first use)."""
        if self._config is None:
            self._config = configured()
        return self._config

    @property
    def lease_seconds(self) -> float:
        return max(MIN_LEASE_SECONDS, LEASE_INTERVALS * self.config.interval_seconds)

    # -- when the worker looks -----------------------------------------------------------------
    def due(self, now: float) -> bool:
        """Whether to look now (`now`: the monotonic clock); a look still running is never
        doubled. The first look comes an interval after the worker's first question."""
        if self._running or self._stopping.is_set():
            return False
        if self._next_at is None:
            self._next_at = now + self.config.interval_seconds
        if now < self._next_at:
            return False
        self._next_at = now + self.config.interval_seconds
        self._running = True
        return True

    def look(self) -> PurgePass | None:
        """`run`, for the worker's background thread: never raises (the next look tries again)."""
        try:
            return self.run()
        except Exception as exc:
            log.warning(
                "worker %s: housekeeping failed (%s: %s)", self.worker_id, type(exc).__name__, exc
            )
            return None
        finally:
            self._running = False

    def stop(self) -> None:
        """The worker stops: a pass in progress ends after its current batch."""
        self._stopping.set()

    def release(self) -> None:
        """A stopping worker gives the job up, so that another takes it at once."""
        with self.db.write() as conn:
            jobs.release(conn, JOB, self.worker_id)
        self.holding = False

    # -- a pass ----------------------------------------------------------------------------------
    def run(self) -> PurgePass | None:
        """Take (or renew) the job and, when held, make a pass; None when another worker holds
        it."""
        config = self.config
        now = clock.now()
        with self.db.write() as conn:
            self.holding = jobs.take(conn, JOB, self.worker_id, now, self.lease_seconds)
        if not self.holding:
            return None
        started = time.monotonic()
        tally = _Tally()
        pruned = 0
        complete, error = True, None
        own: list[TemplateRetention] = []
        try:
            pruned = self._prune_workers(now, config)
        except Exception as exc:  # a failed prune does not stop the deletions
            complete, error = False, f"pruning worker rows: {type(exc).__name__}: {exc}"
        try:
            own = self.templates.current()
            store = archive_store.open_archive(config.archive, now)
            for cut in cutoffs(config.default, own):
                self._apply(cut, now, store, started, config, tally)
        except _Stop as stop:
            complete = False
            log.info("worker %s: housekeeping pass stopped early (%s)", self.worker_id, stop)
        except Exception as exc:
            complete, error = False, f"{type(exc).__name__}: {exc}"
            log.warning("worker %s: housekeeping pass failed: %s", self.worker_id, error)
        record = PurgePass(
            started_at=now,
            worker=self.worker_id,
            seconds=round(time.monotonic() - started, 6),
            deleted=dict(sorted(tally.deleted.items())),
            archived=tally.archived,
            archive=config.archive,
            workers_pruned=pruned,
            complete=complete,
            error=error,
            default=config.default.as_text(),
            templates=as_text(own),
        )
        self._record(record)
        if record.total:
            self.bus.publish(
                Events.TASKS_PURGED,
                purged_event(
                    dict(record.deleted),
                    tally.archived,
                    config.archive,
                    self.worker_id,
                    "retention",
                ),
            )
            log.info(
                "worker %s: housekeeping deleted %d finished task(s) past their retention (%s)",
                self.worker_id,
                record.total,
                ", ".join(f"{s} {n}" for s, n in record.deleted.items()),
            )
        return record

    def _apply(
        self,
        cut: Cutoff,
        now: datetime,
        store: Archive | None,
        started: float,
        config: HousekeepingConfig,
        tally: _Tally,
    ) -> None:
        """Delete what one cut-off picks, a batch per transaction, oldest first."""
        where = purge_store.cutoff_conditions(cut, now - timedelta(seconds=cut.seconds))
        while True:
            if self._stopping.is_set():
                raise _Stop("the worker stops")
            if time.monotonic() - started > config.interval_seconds:
                raise _Stop(f"{config.interval_seconds:g}s of work; the next pass goes on")
            with self.db.write() as conn:
                # Renew first: a holder whose lease ran out (a long pause) deletes nothing more.
                if not jobs.take(conn, JOB, self.worker_id, clock.now(), self.lease_seconds):
                    self.holding = False
                    raise _Stop("another worker holds the job")
                batch = purge_store.purge_where(conn, where, config.batch, store, now)
            report_purged(self.hooks, batch, "retention", self.worker_id)
            for (_, status), n in batch.counts.items():
                tally.deleted[status] += n
            tally.archived += batch.archived
            if batch.deleted < config.batch:
                return

    def _prune_workers(self, now: datetime, config: HousekeepingConfig) -> int:
        with self.db.write() as conn:
            pruned = worker_rows.prune(conn, now - timedelta(seconds=config.worker_rows_seconds))
        if pruned:
            log.info(
                "worker %s: forgot %d worker(s) not seen for %g hours",
                self.worker_id,
                pruned,
                config.worker_rows_seconds / 3600,
            )
        return pruned

    def _record(self, record: PurgePass) -> None:
        try:
            with self.db.write() as conn:
                jobs.record_pass(conn, JOB, self.worker_id, record.as_json())
        except Exception as exc:  # bookkeeping: the deletions stand
            log.warning(
                "worker %s: recording the housekeeping pass failed (%s)",
                self.worker_id,
                type(exc).__name__,
            )
