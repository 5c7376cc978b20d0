"""What the driver-level cycles (`pg_cycle`, `sqlite_cycle`) share: which cycles they may run, and
how the rows their statements return become transitions, events and claimed steps.

Both run the common cycle (no limit or circuit in play, no lease to extend or reclaim, no outcome
that moves a breaker) with fixed statements on the driver itself; each returns the same rows, so
the journal records the same transitions in the same order as the general path through
`completion`, `readiness` and `claims` (tests/integration/test_stored_rows.py compares them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tasker.domain.compensation import is_undo
from tasker.domain.records import ClaimedStep, Outcome
from tasker.domain.states import StepState, TaskState
from tasker.store.claims import Claim, KnownTask, journal_claims
from tasker.store.completion import outcome_event
from tasker.store.journal import Journal
from tasker.store.schema import RUNNING
from tasker.store.systems import ANY_PRIORITIZED_SQL, RESTRICTING_SQL

S, T = StepState, TaskState

#: A row the first statement returns: (kind, id, task_id, name, attempts, retry_limit,
#: claim_token, idempotency_key, dependent_system, state). Kinds: "f" an outcome stored (id and the
#: step's new state), "r" a child released (its row as now: `ready`, claimed `in_progress`, or still
#: waiting), "t" a step claimed from the queue (state: the one it was claimed from), "s" a task
#: started (id).
Row = tuple[str, int, Any, Any, Any, Any, Any, Any, Any, Any]


def eligible(outcome: Outcome) -> bool:
    """Whether a driver-level cycle can store the outcome: no circuit, hold or refund is
    involved, and no child of it waits for a control-flow decision."""
    if outcome.exhausted or outcome.probe or outcome.refund_attempt or outcome.transient_failure:
        return False
    if outcome.wait_note is not None or outcome.state == S.SKIPPED:
        return False  # a wait to store, or a skip to release: the general path's
    if outcome.gates_children or outcome.collects or is_undo(outcome.step):
        # a child's decision, a fan-out's results, an undo (it settles a task in compensation)
        # are the general path's
        return False
    return outcome.state != S.COMPLETE or outcome.children is not None


@dataclass(frozen=True)
class CycleInput:
    """What one driver-level cycle is to do: store `outcomes`, then claim into `room` (the
    children the outcomes make ready first, then, with `scan`, due steps in scope)."""

    outcomes: Sequence[Outcome]
    #: What the worker knows of the outcomes' tasks (to claim their children without a read).
    known: dict[int, KnownTask]
    worker: str
    room: int
    scan: bool
    namespaces: Sequence[str] | None
    #: Only steps of these tasks (a task run by `Tasker.run()` and its child tasks), or any.
    task_ids: Sequence[int] | None
    lease_seconds: float
    #: Also report whether some lease has run out (a reclaim is due; the general path does it).
    check_expired: bool = False

    def claim_split(self, children: int) -> tuple[bool, int]:
        """(claim the children that become ready, how many due steps a scan may claim): the
        children are claimed in the update that readies them when all `children` fit the room;
        the scan takes the room that is left."""
        take = 0 < children <= self.room
        scan_limit = max(0, self.room - (children if take else 0)) if self.scan else 0
        return take, scan_limit


@dataclass
class Cycle:
    """What one driver-level cycle did."""

    accepted: list[Outcome] = field(default_factory=list)
    settled: list[tuple[int, str]] = field(default_factory=list)
    claimed: list[ClaimedStep] = field(default_factory=list)
    #: Whether the queue scan filled its room (None: no scan).
    scanned_full: bool | None = None
    #: The gate was shut: a limit, a circuit or a failure is on record (`GATE_SQL`), so the cycle
    #: did nothing and the general path must run it.
    shut: bool = False
    #: A lease has run out (asked with `check_expired`): the general path must reclaim it.
    expired: bool = False


#: When the driver-level cycle may run, checked in its own transaction: the systems view of
#: `tasker.store.systems` is empty (no circuit away from closed, no failure on record, no limit,
#: no fair share, no claimable step with a priority), so nothing it stores or claims would need a
#: circuit, a limit or the prioritized queue. The worker's cached view only
#: says which path to try; this says whether the try may act.
GATE_SQL = f"""
    NOT EXISTS (SELECT 1 FROM tasker_dependent_systems WHERE {RESTRICTING_SQL})
    AND NOT EXISTS (SELECT 1 FROM tasker_namespace_limits)
    AND NOT EXISTS (SELECT 1 FROM tasker_key_limits)
    AND NOT {ANY_PRIORITIZED_SQL}"""
#: Whether some lease has run out (one probe of the partial index of running steps, whose
#: predicate is repeated as written: SQLite matches it by its text).
EXPIRED_SQL = f"""
    EXISTS (SELECT 1 FROM tasker_steps
             WHERE {RUNNING} AND lease_expires_at < {{now}})"""


@dataclass
class Recorded:
    #: Tasks with an outcome that may end them (not a retry).
    check: set[int] = field(default_factory=set)
    #: Tasks with a child made ready, or a step claimed, here: they go on, no need to settle them
    #: (counting the steps of a task with a large fan-out is what a settle costs most).
    readied: set[int] = field(default_factory=set)
    claims: list[Claim] = field(default_factory=list)

    @property
    def to_settle(self) -> list[int]:
        return sorted(self.check - self.readied)


def record_rows(
    journal: Journal, rows: Iterable[Row], by_id: dict[int, Outcome], out: Cycle
) -> Recorded:
    """Journal what the first statement did, in the order the general path journals it."""
    seen = Recorded()
    for kind, step_id, row_task, name, attempts, retry_limit, token, key, system, state in rows:
        if kind == "g":
            out.shut = True
        elif kind == "x":
            out.expired = True
        elif kind == "f":
            o = by_id[step_id]
            out.accepted.append(o)
            journal.step(
                o.step_id, o.task_id, S.IN_PROGRESS, o.state, o.attempt, o.error, o.duration_ms
            )
            for event_name, payload in o.events:
                journal.custom(event_name, o.task_id, o.step_id, payload)
            if journal.collect:
                outcome_event(journal, o, o.state)
            if o.state != S.WAITING_RETRY:
                seen.check.add(o.task_id)
        elif kind == "r":
            if state not in (S.READY, S.IN_PROGRESS):
                continue  # a child still waiting for other parents (or cancelled meanwhile)
            seen.readied.add(row_task)
            journal.step(step_id, row_task, S.PENDING, S.READY, 0)
            if journal.collect:
                journal.event("step.ready", {"task_id": row_task, "step_id": step_id, "step": name})
            if state == S.IN_PROGRESS:
                seen.claims.append(
                    Claim(
                        step_id, row_task, name, attempts, retry_limit, token, key, system, S.READY
                    )
                )
        elif kind == "t":
            seen.readied.add(row_task)
            seen.claims.append(
                Claim(step_id, row_task, name, attempts, retry_limit, token, key, system, S(state))
            )
        else:  # "s": a task started by this claim
            journal.task(step_id, T.PENDING, T.IN_PROGRESS)
            journal.event("task.started", {"task_id": step_id})
    journal_claims(journal, seen.claims)
    return seen
