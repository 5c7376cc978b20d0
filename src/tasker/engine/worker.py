"""The worker: claims ready steps, runs their handlers concurrently, and stores their outcomes.

One asyncio loop per worker coordinates its parts, each owning its state and timers:

- claim and settle: `cycle.Cycles`, on one dedicated database thread. A cycle is one transaction
  that extends leases, stores every outcome finished since the last cycle, reclaims expired leases
  and claims new work: writes batch under load, and a chain's next step is claimed by the
  transaction that made it ready;
- execute: `attempts.Attempts`, an asyncio task per claimed step; `outcomes` decides what an attempt
  comes to, in one place;
- heartbeat and lease reclaim: two `housekeeping.Every` timers whose work rides on the next cycle;
- wake-ups: `wakeups.Wakeups` (finished attempts, `notify()`, PostgreSQL NOTIFY, the poll);
- housekeeping: `housekeeping.Registry` (register and prune at start, a side task refreshing the
  row, the stop), `housekeeping.OutageBackoff`; the `housekeeping` job (retention, worker rows:
  `housekeeping_job.HousekeepingJob`), looked at like the timers by long-running workers;
- after a cycle: events to the bus, settled tasks to the hooks and task handlers (`settle`).

Metrics, traces and log fields are hooks (`tasker.domain.hooks`) the engine installs; the worker
imports none of them. What its handlers may ask of the engine (`ctx.create_task`, `ctx.get_task`)
is the narrow `TaskPort`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tasker.domain.errors import StoreError
from tasker.domain.hooks import WorkerHooks
from tasker.domain.records import ClaimedStep, Outcome
from tasker.domain.retention import HousekeepingConfig
from tasker.domain.states import FINISHED_TASK_STATES, StepState
from tasker.domain.storable import storable_text
from tasker.engine import clock, outcomes
from tasker.engine.attempts import Attempts
from tasker.engine.cycle import CyclePlan, CycleResult, Cycles, Scope
from tasker.engine.executor import Runtime
from tasker.engine.handler_threads import HandlerThreads
from tasker.engine.hooks import Hooks
from tasker.engine.housekeeping import Every, OutageBackoff, Registry
from tasker.engine.housekeeping_job import HousekeepingJob
from tasker.engine.resolver import Resolver
from tasker.engine.settle import SettledBatch, TaskHandlers, deliver_settled
from tasker.engine.timers import TIMER_SECONDS, Timers
from tasker.engine.wakeups import Wakeups
from tasker.events.bus import EventBus
from tasker.handlers.base import TaskPort
from tasker.store import signals as signal_store
from tasker.store import tasks as task_store
from tasker.store.database import Database
from tasker.store.systems import ViewCache

log = logging.getLogger("tasker.worker")
FINISHED = {s.value for s in FINISHED_TASK_STATES}
#: How often a worker looks for tasks left `compensating` without their undo rows.
UNDO_SWEEP_SECONDS = 5.0


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class WorkerOptions:
    concurrency: int = 10
    lease_seconds: float = 30.0
    poll_interval: float = 0.5
    namespaces: Sequence[str] | None = None
    task_id: int | None = None
    backoff_scale: float = 1.0
    grace_seconds: float = 30.0
    worker_id: str = field(default_factory=new_worker_id)
    #: The worker's event loop serves nothing else (a `tasker worker` process): on PostgreSQL a
    #: cycle that finds no attempt running (an idle claim, a finished batch's outcomes) then runs
    #: on the loop, sparing it two thread hops. A worker on a shared loop (`Tasker.work()`,
    #: embedded in `tasker serve`, an application's own loop) keeps every cycle on its database
    #: thread, so that no cycle can hold the loop.
    own_loop: bool = False
    #: The housekeeping job's settings (retention, archive, interval); None: this process's
    #: settings (`tasker.settings`), read at the first look.
    housekeeping: HousekeepingConfig | None = None


class _Threads:
    """The worker's threads for one run: the database thread, and a pool for work off the loop
    (settled tasks' hooks), whose jobs the worker waits for before it returns."""

    def __init__(
        self,
        worker_id: str,
        db: ThreadPoolExecutor | None,
        pool: ThreadPoolExecutor | None,
        *,
        inline_db: bool = False,
    ):
        self.loop = asyncio.get_running_loop()
        #: Database calls run on the loop's own thread (a `Tasker.run()` in the caller's thread:
        #: one task, nothing else for the loop to do meanwhile but wait for its handlers).
        self.inline_db = inline_db
        self._own_db, self._own_pool = db is None and not inline_db, pool is None
        self.db_thread = (
            None
            if inline_db
            else db or ThreadPoolExecutor(1, thread_name_prefix=f"tasker-db-{worker_id}")
        )
        self.pool = pool or ThreadPoolExecutor(4, thread_name_prefix="tasker-hooks")
        self.pending: set[asyncio.Future[None]] = set()

    def on_db(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        if self.db_thread is None:
            done: asyncio.Future[Any] = self.loop.create_future()
            try:
                done.set_result(fn(*args))
            except Exception as exc:
                done.set_exception(exc)
            return done
        return self.loop.run_in_executor(self.db_thread, fn, *args)

    def background(self, fn: Callable[..., None], *args: Any) -> None:
        job = self.loop.run_in_executor(self.pool, fn, *args)
        self.pending.add(job)
        job.add_done_callback(self.pending.discard)

    async def close(self) -> None:
        if self._own_db and self.db_thread is not None:
            self.db_thread.shutdown(wait=True)
        if self.pending:  # else a finished task could miss its on_complete annotations
            await asyncio.gather(*self.pending, return_exceptions=True)
        if self._own_pool:
            self.pool.shutdown(wait=False, cancel_futures=True)


class Worker:
    def __init__(
        self,
        db: Database,
        resolver: Resolver,
        bus: EventBus,
        options: WorkerOptions,
        *,
        tasks: TaskPort | None = None,
        hooks: Sequence[WorkerHooks] = (),
        db_executor: ThreadPoolExecutor | None = None,
        handler_pool: ThreadPoolExecutor | None = None,
        handler_threads: HandlerThreads | None = None,
        views: ViewCache | None = None,
        inline_db: bool = False,
    ):
        self.db = db
        self.resolver = resolver
        self.bus = bus
        self.opts = options
        self.id = options.worker_id
        self.hooks = Hooks(hooks)
        #: Threads that run sync handlers; one whose handler hangs is written off and replaced.
        self.threads = handler_threads or HandlerThreads(
            options.concurrency, name=f"tasker-step-{self.id}"
        )
        self._own_threads = handler_threads is None
        self._shared_db, self._shared_pool = db_executor, handler_pool
        self._inline_db = inline_db
        lease = options.lease_seconds
        self.wakeups = Wakeups(options.poll_interval)
        rt = Runtime(self.threads, options.backoff_scale, tasks, self.hooks)
        self.attempts = Attempts(
            self.id,
            resolver,
            rt,
            self.wakeups.wake,
            lambda task_id, step_id: task_store.find_child(db, task_id, step_id),
            lambda task_id, step_id, names: signal_store.read_wait(db, task_id, step_id, names),
        )
        tree = None if options.task_id is None else [options.task_id]
        scope = Scope(options.namespaces, tree, lease)
        self.cycles = Cycles(db, resolver, self.id, scope, self.hooks, bus, views)
        self.heartbeat = Every(lease / 3)
        self.reclaim = Every(min(1.0, lease / 4))
        #: Tasks left `compensating` without undo rows (their worker died between the settle and
        #: the write of the undos) are looked for this often.
        self.undo_sweep = Every(UNDO_SWEEP_SECONDS, next_at=time.monotonic() + UNDO_SWEEP_SECONDS)
        #: Deadlines and schedules (`tasker.engine.timers`): looked at this often.
        self.timers = Timers(db, self.id, resolver.registry, bus, tasks)
        # First look a second in: a `Tasker.run()` of a few milliseconds never pays for one.
        self.timer_look = Every(TIMER_SECONDS, next_at=time.monotonic() + TIMER_SECONDS)
        #: Retention and worker rows (`tasker.engine.housekeeping_job`): long-running workers only.
        self.housekeeping = HousekeepingJob(
            db, self.id, bus, self.hooks.installed, options.housekeeping
        )
        self.registry = Registry(db, self.id, options.namespaces, options.concurrency)
        self.task_handlers = TaskHandlers(resolver, db)
        self._outage = OutageBackoff()
        self._stop = False
        self._stop_deadline: float | None = None
        self._task_settled = False
        self._stuck_seen = 0
        #: Attempts cut off at the end of the grace period; their sync handlers may still be
        #: running.
        self.abandoned = 0

    @property
    def steps_run(self) -> int:
        return self.attempts.steps_run

    def _steps_run(self) -> int:
        return self.attempts.steps_run

    @property
    def stuck_handlers(self) -> int:
        """Sync handlers that overstayed their timeout and still hold a thread."""
        return self.threads.stuck

    # -- control from other threads ----------------------------------------------------------------
    def notify(self) -> None:
        """Work may be ready (a task was created, a step re-armed): look now instead of at the next
        poll."""
        self.wakeups.notify()

    def stop(self) -> None:
        """Stop claiming; in-flight steps finish (up to the grace period) and the worker returns."""
        self._stop = True
        self.notify()

    # -- the run -----------------------------------------------------------------------------------
    async def run(self, *, until_idle: bool = False) -> None:
        """Claim and run steps until stopped, or with `until_idle` until nothing is left to run.

        Long-running workers register (a `run` of one task does not), refresh their row from a side
        task, and listen for work other processes make.
        """
        io = _Threads(self.id, self._shared_db, self._shared_pool, inline_db=self._inline_db)
        self.wakeups.open(io.loop)
        opts = self.opts
        log.info(
            "worker %s started (concurrency %d, store %s)",
            self.id,
            opts.concurrency,
            self.db.safe_url(),
        )
        registered = not until_idle and await self.registry.announce(io.on_db)
        side: list[asyncio.Task[None]] = []
        if registered:
            side.append(asyncio.create_task(self.registry.keep_seen(io.on_db, self._steps_run)))
        listener = None if until_idle else self.wakeups.listen(self.db)
        try:
            await self._main(until_idle, io)
        finally:
            self.housekeeping.stop()  # a pass in progress ends after its batch
            for task in side:
                task.cancel()
            await asyncio.gather(*side, return_exceptions=True)
            if listener is not None:
                listener.stop()
            if registered:
                await io.on_db(self.registry.seen, self.steps_run, True)
            self.attempts.cancel_all()
            await io.close()
            if self.timers.holding:  # after io.close: no look at the timers still runs
                self._release_timers()
            if self.housekeeping.holding:
                self._release_housekeeping()
            if self._own_threads:
                self.threads.shutdown()
            self.wakeups.close()
            log.info("worker %s stopped after %d steps", self.id, self.steps_run)

    async def _main(self, until_idle: bool, io: _Threads) -> None:
        """Claim, execute, settle: a cycle whenever there are outcomes to store, room to claim into
        or leases to extend; else wait for a wake-up."""
        started = time.monotonic()
        self.heartbeat.done(started)  # the first beat is due a third of a lease from now
        if self.opts.task_id is not None:
            # `Tasker.run()` starts a worker per task: reclaiming the store's expired leases is the
            # long-running workers' job, and this one only joins in once it has run a while.
            self.reclaim.done(started)
        self._stop_deadline = None
        while True:
            now = time.monotonic()
            if self._drained():
                return
            if self._grace_over(now):
                await self._abandon(io)
                continue
            plan = self._plan(now)
            if plan is not None:
                result = await self._cycle(plan, io)
                if result is not None:
                    self._after_cycle(plan, result, now, io, until_idle)
                continue
            due_in = None
            if until_idle and not self.attempts.running:
                idle, due_in = await self._idle(io)
                if idle:
                    return
                if due_in is not None and clock.skip(due_in):
                    # A virtual clock jumped to the next due step or deadline: end what is past
                    # its deadline before claiming, as real time would have.
                    await io.on_db(self._look_at_timers, False)
                    self.wakeups.rescan()
                    continue
                if due_in is not None and due_in > 0 and clock.held():
                    return  # only the test moves this clock: nothing more is due now
            await self.wakeups.wait(self._wait_seconds(due_in))

    # -- the parts of one turn ---------------------------------------------------------------------
    def _drained(self) -> bool:
        """Stopped (or the one task this worker runs has finished) and nothing left in flight."""
        if self.attempts.running or self.attempts.finished:
            return False
        return self._stop or self._task_settled

    def _grace_over(self, now: float) -> bool:
        if not self._stop:
            return False
        if self._stop_deadline is None:
            self._stop_deadline = now + self.opts.grace_seconds
        return now >= self._stop_deadline and bool(self.attempts.running)

    def _room(self) -> int:
        """Steps this worker may claim now: its concurrency, less what runs, less stuck handler
        threads beyond the replacement cap (each holds a thread that no new step can use)."""
        running = len(self.attempts.running)
        return max(0, self.opts.concurrency - running - self.threads.overflow)

    def _plan(self, now: float) -> CyclePlan | None:
        """What the next cycle is to do, or None when there is nothing to do."""
        done = self.attempts.take()
        free = 0 if self._stop else self._room()
        claim_due = self.wakeups.claim_due
        want_claim = free > 0 and (claim_due or bool(done))
        beat = bool(self.attempts.running) and self.heartbeat.due(now)
        if not (done or want_claim or beat):
            return None
        return CyclePlan(
            done,
            claim_limit=free if want_claim else 0,
            scan=free > 0 and claim_due,
            heartbeat=list(self.attempts.running) if beat else None,
            reclaim=not self._stop and want_claim and self.reclaim.due(now),
        )

    async def _cycle(self, plan: CyclePlan, io: _Threads) -> CycleResult | None:
        """Run one cycle. An outage keeps its outcomes for the next one, after a pause; any other
        failure is isolated to the outcome that caused it. None: nothing was committed."""
        try:
            if self._cycle_on_loop(plan, io):
                # Nothing runs and the loop is this worker's alone: it has nothing to do but wait
                # for this cycle, so it runs the cycle itself instead of handing it to the
                # database thread and back (two thread hops in every step's path).
                result: CycleResult | None = self.cycles.run(plan)
            else:
                result = await io.on_db(self.cycles.run, plan)
        except Exception as exc:
            if outcomes.is_outage(exc):
                self.attempts.put_back(plan.done)
                await self._outage.pause(self.id, exc)
                return None
            # a bug, or one outcome the store refuses: never the worker's end
            result = await self._isolate(plan.done, exc, io)
        if result is not None:
            self._outage.clear()
        return result

    def _cycle_on_loop(self, plan: CyclePlan, io: _Threads) -> bool:
        """Whether this cycle may run on the loop: the loop is the worker's own, no attempt is
        running (no handler, timeout or heartbeat to serve meanwhile), the cycle extends no lease,
        no outage is suspected, and the store is PostgreSQL (an SQLite write may wait its busy
        timeout for another process). Every other cycle runs on the database thread.

        That covers an idle worker's claim (its latency after a NOTIFY) and, under load, the cycle
        that stores a batch of outcomes and claims the next: when the batch's handlers have all
        finished, the loop would only wait for the cycle, and the two thread hops are part of every
        step's path (the fleet ran 14% faster at the median without them, docs/benchmarks.md)."""
        return (
            self.opts.own_loop
            and io.db_thread is not None
            and self.db.is_postgres
            and plan.heartbeat is None
            and not self.attempts.running
            and not self._outage.failures
        )

    def _after_cycle(
        self, plan: CyclePlan, result: CycleResult, now: float, io: _Threads, until_idle: bool
    ) -> None:
        stuck = self.threads.stuck
        if stuck != self._stuck_seen:  # reported only when it changes
            self._stuck_seen = stuck
            self.hooks.stuck_handlers(self.id, stuck)
        if plan.heartbeat is not None and result.held is not None:  # None: stored piecemeal
            self.heartbeat.done(now)
            self.attempts.drop_lost(result.held, result.cancelled)
        if plan.reclaim:
            self.reclaim.done(now)
        if not self._stop and self.opts.task_id is None and self.undo_sweep.due(now):
            self.undo_sweep.done(now)
            io.background(self.cycles.sweep_undos)
        if not self._stop and self.timer_look.due(now):
            self.timer_look.done(now)
            io.background(self._look_at_timers, not until_idle)
        if self._long_running(until_idle) and self.housekeeping.due(now):
            io.background(self._housekeep)
        self._deliver(result, io)
        if until_idle and self._settles_my_task(result.settled):
            self._task_settled = True
        for claimed in result.claimed:
            self.attempts.start(claimed)
        if result.claimed:
            self.hooks.claimed(self.id, result.claimed)
        if plan.scan and result.scanned_full is not None:
            self.wakeups.scanned(result.scanned_full)
        for outcome, _ in plan.done:
            if outcome.state == StepState.WAITING_RETRY:
                self.wakeups.retry_at(now + outcome.retry_delay)

    def _settles_my_task(self, settled: list[tuple[int, str]]) -> bool:
        task_id = self.opts.task_id
        return task_id is not None and any(t == task_id and st in FINISHED for t, st in settled)

    def _look_at_timers(self, schedules: bool) -> None:
        """Deadlines, and schedules for a long-running worker (`schedules`): the timers job, or
        this worker's one task's deadline. A worker that drains the queue and stops
        (`until_idle`) fires no schedule."""
        try:
            report = self.timers.run(self.cycles.scope.task_ids, schedules=schedules)
        except Exception as exc:  # bookkeeping: the next look tries again
            log.warning("worker %s: timers failed (%s: %s)", self.id, type(exc).__name__, exc)
            return
        if report.expired or report.fired:
            self.wakeups.notify()  # undo rows, new tasks: work for the next cycle

    def _release_timers(self) -> None:
        try:
            self.timers.release()
        except Exception as exc:  # the lease runs out by itself
            log.debug("worker %s: releasing the timers failed (%s)", self.id, exc)

    def _long_running(self, until_idle: bool) -> bool:
        """Runs until stopped, for all tasks: a worker that takes part in the store's jobs."""
        return not (self._stop or until_idle) and self.opts.task_id is None

    def _housekeep(self) -> None:
        self.housekeeping.look()  # never raises: a failed pass is logged and recorded

    def _release_housekeeping(self) -> None:
        try:
            self.housekeeping.release()
        except Exception as exc:  # the lease runs out by itself
            log.debug("worker %s: releasing the housekeeping job failed (%s)", self.id, exc)

    def _wait_seconds(self, due_in: float | None) -> float:
        wait = self.opts.poll_interval
        if due_in is not None:
            wait = max(0.0, min(due_in, wait))
        now = time.monotonic()
        if self.attempts.running:
            wait = min(wait, self.heartbeat.remaining(now))
        wait = max(0.0, min(wait, self.wakeups.until_retry(now)))
        if self._stop_deadline is not None:
            wait = min(wait, max(0.0, self._stop_deadline - now))
        return wait

    async def _idle(self, io: _Threads) -> tuple[bool, float | None]:
        """Whether nothing is left for an `until_idle` run, else when the next step is due."""
        try:
            found: tuple[bool, float | None] = await io.on_db(
                self.cycles.idle_check, self.attempts.unloadable_steps
            )
        except Exception as exc:
            log.warning(
                "worker %s: could not check for remaining work (%s: %s)",
                self.id,
                type(exc).__name__,
                exc,
            )
            return False, None
        return found

    # -- after a cycle -----------------------------------------------------------------------------
    def _deliver(self, result: CycleResult, io: _Threads) -> None:
        """After a committed cycle: publish its events; hand settled tasks to the hooks and task
        handlers (off the loop). None of this may stop the worker: a failure is logged."""
        try:
            for name, payload in result.events:
                self.bus.publish(name, payload)
            if result.settled:
                self._deliver_settled(result.settled, io)
        except Exception:
            log.exception(
                "worker %s: delivering a cycle's events and hooks failed; carrying on", self.id
            )

    def _deliver_settled(self, settled: list[tuple[int, str]], io: _Threads) -> None:
        hooked: dict[int, int | None] = {}  # tasks whose template may name a task handler
        for task_id, _ in settled:
            template_id = self.attempts.template_of(task_id)
            if template_id is None or not self.resolver.known(template_id):
                hooked[task_id] = None  # settled on another worker's behalf: read its snapshot
            elif self.resolver.template(template_id).task_handler_class:
                hooked[task_id] = template_id
        if not hooked and not self.hooks.wants_settled_tasks():
            return
        unknown = frozenset(t for t, template_id in hooked.items() if template_id is None)
        batch = SettledBatch(self.db, settled, unknown)
        io.background(deliver_settled, self.hooks, self.task_handlers, batch, hooked)

    # -- when things go wrong ----------------------------------------------------------------------
    async def _isolate(
        self, done: list[tuple[Outcome, ClaimedStep]], exc: Exception, io: _Threads
    ) -> CycleResult | None:
        """A cycle failed with an error that is not an outage: store its outcomes one by one
        instead.

        The innocent outcomes are stored once (never re-run); the one the store refuses is stored as
        a failure of its step that names the store's error. Returns the merged result, or None when
        the database became unreachable meanwhile (the outcomes wait for the next cycle).
        """
        log.error(
            "worker %s: a cycle with %d outcome(s) failed (%s: %s); storing them one by one",
            self.id,
            len(done),
            type(exc).__name__,
            storable_text(exc, 500),
            exc_info=exc,
        )
        merged = CycleResult()
        for index, item in enumerate(done):
            try:
                one: CycleResult = await io.on_db(self.cycles.store_one, item)
            except StoreError:  # `store_one` lets only outages through
                self.attempts.put_back(done[index:])
                return None if not merged.settled and not merged.events else merged
            merged.settled += one.settled
            merged.events += one.events
        if not done:  # the cycle failed with nothing to store: do not spin on it
            await asyncio.sleep(min(self.opts.poll_interval, 1.0))
            return None
        return merged

    async def _abandon(self, io: _Threads) -> None:
        """The grace period is over: cancel what still runs and hand those steps back to other
        workers."""
        held = self.attempts.cancel_all()
        released = await io.on_db(self.cycles.release, held)
        self.abandoned += len(held)
        log.info("worker %s released %d unfinished steps after the grace period", self.id, released)
