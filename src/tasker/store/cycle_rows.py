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

from tasker.domain.events import TASK_EVENT_FOR_STATE
from tasker.domain.records import ClaimedStep, Outcome
from tasker.domain.states import SATISFIED_STEP_STATES, StepState, TaskState
from tasker.store.claims import KnownTask
from tasker.store.completion import outcome_event
from tasker.store.journal import Journal

S, T = StepState, TaskState
SATISFIED = frozenset(s.value for s in SATISFIED_STEP_STATES)

#: A row the first statement returns: (kind, id, task_id, name, attempts, retry_limit,
#: claim_token, idempotency_key, dependent_system, state). Kinds: "f" an outcome stored (id and the
#: step's new state), "r" a child released (its row as now: `ready`, claimed `in_progress`, or still
#: waiting), "t" a step claimed from the queue (state: the one it was claimed from), "s" a task
#: started (id).
Row = tuple[str, int, Any, Any, Any, Any, Any, Any, Any, Any]


def eligible(outcome: Outcome) -> bool:
    """Whether a driver-level cycle can store the outcome: no circuit, hold or refund is
    involved."""
    if outcome.exhausted or outcome.probe or outcome.refund_attempt or outcome.transient_failure:
        return False
    return outcome.state != S.COMPLETE or outcome.children is not None


@dataclass
class Cycle:
    """What one driver-level cycle did."""

    accepted: list[Outcome] = field(default_factory=list)
    settled: list[tuple[int, str]] = field(default_factory=list)
    claimed: list[ClaimedStep] = field(default_factory=list)
    #: Whether the queue scan filled its room (None: no scan).
    scanned_full: bool | None = None


@dataclass
class Claim:
    """A claimed row, before its task's context and results are attached."""

    step_id: int
    task_id: int
    name: str
    attempt: int
    retry_limit: int
    claim_token: int
    idempotency_key: str
    dependent_system: str
    from_state: StepState


@dataclass
class Recorded:
    #: Tasks with an outcome that may end them (not a retry).
    check: set[int] = field(default_factory=set)
    #: Tasks with a child made ready here: they go on, no need to settle them.
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
        if kind == "f":
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
            seen.claims.append(
                Claim(step_id, row_task, name, attempts, retry_limit, token, key, system, S(state))
            )
        else:  # "s": a task started by this claim
            journal.task(step_id, T.PENDING, T.IN_PROGRESS)
            journal.event("task.started", {"task_id": step_id})
    for c in seen.claims:
        journal.step(c.step_id, c.task_id, c.from_state, S.IN_PROGRESS, c.attempt)
        if journal.collect:
            journal.event(
                "step.started",
                {"task_id": c.task_id, "step_id": c.step_id, "step": c.name, "attempt": c.attempt},
            )
    return seen


def fully_known(known: dict[int, KnownTask], c: Claim) -> bool:
    """Whether the worker knows everything the claimed step's handler needs (the results of all its
    parents), so that its task need not be read."""
    k = known.get(c.task_id)
    return k is not None and all(p in k.results for p in k.parents_of.get(c.name, ()))


def settled_event(journal: Journal, task_id: int, src: str, dst: str) -> None:
    name = TASK_EVENT_FOR_STATE.get(dst)
    if name:
        journal.event(name, {"task_id": task_id, "from_state": src, "to_state": dst})


def claimed_steps(
    claims: Sequence[Claim],
    known: dict[int, KnownTask],
    task_rows: Iterable[tuple[int, Any, str, int]],
    step_rows: Iterable[tuple[int, int, str, str, Any]],
) -> list[ClaimedStep]:
    """The claims with their tasks' context and results: from `known`, or from the rows read for
    the tasks it does not cover ((id, context, correlation_id, template_id) and (task_id, id, name,
    state, results), JSON decoded)."""
    results: dict[int, dict[str, dict[str, Any]]] = {}
    step_ids: dict[int, dict[str, int]] = {}
    for t_id, s_id, name, state, step_results in step_rows:
        step_ids.setdefault(t_id, {})[name] = s_id
        if state in SATISFIED:
            results.setdefault(t_id, {})[name] = step_results or {}
    known = dict(known)
    for t_id, context, correlation_id, template_id in task_rows:
        known[t_id] = KnownTask(
            context,
            correlation_id,
            template_id,
            results.get(t_id, {}),
            step_ids.get(t_id, {}),
            {},
        )
    out = [
        ClaimedStep(
            step_id=c.step_id,
            task_id=c.task_id,
            name=c.name,
            template_id=known[c.task_id].template_id,
            attempt=c.attempt,
            retry_limit=c.retry_limit,
            claim_token=c.claim_token,
            idempotency_key=c.idempotency_key,
            dependent_system=c.dependent_system,
            context=known[c.task_id].context,
            correlation_id=known[c.task_id].correlation_id,
            results=known[c.task_id].results,
            from_state=c.from_state,
            step_ids=known[c.task_id].step_ids,
        )
        for c in claims
    ]
    out.sort(key=lambda c: (c.task_id, c.step_id))
    return out
