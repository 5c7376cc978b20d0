"""The worker: claims ready steps, runs their handlers concurrently, and stores their outcomes.

One asyncio loop per worker coordinates everything; all database work happens on one dedicated
thread, in cycles that apply every outcome finished since the last cycle and claim new work in the
same transaction. That batches writes under load (fewer transactions per step) and lets a chain's
next step be claimed by the transaction that made it ready, without waiting for a poll.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tasker.domain.errors import StoreError, StoreUnavailable, TaskerError
from tasker.domain.records import ClaimedStep, Outcome
from tasker.domain.states import FINISHED_TASK_STATES, StepState
from tasker.domain.storable import MAX_MESSAGE_CHARS, safe_str, storable_text
from tasker.engine.executor import describe_error, execute
from tasker.engine.handler_threads import HandlerThreads
from tasker.engine.resolver import Resolver
from tasker.events.bus import EventBus
from tasker.handlers.base import TaskPort
from tasker.observability import metrics, tracing
from tasker.store import claims, completion, systems
from tasker.store import workers as worker_registry
from tasker.store.database import Database
from tasker.store.journal import Journal
from tasker.store.tasks import template_definition

log = logging.getLogger("tasker.worker")
FINISHED = {s.value for s in FINISHED_TASK_STATES}
#: How long a worker trusts its picture of circuits and limits before reading it again.
VIEW_TTL_SECONDS = 0.25
#: How long a step whose handler this worker cannot import waits before a worker tries it again.
UNLOADABLE_RETRY_SECONDS = 10.0


def _outage(exc: BaseException) -> bool:
    """A failed cycle that pauses the worker (a lost connection, a restarting server, a deadlock
    victim), as opposed to one to isolate: anything else is a bug."""
    return isinstance(exc, StoreUnavailable)


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def utcnow() -> datetime:
    return datetime.now(UTC)


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


@dataclass
class _Cycle:
    claimed: list[ClaimedStep]
    #: Whether a scan filled the room it had (more may wait), or None when no scan ran this cycle.
    scanned_full: bool | None
    settled: list[tuple[int, str]]
    events: list[tuple[str, dict[str, Any]]]
    held: set[int] | None
    #: Steps whose lease this worker lost and that are `cancelled` now (an operator's cancel).
    cancelled: set[int] = field(default_factory=set)


class Worker:
    def __init__(
        self,
        db: Database,
        resolver: Resolver,
        bus: EventBus,
        options: WorkerOptions,
        on_settled: Callable[[list[tuple[int, str]]], None] | None = None,
        *,
        db_executor: ThreadPoolExecutor | None = None,
        handler_pool: ThreadPoolExecutor | None = None,
        handler_threads: HandlerThreads | None = None,
        tasks: TaskPort | None = None,
    ):
        self.db = db
        self.resolver = resolver
        self.bus = bus
        self.opts = options
        self.id = options.worker_id
        self.on_settled = on_settled
        #: What handlers reach through `ctx.create_task` / `ctx.get_task` (the engine facade).
        self.tasks = tasks
        self._inflight: dict[int, tuple[asyncio.Task[None], ClaimedStep]] = {}
        self._done: list[tuple[Outcome, ClaimedStep]] = []
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = False
        self._task_settled = False
        self._task_templates: dict[int, int] = {}
        self._view = systems.SystemsView()
        self._view_at = 0.0
        self._shared_db = db_executor
        self._shared_pool = handler_pool
        #: Threads that run sync handlers; one whose handler hangs is written off and replaced.
        self.threads = handler_threads or HandlerThreads(
            options.concurrency, name=f"tasker-step-{self.id}"
        )
        self._own_threads = handler_threads is None
        self._stuck_seen = 0
        #: Handlers this worker could not import (logged once each), and the steps it handed back
        #: so.
        self._unloadable_handlers: set[str] = set()
        self._unloadable_steps: set[int] = set()
        self.steps_run = 0
        #: Attempts cut off at the end of the grace period; their sync handlers may still be
        #: running.
        self.abandoned = 0
        #: Task handler hooks still running; the worker waits for them before it returns.
        self._hooks: set[asyncio.Future[None]] = set()

    # -- control from other threads ----------------------------------------------------------------
    def notify(self) -> None:
        """Work may be ready (a task was created, a step re-armed): look now instead of at the next
        poll."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def stop(self) -> None:
        """Stop claiming; in-flight steps finish (up to the grace period) and the worker returns."""
        self._stop = True
        self.notify()

    # -- the loop ----------------------------------------------------------------------------------
    async def run(self, *, until_idle: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        db_thread = self._shared_db or ThreadPoolExecutor(
            1, thread_name_prefix=f"tasker-db-{self.id}"
        )
        pool = self._shared_pool or ThreadPoolExecutor(4, thread_name_prefix="tasker-hooks")
        lease = self.opts.lease_seconds
        next_heartbeat = time.monotonic() + lease / 3
        next_reclaim = 0.0
        claim_due = True
        stop_deadline: float | None = None
        failures = 0
        log.info(
            "worker %s started (concurrency %d, store %s)",
            self.id,
            self.opts.concurrency,
            self.db.safe_url(),
        )
        # Long-running workers register, so health and status can list them; a `run` of one task
        # does not.
        registered = not until_idle and await self._register(db_thread)
        next_seen = time.monotonic() + worker_registry.SEEN_EVERY_SECONDS
        listener = None
        if (
            self.db.is_postgres and not until_idle
        ):  # long-running: hear of work other processes create
            from tasker.store.notify import ReadyListener

            listener = ReadyListener(self.db.url, self.notify)
            listener.start()
        try:
            while True:
                now_m = time.monotonic()
                if registered and now_m >= next_seen:
                    next_seen = now_m + worker_registry.SEEN_EVERY_SECONDS
                    await self._loop.run_in_executor(db_thread, self._seen, False)
                if self._stop and stop_deadline is None:
                    stop_deadline = now_m + self.opts.grace_seconds
                if self._stop and not self._inflight and not self._done:
                    break
                if self._task_settled and not self._inflight and not self._done:
                    break  # the one task this worker runs has finished
                if stop_deadline is not None and now_m >= stop_deadline and self._inflight:
                    await self._abandon(db_thread)
                    continue
                outcomes, self._done = self._done, []
                free = 0 if self._stop else self._room()
                want_claim = free > 0 and (claim_due or bool(outcomes))
                scan = free > 0 and claim_due
                heartbeat = now_m >= next_heartbeat and bool(self._inflight)
                reclaim = not self._stop and now_m >= next_reclaim and want_claim
                if outcomes or want_claim or heartbeat:
                    cycle: _Cycle | None
                    try:
                        cycle = await self._loop.run_in_executor(
                            db_thread,
                            self._db_cycle,
                            outcomes,
                            free if want_claim else 0,
                            scan,
                            list(self._inflight) if heartbeat else None,
                            reclaim,
                        )
                    except Exception as exc:
                        if _outage(exc):
                            failures += 1
                            self._done = outcomes + self._done
                            delay = min(0.1 * 2 ** min(failures, 6), 5.0)
                            log.warning(
                                "worker %s: database unavailable (%s); retrying in %.1fs",
                                self.id,
                                type(exc).__name__,
                                delay,
                            )
                            await asyncio.sleep(delay)
                            continue
                        # a bug, or one outcome the store refuses: never the worker's end
                        cycle = await self._isolate(db_thread, outcomes, exc)
                        if cycle is None:
                            continue
                    failures = 0
                    if self.threads.stuck != self._stuck_seen:  # a gauge write only when it changes
                        self._stuck_seen = self.threads.stuck
                        metrics.observe_stuck_handlers(self.id, self._stuck_seen)
                    if (
                        heartbeat and cycle.held is not None
                    ):  # (None: the cycle was stored piecemeal)
                        next_heartbeat = now_m + lease / 3
                        self._drop_lost(cycle.held or set(), cycle.cancelled)
                    if reclaim:
                        next_reclaim = now_m + min(1.0, lease / 4)
                    self._deliver(cycle, pool)
                    if (
                        until_idle
                        and self.opts.task_id is not None
                        and any(
                            tid == self.opts.task_id and st in FINISHED for tid, st in cycle.settled
                        )
                    ):
                        self._task_settled = True
                    for c in cycle.claimed:
                        self._start(c)
                    if scan and cycle.scanned_full is not None:
                        claim_due = cycle.scanned_full
                    continue
                if until_idle and not self._inflight:
                    try:
                        idle, due_in = await self._loop.run_in_executor(db_thread, self._idle_check)
                    except Exception as exc:
                        log.warning(
                            "worker %s: could not check for remaining work (%s: %s)",
                            self.id,
                            type(exc).__name__,
                            exc,
                        )
                        idle, due_in = False, None
                    if idle:
                        break
                    wait = self.opts.poll_interval
                    if due_in is not None:
                        wait = max(0.0, min(due_in, wait))
                else:
                    wait = self.opts.poll_interval
                if self._inflight:
                    wait = min(wait, max(0.0, next_heartbeat - time.monotonic()))
                if stop_deadline is not None:
                    wait = min(wait, max(0.0, stop_deadline - time.monotonic()))
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                except TimeoutError:
                    pass
                claim_due = True
        finally:
            if listener is not None:
                listener.stop()
            if registered:
                await asyncio.get_running_loop().run_in_executor(db_thread, self._seen, True)
            for task, _ in list(self._inflight.values()):
                task.cancel()
            if self._shared_db is None:
                db_thread.shutdown(wait=True)
            if self._hooks:  # else a finished task could miss its on_complete annotations
                await asyncio.gather(*self._hooks, return_exceptions=True)
            if self._shared_pool is None:
                pool.shutdown(wait=False, cancel_futures=True)
            if self._own_threads:
                self.threads.shutdown()
            self._loop = None
            log.info("worker %s stopped after %d steps", self.id, self.steps_run)

    def _room(self) -> int:
        """Steps this worker may claim now: its concurrency, less what runs, less stuck handler
        threads beyond the replacement cap (each holds a thread that no new step can use)."""
        return max(0, self.opts.concurrency - len(self._inflight) - self.threads.overflow)

    @property
    def stuck_handlers(self) -> int:
        """Sync handlers that overstayed their timeout and still hold a thread."""
        return self.threads.stuck

    def _deliver(self, cycle: _Cycle, pool: ThreadPoolExecutor) -> None:
        """After a committed cycle: publish its events, record task spans, call task handler hooks.

        None of this may stop the worker: a failing subscriber or hook is logged and the loop goes
        on.
        """
        assert self._loop is not None
        try:
            self._publish(cycle.events)
            if cycle.settled and tracing.enabled():  # task spans need the task rows: off the loop
                spans = self._loop.run_in_executor(
                    pool, tracing.record_task_spans, self.db, cycle.settled
                )
                self._hooks.add(spans)
                spans.add_done_callback(self._hooks.discard)
            hooked = [t for t in cycle.settled if self._has_task_handler(t[0])]
            if hooked and self.on_settled:
                hook = self._loop.run_in_executor(pool, self.on_settled, hooked)
                self._hooks.add(hook)
                hook.add_done_callback(self._hooks.discard)
        except Exception:
            log.exception(
                "worker %s: delivering a cycle's events and hooks failed; carrying on", self.id
            )

    async def _isolate(
        self,
        db_thread: ThreadPoolExecutor,
        outcomes: list[tuple[Outcome, ClaimedStep]],
        exc: Exception,
    ) -> _Cycle | None:
        """A cycle failed with an error that is not an outage: store its outcomes one by one
        instead.

        The innocent outcomes are stored once (never re-run); the one the store refuses is stored as
        a failure of its step that names the store's error. Returns the merged cycle, or None when
        the database became unreachable meanwhile (the outcomes wait for the next cycle).
        """
        assert self._loop is not None
        log.error(
            "worker %s: a cycle with %d outcome(s) failed (%s: %s); storing them one by one",
            self.id,
            len(outcomes),
            type(exc).__name__,
            storable_text(exc, 500),
            exc_info=exc,
        )
        merged = _Cycle([], None, [], [], None)
        for index, item in enumerate(outcomes):
            try:
                cycle = await self._loop.run_in_executor(db_thread, self._store_one, item)
            except StoreError:  # `_store_one` lets only outages through
                self._done = outcomes[index:] + self._done
                return None if not merged.settled and not merged.events else merged
            merged.settled += cycle.settled
            merged.events += cycle.events
        if not outcomes:  # the cycle failed with nothing to store: do not spin on it
            await asyncio.sleep(min(self.opts.poll_interval, 1.0))
            return None
        return merged

    def _store_one(self, item: tuple[Outcome, ClaimedStep]) -> _Cycle:
        """Store one outcome in a cycle of its own; if the store refuses it, store the refusal
        instead."""
        refused: Exception
        try:
            return self._db_cycle([item], 0, False, None, False)
        except Exception as exc:
            if _outage(exc):
                raise
            refused = exc
        outcome, claimed = item
        error = describe_error(refused, retryable=False, system_fault=False)
        error["class"] = "OutcomeNotStorable"
        error["message"] = storable_text(
            f"the store refused this attempt's outcome ({outcome.state}): {type(refused).__name__}:"
            f" {safe_str(refused)}",
            MAX_MESSAGE_CHARS,
        )
        log.error(
            "worker %s: step %d (%s) of task %d: %s",
            self.id,
            outcome.step_id,
            claimed.name,
            outcome.task_id,
            error["message"],
        )
        stand_in = dataclasses.replace(
            outcome,
            state=StepState.ERROR,
            results=None,
            error=error,
            events=[],
            children=None,
            retry_delay=0.0,
            refund_attempt=False,
        )
        try:
            return self._db_cycle([(stand_in, claimed)], 0, False, None, False)
        except Exception as exc:
            if _outage(exc):
                raise
            log.exception(
                "worker %s: could not store the failure of step %d either; its lease will expire",
                self.id,
                outcome.step_id,
            )
        return _Cycle([], None, [], [], None)

    def _unloadable(self, claimed: ClaimedStep, handler: str, exc: Exception) -> Outcome:
        """This worker cannot import the step's handler (a missing module, a deploy half done): hand
        the step back without spending an attempt, for a worker that can, and try again later."""
        if handler not in self._unloadable_handlers:
            self._unloadable_handlers.add(handler)
            log.error(
                "worker %s cannot load handler %s for step %s of task %d: %s; leaving such steps "
                "for workers that can",
                self.id,
                handler,
                claimed.name,
                claimed.task_id,
                storable_text(exc, 1000),
            )
        self._unloadable_steps.add(claimed.step_id)
        message = (
            f"waiting: no worker can load {handler} (worker {self.id}: "
            f"{storable_text(exc, MAX_MESSAGE_CHARS)})"
        )
        outcome = Outcome(
            step_id=claimed.step_id,
            task_id=claimed.task_id,
            claim_token=claimed.claim_token,
            attempt=claimed.attempt,
            state=StepState.WAITING_RETRY,
            error={
                "class": "HandlerUnavailable",
                "message": message,
                "handler": handler,
                "retryable": True,
                "system_fault": False,
            },
            retry_delay=UNLOADABLE_RETRY_SECONDS * self.opts.backoff_scale,
        )
        outcome.refund_attempt = True
        return outcome

    # -- the worker registry -----------------------------------------------------------------------
    async def _register(self, db_thread: ThreadPoolExecutor) -> bool:
        def write() -> None:
            with self.db.write() as conn:
                worker_registry.announce(
                    conn,
                    self.id,
                    namespaces=list(self.opts.namespaces or []) or None,
                    concurrency=self.opts.concurrency,
                    now=utcnow(),
                )

        try:
            await asyncio.get_running_loop().run_in_executor(db_thread, write)
        except StoreError as exc:  # bookkeeping: a worker that cannot register still works
            log.warning(
                "worker %s could not register (%s); it runs unlisted", self.id, type(exc).__name__
            )
            return False
        return True

    def _seen(self, stopped: bool) -> None:
        try:
            with self.db.write() as conn:
                worker_registry.seen(
                    conn, self.id, steps_run=self.steps_run, now=utcnow(), stopped=stopped
                )
        except StoreError as exc:
            log.debug("worker %s: registry refresh failed (%s)", self.id, type(exc).__name__)

    # -- database cycle (runs on the db thread) ----------------------------------------------------
    def _db_cycle(
        self,
        done: list[tuple[Outcome, ClaimedStep]],
        claim_limit: int,
        scan: bool,
        heartbeat: list[int] | None,
        reclaim: bool,
    ) -> _Cycle:
        """One transaction: extend leases, store outcomes, reclaim expired leases, claim new
        work."""
        pg = self.db.is_postgres
        known = self._known_tasks(done)
        view = self._view if time.monotonic() - self._view_at < VIEW_TTL_SECONDS else None
        with self.db.cycle() as conn:
            # Stamped once the write lock is held (SQLite: at BEGIN IMMEDIATE) so that transition
            # times follow commit order, even when this cycle waited for an operator's transaction.
            journal = Journal(utcnow(), self.id, collect=self.bus.has_listeners)
            if view is None:
                view = systems.load_view(conn)
                self._view, self._view_at = view, time.monotonic()
            held = None
            lost: set[int] = set()
            cancelled: set[int] = set()
            if heartbeat is not None:
                held = claims.extend_leases(
                    conn,
                    worker=self.id,
                    step_ids=heartbeat,
                    now=journal.now,
                    lease_seconds=self.opts.lease_seconds,
                )
                lost = set(heartbeat) - held
                if lost:  # rare: say why in the log (a cancel is news, a reclaim is a fault)
                    cancelled = claims.cancelled_among(conn, lost)
            accepted, settled, readied = completion.apply_outcomes(
                conn, journal, [o for o, _ in done], lock_tasks=pg, view=view
            )
            if any(o.transient_failure or o.probe for o, _ in done):
                # A circuit may have moved in this very transaction: plan this cycle's claims on the
                # new state, or the cycle that opens a circuit would still claim (and spend attempts
                # on) its steps.
                view = systems.load_view(conn)
                self._view, self._view_at = view, time.monotonic()
            if reclaim:
                claims.reclaim_expired(conn, journal, skip_locked=pg)
            claim_started = time.perf_counter()
            if view.empty:
                claimed = claims.claim_readied(
                    conn,
                    journal,
                    readied,
                    known,
                    worker=self.id,
                    limit=claim_limit,
                    lease_seconds=self.opts.lease_seconds,
                )
            else:  # limits or circuits apply: the scan below checks every step against them
                claimed = []
                scan = scan or bool(readied)
            remaining = claim_limit - len(claimed)
            scanned_full: bool | None = (
                None  # chained claims may fill the room: nothing learnt, keep looking
            )
            if scan and remaining > 0:
                plan = None if view.empty else systems.plan_claim(conn, journal, view, lock=pg)
                more = claims.claim(
                    conn,
                    journal,
                    worker=self.id,
                    limit=remaining,
                    lease_seconds=self.opts.lease_seconds,
                    skip_locked=pg,
                    namespaces=self.opts.namespaces,
                    task_id=self.opts.task_id,
                    plan=plan,
                )
                scanned_full = len(more) >= remaining
                claimed += more
            for tid in {c.template_id for c in claimed}:
                if not self.resolver.known(tid):
                    self.resolver.add_snapshot(tid, template_definition(conn, tid))
            journal.flush(conn)
        # Committed: only now do these outcomes count (a failed cycle is run again with the same
        # outcomes).
        metrics.observe_cycle(
            done,
            accepted,
            self.resolver.template,
            time.perf_counter() - claim_started if claimed else None,
        )
        for system, src, dst, reason in journal.circuits:  # committed: an operator wants to know
            log.warning(
                "worker %s: circuit of '%s' %s -> %s: %s", self.id, system, src, dst, reason
            )
        return _Cycle(claimed, scanned_full, settled, journal.events, held, cancelled)

    def _known_tasks(self, done: list[tuple[Outcome, ClaimedStep]]) -> dict[int, claims.KnownTask]:
        """What the completed steps' claims tell about their tasks, to claim their children from
        memory."""
        known: dict[int, claims.KnownTask] = {}
        for outcome, c in done:
            if outcome.state != StepState.COMPLETE:
                continue
            k = known.get(c.task_id)
            if k is None:
                k = known[c.task_id] = claims.KnownTask(
                    c.context,
                    c.correlation_id,
                    c.template_id,
                    dict(c.results),
                    c.step_ids,
                    self.resolver.parents_of(c.template_id),
                )
            k.results[c.name] = outcome.results or {}
        return known

    def _idle_check(self) -> tuple[bool, float | None]:
        with self.db.read() as conn:
            active = claims.active_count(
                conn, namespaces=self.opts.namespaces, task_id=self.opts.task_id
            )
            if not active:
                return True, None
            if self._unloadable_steps and active <= len(self._unloadable_steps):
                # all that is left may be steps this worker cannot load: waiting would be forever
                left = claims.active_step_ids(
                    conn,
                    limit=len(self._unloadable_steps) + 1,
                    namespaces=self.opts.namespaces,
                    task_id=self.opts.task_id,
                )
                if set(left) <= self._unloadable_steps:
                    return True, None
            due = claims.next_run_at(
                conn, namespaces=self.opts.namespaces, task_id=self.opts.task_id
            )
        return False, (due - utcnow()).total_seconds() if due else None

    # -- steps -------------------------------------------------------------------------------------
    def _has_task_handler(self, task_id: int) -> bool:
        """Whether a settled task's template names a task handler whose hooks must run."""
        template_id = self._task_templates.pop(task_id, None)
        if template_id is None or not self.resolver.known(template_id):
            # settled by this worker on another's behalf (an expired lease): let the engine look
            return True
        return bool(self.resolver.template(template_id).task_handler_class)

    def _start(self, claimed: ClaimedStep) -> None:
        self._task_templates[claimed.task_id] = claimed.template_id
        task = asyncio.get_running_loop().create_task(self._run_step(claimed, self.threads))
        self._inflight[claimed.step_id] = (task, claimed)

    async def _run_step(self, claimed: ClaimedStep, threads: HandlerThreads) -> None:
        try:
            outcome = await self._attempt(claimed, threads)
        except asyncio.CancelledError:
            self._inflight.pop(claimed.step_id, None)
            raise
        self._inflight.pop(claimed.step_id, None)
        self.steps_run += 1
        outcome.dependent_system = claimed.dependent_system
        outcome.step = claimed.name
        if claimed.probe:
            outcome.probe = True
            if (
                outcome.transient_failure
            ):  # the circuit reopens; this attempt does not count against the step
                outcome.state = StepState.WAITING_RETRY
                outcome.refund_attempt = True
                outcome.retry_delay = 0.0
        if outcome.state == StepState.COMPLETE:
            try:
                names = self.resolver.children_of(claimed.template_id, claimed.name)
            except Exception:
                names = []
                outcome.children = None
            else:
                if all(n in claimed.step_ids for n in names):
                    outcome.children = [claimed.step_ids[n] for n in names]
        self._done.append((outcome, claimed))
        if self._wake is not None:
            self._wake.set()

    async def _attempt(self, claimed: ClaimedStep, threads: HandlerThreads) -> Outcome:
        """Run one attempt; whatever goes wrong, even in the engine's own code, ends as an
        outcome."""
        try:
            template = self.resolver.template(claimed.template_id)
            step = template.step(claimed.name)
            try:
                handler_cls = self.resolver.handler_class(claimed.template_id, claimed.name)
            except TaskerError as exc:
                return self._unloadable(claimed, step.handler_class, exc)
            return await execute(
                claimed,
                template,
                step,
                handler_cls,
                self.resolver.policy(claimed.template_id, claimed.name),
                threads,
                backoff_scale=self.opts.backoff_scale,
                tasks=self.tasks,
            )
        except asyncio.CancelledError:
            raise
        except (
            Exception
        ) as exc:  # a bug of the engine's: the step fails visibly, the worker goes on
            log.exception(
                "worker %s: running step %d (%s) failed in the engine",
                self.id,
                claimed.step_id,
                claimed.name,
            )
            return Outcome(
                step_id=claimed.step_id,
                task_id=claimed.task_id,
                claim_token=claimed.claim_token,
                attempt=claimed.attempt,
                state=StepState.ERROR,
                error=describe_error(exc, retryable=False, system_fault=False),
            )

    def _drop_lost(self, held: set[int], cancelled: set[int]) -> None:
        """Stop running steps whose lease this worker lost (cancelled task, or reclaimed after a
        stall)."""
        for step_id, (task, claimed) in list(self._inflight.items()):
            if step_id not in held:
                if step_id in cancelled:
                    log.info(
                        "worker %s: step %d (%s) of task %d was cancelled; stopping it",
                        self.id,
                        step_id,
                        claimed.name,
                        claimed.task_id,
                    )
                else:
                    log.warning(
                        "worker %s lost step %d (%s) of task %d; stopping it",
                        self.id,
                        step_id,
                        claimed.name,
                        claimed.task_id,
                    )
                task.cancel()
                self._inflight.pop(step_id, None)

    async def _abandon(self, db_thread: ThreadPoolExecutor) -> None:
        """The grace period is over: cancel what still runs and hand those steps back to other
        workers."""
        held = [(c.step_id, c.task_id, c.claim_token) for _, c in self._inflight.values()]
        for task, _ in list(self._inflight.values()):
            task.cancel()
        self._inflight.clear()
        assert self._loop is not None

        def _release() -> int:
            journal = Journal(utcnow(), self.id)
            with self.db.write() as conn:
                released = claims.release(conn, journal, held)
                journal.flush(conn)
            return released

        released = await self._loop.run_in_executor(db_thread, _release)
        self.abandoned += len(held)
        log.info("worker %s released %d unfinished steps after the grace period", self.id, released)

    def _publish(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        for name, payload in events:
            self.bus.publish(name, payload)
