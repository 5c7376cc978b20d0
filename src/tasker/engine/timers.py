"""The worker's timers: tasks past their deadline, and schedules whose tick has come.

Time is a column, not a thread: deadlines are `tasker_tasks.deadline_at`, schedules'
`tasker_schedules.next_at`. Every `TIMER_SECONDS` a long-running worker tries to take the `timers`
job's lease (`tasker.store.jobs`); the one that holds it ends the tasks past their deadline
(`operations.expire_task`) and fires the schedules that are due, so any number of workers fire
each tick once. The idempotency key of a tick's task is the schedule and the tick
(`tasker.domain.schedules.tick_key`), so not even a holder that dies between creating the task and
moving the schedule on can fire a tick twice: the next holder finds the task and moves on.

A worker that runs one task (`Tasker.run()`) ends that task at its deadline itself, holding no
lease: the deadline is its task's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tasker.domain.errors import TaskerError
from tasker.domain.events import Events
from tasker.domain.schedules import due_ticks, tick_key
from tasker.engine import clock
from tasker.events.bus import EventBus
from tasker.handlers.base import TaskPort
from tasker.registry import TemplateRegistry
from tasker.store import claims, deadlines, jobs, operations
from tasker.store import schedules as schedule_store
from tasker.store.database import Database
from tasker.store.journal import Journal
from tasker.store.transactions import journaled

log = logging.getLogger("tasker.timers")

#: How often a worker looks at the timers (real seconds).
TIMER_SECONDS = 1.0
#: The job's name in `tasker_jobs`, and how long a holder's lease lasts without renewal (it renews
#: it every second): short, so that a dead holder's ticks fire within seconds. A holder that stalls
#: longer than this (a long GC pause) may fire a tick another worker fires too: the tick's task is
#: one all the same (its idempotency key), so shortness costs nothing but a duplicate attempt.
JOB = "timers"
LEASE_SECONDS = 3.0
#: Deadlines ended, and schedules fired, per look.
BATCH = 100


@dataclass
class TimerReport:
    """What one look at the timers did."""

    held: bool = False
    expired: list[int] = field(default_factory=list)
    fired: list[int] = field(default_factory=list)


class Timers:
    """One worker's part in the timers."""

    def __init__(
        self,
        db: Database,
        worker_id: str,
        registry: TemplateRegistry,
        bus: EventBus,
        tasks: TaskPort | None,
        lease_seconds: float = LEASE_SECONDS,
    ):
        self.db = db
        self.lease_seconds = lease_seconds
        self.worker_id = worker_id
        self.registry = registry
        self.bus = bus
        self.tasks = tasks
        self._unknown: set[int] = set()
        #: This worker took the job's lease at its last look.
        self.holding = False

    def run(self, task_ids: Sequence[int] | None = None, *, schedules: bool = True) -> TimerReport:
        """Look once: with `task_ids` (a worker of one task), end those past their deadline;
        without `schedules` (a worker that drains the queue and stops), end every task past its
        deadline; else, if this worker holds the job, do that and fire the due schedules."""
        now = clock.now()
        report = TimerReport()
        if task_ids is not None or not schedules:
            # Ending a task at its deadline is safe from any number of workers at once (it locks
            # the task and checks it is still unfinished): only firing schedules takes the job.
            report.expired = self._expire(now, task_ids)
            return report
        with self.db.write() as conn:
            report.held = jobs.take(conn, JOB, self.worker_id, now, self.lease_seconds)
        self.holding = report.held
        if not report.held:
            return report
        report.expired = self._expire(now, None)
        if schedules:
            report.fired = self.fire_schedules(now)
        return report

    def next_event(self, task_ids: Sequence[int] | None = None) -> datetime | None:
        """The earliest time something is due: a step's `run_at`, a deadline or (for all tasks) a
        schedule's tick (None: nothing is)."""
        with self.db.read() as conn:
            times = [
                claims.next_run_at(conn, task_ids=task_ids),
                deadlines.next_deadline(conn, task_ids),
                None if task_ids is not None else schedule_store.next_tick(conn),
            ]
        found = [t for t in times if t is not None]
        return min(found) if found else None

    def release(self) -> None:
        """A stopping worker gives the job up, so that another takes it at once."""
        with self.db.write() as conn:
            jobs.release(conn, JOB, self.worker_id)
        self.holding = False

    def _expire(self, now: datetime, task_ids: Sequence[int] | None) -> list[int]:
        with self.db.read() as conn:
            found = deadlines.expired(conn, now, BATCH, task_ids)
        ended = []
        lock = self.db.is_postgres
        for task_id in found:
            done, events = journaled(self.db, _expiring(task_id, lock), clock=clock.now)
            for name, payload in events:
                self.bus.publish(name, payload)
            if done:
                ended.append(task_id)
                log.info("task %d passed its deadline: ended (deadline_exceeded)", task_id)
        return ended

    def fire_schedules(self, now: datetime) -> list[int]:
        """Create the tasks of the schedules whose tick has come; returns their ids."""
        if self.tasks is None:
            return []
        with self.db.read() as conn:
            due = schedule_store.due(conn, now, BATCH)
        created: list[int] = []
        for schedule in due:
            try:
                self.registry.get(schedule.template)
            except TaskerError:
                if schedule.id not in self._unknown:
                    self._unknown.add(schedule.id)
                    log.warning(
                        "schedule %d (%s of %s) is due but this worker has not loaded %s; a"
                        " worker with that template fires it",
                        schedule.id,
                        schedule.name,
                        schedule.template,
                        schedule.template,
                    )
                continue
            ticks = due_ticks(
                schedule.cron, schedule.timezone, schedule.next_at, now, schedule.catch_up
            )
            last_task = None
            for tick in ticks.fire:
                try:
                    task = self.tasks.create_task(
                        f"{schedule.namespace}/{schedule.task_name}",
                        dict(schedule.context),
                        version=schedule.version,
                        idempotency_key=tick_key(schedule.id, tick),
                        correlation_id=f"schedule-{schedule.id}-{tick:%Y%m%dT%H%M%SZ}",
                    )
                except TaskerError as exc:
                    log.error(
                        "schedule %d (%s of %s) could not create its task for %s: %s",
                        schedule.id,
                        schedule.name,
                        schedule.template,
                        tick.isoformat(),
                        exc,
                    )
                    continue
                last_task = task.id
                created.append(task.id)
                self.bus.publish(
                    Events.SCHEDULE_FIRED,
                    {
                        "schedule_id": schedule.id,
                        "schedule": schedule.name,
                        "template": schedule.template,
                        "tick": tick.isoformat(),
                        "task_id": task.id,
                    },
                )
            if ticks.skipped:
                log.info(
                    "schedule %d (%s of %s) skipped %d missed tick(s) (catch_up: %s)",
                    schedule.id,
                    schedule.name,
                    schedule.template,
                    ticks.skipped,
                    schedule.catch_up,
                )
            with self.db.write() as conn:
                schedule_store.advance(
                    conn,
                    schedule,
                    ticks.next_at,
                    ticks.fire[-1] if ticks.fire else None,
                    last_task,
                    clock.now(),
                )
        return created


def _expiring(task_id: int, lock: bool) -> Callable[[Any, Journal], bool]:
    def expire(conn: Any, journal: Journal) -> bool:
        return operations.expire_task(conn, journal, task_id, lock=lock)

    return expire
