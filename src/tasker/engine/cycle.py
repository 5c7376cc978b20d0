"""The worker's database cycle: one transaction that extends leases (heartbeat), stores the outcomes
finished since the last cycle (settle), reclaims expired leases, and claims new work.

Everything here runs on the worker's one database thread. Under load, outcomes queue while a cycle
runs and are committed together, so the number of transactions per step falls as load rises; a
chain's next step is claimed by the transaction that made it ready, without waiting for a poll.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tasker.domain.control import is_instance
from tasker.domain.hooks import CircuitMoved, CycleReport
from tasker.domain.records import ClaimedStep, Outcome
from tasker.domain.states import StepState, TaskState
from tasker.engine import clock, outcomes
from tasker.engine.hooks import Hooks
from tasker.engine.resolver import Resolver
from tasker.events.bus import EventBus
from tasker.store import claims, compensations, completion, cycle_rows, deadlines, systems
from tasker.store.database import Database
from tasker.store.journal import Journal
from tasker.store.tasks import template_definition

log = logging.getLogger("tasker.worker")

Done = list[tuple[Outcome, ClaimedStep]]


def utcnow() -> datetime:
    return clock.now()


@dataclass(slots=True)
class CyclePlan:
    """What one cycle is to do."""

    #: Outcomes to store, each with the claim it ends.
    done: Done
    #: At most this many steps to claim (0: none).
    claim_limit: int = 0
    #: Scan the ready queue, rather than only claim the children the stored outcomes made ready.
    scan: bool = False
    #: The running steps whose leases to extend (None: no heartbeat this cycle).
    heartbeat: list[int] | None = None
    #: Reclaim expired leases of other workers.
    reclaim: bool = False


@dataclass(slots=True)
class CycleResult:
    claimed: list[ClaimedStep] = field(default_factory=list)
    #: Whether a scan filled the room it had (more may wait), or None when no scan ran this cycle.
    scanned_full: bool | None = None
    settled: list[tuple[int, str]] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: The leases the heartbeat still holds (None: no heartbeat, or the cycle was stored piecemeal).
    held: set[int] | None = None
    #: Steps whose lease this worker lost and that are `cancelled` now (an operator's cancel).
    cancelled: set[int] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Scope:
    """Which steps a worker may claim."""

    namespaces: Sequence[str] | None
    #: A worker for one task (`Tasker.run()`): that task and the child tasks its steps create
    #: (grown as they are); None: any task.
    task_ids: list[int] | None
    lease_seconds: float


class Cycles:
    """Runs a worker's cycles against the store, one call at a time: on the worker's database
    thread, or on its loop for the idle claim of a worker that owns its loop."""

    def __init__(
        self,
        db: Database,
        resolver: Resolver,
        worker_id: str,
        scope: Scope,
        hooks: Hooks,
        bus: EventBus,
        views: systems.ViewCache | None = None,
    ) -> None:
        self.db = db
        self.bus = bus
        self.resolver = resolver
        self.worker_id = worker_id
        self.scope = scope
        self.hooks = hooks
        self._views = views or systems.ViewCache()

    def run(self, plan: CyclePlan, *, direct: bool = True) -> CycleResult:
        """One transaction: extend leases, store outcomes, reclaim expired leases, claim new
        work. `direct=False` keeps to the general path (storing outcomes one by one after a
        failed cycle must not depend on the path that may have failed). Then, for the tasks it
        moved to `compensating`, a transaction that writes their undo rows."""
        result = self._run(plan, direct=direct)
        compensating = [t for t, status in result.settled if status == TaskState.COMPENSATING]
        if compensating:
            self.plan_undos(compensating)
        return result

    def plan_undos(self, task_ids: Sequence[int] | None = None) -> int:
        """Write the undo rows of tasks that entered `compensating` (`task_ids`), or (None) of any
        left without them: a worker that died between the two transactions (`Worker`'s sweep).
        A failure is logged and left to the sweep. Returns how many rows were written."""
        try:
            with self.db.write() as conn:
                journal = Journal(utcnow(), self.worker_id, collect=False)
                ids = (
                    list(task_ids)
                    if task_ids is not None
                    else list(conn.execute(compensations.UNPLANNED).scalars())
                )
                written = compensations.plan_undos(conn, journal, ids, lock=self.db.is_postgres)
                journal.flush(conn)
            return written
        except Exception as exc:
            if outcomes.is_outage(exc):
                raise
            log.exception(
                "worker %s: writing the undos of tasks %s failed", self.worker_id, task_ids
            )
            return 0

    def sweep_undos(self) -> None:
        """`plan_undos` for every task left without its undo rows (off the worker's loop)."""
        try:
            self.plan_undos()
        except Exception:  # an outage: the next sweep tries again
            log.warning("worker %s: the sweep for unwritten undos failed", self.worker_id)

    def _run(self, plan: CyclePlan, *, direct: bool = True) -> CycleResult:
        pg = self.db.is_postgres
        scope = self.scope
        done = plan.done
        known = self._known_tasks(done)
        if direct and self._direct(plan) and self._views.last().empty:
            # The driver-level cycle checks in its own transaction that no limit, circuit or
            # failure is on record (the cached view, however old, only chose to try it) and, when
            # a reclaim is due, whether a lease has run out: no read before it.
            result = self._run_direct(plan, known)
            if result is not None:
                return result
            self._views.invalidate()  # shut: the store has what the view did not show
        view = self._views.fresh()
        with self.db.cycle() as conn:
            # Stamped once the write lock is held (SQLite: at BEGIN IMMEDIATE) so that transition
            # times follow commit order, even when this cycle waited for an operator's transaction.
            journal = Journal(
                utcnow(), self.worker_id, collect=self.bus.has_listeners, clock=utcnow
            )
            if view is None:
                view = self._views.load(conn)
            held = None
            cancelled: set[int] = set()
            if plan.heartbeat is not None:
                held = claims.extend_leases(
                    conn,
                    worker=self.worker_id,
                    step_ids=plan.heartbeat,
                    now=journal.now,
                    lease_seconds=scope.lease_seconds,
                )
                lost = set(plan.heartbeat) - held
                if lost:  # rare: say why in the log (a cancel is news, a reclaim is a fault)
                    cancelled = claims.cancelled_among(conn, lost)
            accepted, settled, readied = completion.apply_outcomes(
                conn, journal, [o for o, _ in done], lock_tasks=pg, view=view
            )
            for o, c in done:
                if o.collects and o.results is not None and c.task_id in known:
                    known[c.task_id].results[c.name] = o.results  # gathered in the store
            if any(o.transient_failure or o.probe for o, _ in done):
                # A circuit may have moved in this very transaction: plan this cycle's claims on the
                # new state, or the cycle that opens a circuit would still claim (and spend attempts
                # on) its steps.
                view = self._views.load(conn)
            if plan.reclaim:
                claims.reclaim_expired(conn, journal, skip_locked=pg)
            claim_started = time.perf_counter()
            claimed, scanned_full = self._claim(conn, journal, plan, view, readied, known)
            claims.read_items(conn, claimed)
            self._learn_templates(conn, claimed)
            journal.flush(conn)
        # Committed: only now do these outcomes count (a failed cycle is run again with the same
        # outcomes).
        if journal.children and self.scope.task_ids is not None:
            self.scope.task_ids.extend(journal.children)  # a run of one task runs its children
        if self.hooks.wants_cycles:
            self.hooks.cycle(
                CycleReport(
                    self.worker_id,
                    done,
                    accepted,
                    claimed,
                    time.perf_counter() - claim_started if claimed else None,
                    self._template_key,
                    journal.deferred,
                    journal.key_waits,
                )
            )
        for system, src, dst, reason in journal.circuits:  # committed: an operator wants to know
            log.warning(
                "worker %s: circuit of '%s' %s -> %s: %s", self.worker_id, system, src, dst, reason
            )
            self.hooks.circuit_change(self.worker_id, CircuitMoved(system, src, dst, reason))
        return CycleResult(claimed, scanned_full, settled, journal.events, held, cancelled)

    def _direct(self, plan: CyclePlan) -> bool:
        """Whether the driver-level cycle can run this one: no lease to extend, and outcomes that
        move no circuit (the caller checks that no limit or circuit is in play and that no lease
        waits to be reclaimed)."""
        if self.db.memory:
            return False  # the shared in-memory connection: keep to the general path
        return plan.heartbeat is None and all(
            cycle_rows.eligible(outcome) for outcome, _ in plan.done
        )

    def _run_direct(
        self, plan: CyclePlan, known: dict[int, claims.KnownTask]
    ) -> CycleResult | None:
        """The common cycle with fixed statements on the driver: two round trips on PostgreSQL
        (`tasker.store.pg_cycle`), no SQLAlchemy on SQLite (`tasker.store.sqlite_cycle`).

        None when its gate was shut (it did nothing: the general path runs the plan). A lease
        found expired is reclaimed at once by a general cycle of its own."""
        if self.db.is_postgres:
            from tasker.store.pg_cycle import run_cycle
        else:
            from tasker.store.sqlite_cycle import run_cycle

        scope = self.scope
        journal = Journal(utcnow(), self.worker_id, collect=self.bus.has_listeners)
        started = time.perf_counter()
        with self.db.direct() as conn:
            cycle = run_cycle(
                conn,
                journal,
                cycle_rows.CycleInput(
                    [o for o, _ in plan.done],
                    known,
                    worker=self.worker_id,
                    room=plan.claim_limit,
                    scan=plan.scan,
                    namespaces=scope.namespaces,
                    task_ids=scope.task_ids,
                    lease_seconds=scope.lease_seconds,
                    check_expired=plan.reclaim,
                ),
            )
        if cycle.shut:
            return None
        if any(not self.resolver.known(c.template_id) for c in cycle.claimed):
            with self.db.read() as reader:  # the claims are committed: any connection sees them
                self._learn_templates(reader, cycle.claimed)
        if self.hooks.wants_cycles:
            self.hooks.cycle(
                CycleReport(
                    self.worker_id,
                    plan.done,
                    cycle.accepted,
                    cycle.claimed,
                    time.perf_counter() - started if cycle.claimed else None,
                    self._template_key,
                )
            )
        result = CycleResult(
            cycle.claimed, cycle.scanned_full, cycle.settled, journal.events, None, set()
        )
        if cycle.expired:  # rare: a worker died holding steps
            reclaimed = self.run(CyclePlan([], reclaim=True), direct=False)
            result.settled += reclaimed.settled
            result.events += reclaimed.events
        return result

    def _claim(
        self,
        conn: Any,
        journal: Journal,
        plan: CyclePlan,
        view: systems.SystemsView,
        readied: list[tuple[int, int, str]],
        known: dict[int, claims.KnownTask],
    ) -> tuple[list[ClaimedStep], bool | None]:
        """Claim: the children the stored outcomes made ready, from memory, then a scan of the
        queue when planned. Returns the claims and whether a scan filled its room."""
        pg = self.db.is_postgres
        scope = self.scope
        scan = plan.scan
        if view.empty:
            claimed = claims.claim_readied(
                conn,
                journal,
                readied,
                known,
                worker=self.worker_id,
                limit=plan.claim_limit,
                lease_seconds=scope.lease_seconds,
                related=self.resolver.related_steps,
            )
        else:  # limits or circuits apply: the scan below checks every step against them
            claimed = []
            scan = scan or bool(readied)
        remaining = plan.claim_limit - len(claimed)
        if not scan or remaining <= 0:
            return claimed, None  # chained claims may fill the room: nothing learnt, keep looking
        claim_plan = None if view.empty else systems.plan_claim(conn, journal, view, lock=pg)
        more = claims.claim(
            conn,
            journal,
            worker=self.worker_id,
            limit=remaining,
            lease_seconds=scope.lease_seconds,
            skip_locked=pg,
            namespaces=scope.namespaces,
            task_ids=scope.task_ids,
            plan=claim_plan,
            related=self.resolver.related_steps,
        )
        return claimed + more, len(more) >= remaining

    def _template_key(self, template_id: int) -> str:
        return self.resolver.template(template_id).key

    def _learn_templates(self, conn: Any, claimed: Sequence[ClaimedStep]) -> None:
        """Load the snapshots of claimed steps' templates that this process has not loaded (a task
        created elsewhere, from a version this worker was not started with)."""
        for tid in {c.template_id for c in claimed}:
            if not self.resolver.known(tid):
                self.resolver.add_snapshot(tid, template_definition(conn, tid))

    def _known_tasks(self, done: Done) -> dict[int, claims.KnownTask]:
        """What the completed steps' claims tell about their tasks, to claim their children from
        memory."""
        known: dict[int, claims.KnownTask] = {}
        merged: set[int] = set()
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
                merged.add(id(c.results))
            else:
                # What each claim of the task read, together: claims read at different times, and
                # of a wide template each read only its own step's ancestors and descendants.
                if id(c.results) not in merged:
                    merged.add(id(c.results))
                    k.results.update(c.results)
                if c.step_ids is not k.step_ids:
                    k.step_ids = {**k.step_ids, **c.step_ids}
            if not is_instance(c.name):  # an instance's result is not its siblings'
                k.results[c.name] = outcome.results or {}
        return known

    # -- when a cycle fails ------------------------------------------------------------------------
    def store_one(self, item: tuple[Outcome, ClaimedStep]) -> CycleResult:
        """Store one outcome in a cycle of its own; if the store refuses it, store the refusal
        instead. Only an outage is raised."""
        try:
            return self.run(CyclePlan([item]), direct=False)
        except Exception as exc:
            if outcomes.is_outage(exc):
                raise
            refusal = exc
        outcome, claimed = item
        stand_in = outcomes.refused(outcome, refusal)
        log.error(
            "worker %s: step %d (%s) of task %d: %s",
            self.worker_id,
            outcome.step_id,
            claimed.name,
            outcome.task_id,
            stand_in.error["message"] if stand_in.error else "",
        )
        try:
            return self.run(CyclePlan([(stand_in, claimed)]), direct=False)
        except Exception as exc:
            if outcomes.is_outage(exc):
                raise
            log.exception(
                "worker %s: could not store the failure of step %d either; its lease will expire",
                self.worker_id,
                outcome.step_id,
            )
        return CycleResult()

    # -- outside cycles ----------------------------------------------------------------------------
    def idle_check(self, unloadable_steps: set[int]) -> tuple[bool, float | None]:
        """Whether nothing is left for this worker to run, and else how long until the next step
        is due (None: unknown, or due now)."""
        scope = self.scope
        with self.db.read() as conn:
            active = claims.active_count(conn, namespaces=scope.namespaces, task_ids=scope.task_ids)
            if not active:
                # What is left waits for a signal (or for nothing this worker runs). A worker of
                # one task still waits for its deadline, and so does any under a test's clock.
                if scope.task_ids is None and clock.installed() is None:
                    return True, None
                deadline = deadlines.next_deadline(conn, scope.task_ids)
                if deadline is None:
                    return True, None
                return False, (deadline - utcnow()).total_seconds()
            if unloadable_steps and active <= len(unloadable_steps):
                # all that is left may be steps this worker cannot load: waiting would be forever
                left = claims.active_step_ids(
                    conn,
                    limit=len(unloadable_steps) + 1,
                    namespaces=scope.namespaces,
                    task_ids=scope.task_ids,
                )
                if set(left) <= unloadable_steps:
                    return True, None
            due = claims.next_run_at(conn, namespaces=scope.namespaces, task_ids=scope.task_ids)
            deadline = deadlines.next_deadline(conn, scope.task_ids)
        if deadline is not None and (due is None or deadline < due):
            due = deadline  # a task's deadline comes first: it may end the task
        return False, (due - utcnow()).total_seconds() if due else None

    def release(self, held: list[tuple[int, int, int]]) -> int:
        """Hand steps back unspent (the grace period is over); returns how many were released."""
        journal = Journal(utcnow(), self.worker_id)
        with self.db.write() as conn:
            released = claims.release(conn, journal, held)
            journal.flush(conn)
        return released
