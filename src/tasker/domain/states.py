"""The task and step state machines: states, the legal transitions, and the checks.

A step is created `pending` (or `ready` when it has no parents), is claimed `in_progress`, and ends
`complete`, `error` (retried by an operator back to `ready`), `cancelled`, `resolved_manually` or
`skipped`; a failed attempt with tries left waits in `waiting_retry`. A task goes `pending`,
`in_progress`, then settles by its steps (`final_task_state`).

Kept free of I/O so that the rules can be tested exhaustively. The store checks every transition it
records against these tables (`tasker.store.journal.Journal` calls `check_step_transition` and
`check_task_transition`, a set lookup) and an illegal one raises `InvalidTransitionError`, which
rolls its transaction back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from tasker.domain.errors import InvalidTransitionError


class StepState(StrEnum):
    PENDING = "pending"
    READY = "ready"
    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"
    WAITING_RETRY = "waiting_retry"
    ERROR = "error"
    CANCELLED = "cancelled"
    RESOLVED_MANUALLY = "resolved_manually"
    SKIPPED = "skipped"


class TaskState(StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"
    ERROR = "error"
    CANCELLED = "cancelled"
    RESOLVED_MANUALLY = "resolved_manually"
    #: Undoing what its completed steps did (`tasker.domain.compensation`), after a failure or an
    #: operator's cancel with compensation; then `compensated`, or `error` if an undo failed.
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"


S = StepState
T = TaskState

STEP_TRANSITIONS: dict[StepState, frozenset[StepState]] = {
    # pending -> skipped or error is a control-flow decision (`tasker.domain.control`): a condition
    # that is false, a skipped parent, or a condition that fails to evaluate.
    S.PENDING: frozenset({S.READY, S.CANCELLED, S.RESOLVED_MANUALLY, S.SKIPPED, S.ERROR}),
    S.READY: frozenset({S.IN_PROGRESS, S.CANCELLED, S.RESOLVED_MANUALLY, S.SKIPPED}),
    # in_progress -> ready is a graceful release (a stopping worker hands the step back unspent);
    # -> skipped a `wait_for` step whose signal did not come in time (`on_timeout: skip`).
    S.IN_PROGRESS: frozenset(
        {S.COMPLETE, S.WAITING_RETRY, S.ERROR, S.CANCELLED, S.READY, S.SKIPPED}
    ),
    S.WAITING_RETRY: frozenset({S.IN_PROGRESS, S.CANCELLED, S.RESOLVED_MANUALLY, S.ERROR}),
    S.ERROR: frozenset({S.READY, S.RESOLVED_MANUALLY, S.CANCELLED}),
    S.COMPLETE: frozenset(),
    S.CANCELLED: frozenset(),
    S.RESOLVED_MANUALLY: frozenset(),
    S.SKIPPED: frozenset(),
}

TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    # pending -> compensating: a task retried by an operator (error -> pending) failed again.
    T.PENDING: frozenset(
        {T.IN_PROGRESS, T.COMPLETE, T.ERROR, T.CANCELLED, T.RESOLVED_MANUALLY, T.COMPENSATING}
    ),
    # in_progress -> compensating: the task failed with steps to undo, or an operator cancelled it
    # with compensation.
    T.IN_PROGRESS: frozenset(
        {T.COMPLETE, T.ERROR, T.CANCELLED, T.RESOLVED_MANUALLY, T.COMPENSATING}
    ),
    # error -> pending is an operator's retry or a manual resolution that unblocks more steps;
    # error -> compensating an operator's compensate, or the retry of a failed undo; error ->
    # compensated the resolution by hand of the last failed undo.
    T.ERROR: frozenset(
        {T.PENDING, T.RESOLVED_MANUALLY, T.CANCELLED, T.COMPENSATING, T.COMPENSATED}
    ),
    T.COMPLETE: frozenset(),
    T.CANCELLED: frozenset(),
    T.RESOLVED_MANUALLY: frozenset(),
    # compensating -> error: an undo failed for good (retried or resolved by an operator, the
    # task compensates again); -> cancelled: an operator stopped the undo.
    T.COMPENSATING: frozenset({T.COMPENSATED, T.ERROR, T.CANCELLED}),
    T.COMPENSATED: frozenset(),
}

#: Steps a worker may pick up (at or after their run_at).
CLAIMABLE_STEP_STATES = frozenset({S.READY, S.WAITING_RETRY})
#: Steps that still hold the task open: while any exists the task cannot be finalized.
ACTIVE_STEP_STATES = frozenset({S.READY, S.IN_PROGRESS, S.WAITING_RETRY})
#: Steps that are queued, running or stuck in error: what the systems report and the overview
#: count.
REPORTED_STEP_STATES = ACTIVE_STEP_STATES | {S.ERROR}
#: Steps whose dependents may run.
SATISFIED_STEP_STATES = frozenset({S.COMPLETE, S.RESOLVED_MANUALLY, S.SKIPPED})
#: Steps whose results their dependents see (`ctx.results`, a condition's `results`): a skipped
#: step has none, and is absent rather than empty so that a handler or `has()` can tell.
RESULT_STEP_STATES = frozenset({S.COMPLETE, S.RESOLVED_MANUALLY})
TERMINAL_STEP_STATES = frozenset({S.COMPLETE, S.CANCELLED, S.RESOLVED_MANUALLY, S.SKIPPED})
TERMINAL_TASK_STATES = frozenset({T.COMPLETE, T.CANCELLED, T.RESOLVED_MANUALLY, T.COMPENSATED})
FINISHED_TASK_STATES = TERMINAL_TASK_STATES | {T.ERROR}

#: The states a step is created in (its first transition row has no from-state): `ready` without
#: parents, else `pending`.
INITIAL_STEP_STATES = frozenset({S.PENDING, S.READY})
INITIAL_TASK_STATES = frozenset({T.PENDING})
#: A cancellation moves a task's unfinished steps from several states in one statement and records
#: no from-state; it takes only steps whose state may go to `cancelled`.
UNRECORDED_SOURCE_STEP_STATES = INITIAL_STEP_STATES | {S.CANCELLED}

# Every legal (from, to) pair, from-state None for a row that records none. Enum members hash and
# compare like their values, so a pair of plain strings read from the database is found too.
_STEP_MOVES = frozenset(
    [(src, dst) for src, dsts in STEP_TRANSITIONS.items() for dst in dsts]
    + [(None, dst) for dst in UNRECORDED_SOURCE_STEP_STATES]
)
_TASK_MOVES = frozenset(
    [(src, dst) for src, dsts in TASK_TRANSITIONS.items() for dst in dsts]
    + [(None, dst) for dst in INITIAL_TASK_STATES]
)


def can_transition_step(src: StepState, dst: StepState) -> bool:
    return dst in STEP_TRANSITIONS[src]


def check_step_transition(src: StepState | str | None, dst: StepState | str) -> None:
    """Raise `InvalidTransitionError` unless a step may go from `src` to `dst` (`ValueError` for a
    name that is no state). `src` None is a row without a from-state: a step's creation, or a
    cancellation (`UNRECORDED_SOURCE_STEP_STATES`)."""
    if (src, dst) in _STEP_MOVES:
        return
    d = StepState(dst)
    s = "(none)" if src is None else StepState(src)
    raise InvalidTransitionError(f"step cannot go from '{s}' to '{d}'")


def can_transition_task(src: TaskState, dst: TaskState) -> bool:
    return dst in TASK_TRANSITIONS[src]


def check_task_transition(src: TaskState | str | None, dst: TaskState | str) -> None:
    """Raise `InvalidTransitionError` unless a task may go from `src` to `dst` (`ValueError` for a
    name that is no state). `src` None is the task's creation (`INITIAL_TASK_STATES`)."""
    if (src, dst) in _TASK_MOVES:
        return
    d = TaskState(dst)
    s = "(none)" if src is None else TaskState(src)
    raise InvalidTransitionError(f"task cannot go from '{s}' to '{d}'")


def final_task_state(counts: dict[str, int]) -> TaskState | None:
    """The state a task settles in given how many of its steps are in each state, or None while it
    runs.

    A task is finished once no step is active: nothing can make a pending step ready any more. Then
    an `error` step makes the task `error`; a step resolved by an operator makes it
    `resolved_manually`.
    """
    if any(counts.get(s, 0) for s in ACTIVE_STEP_STATES):
        return None
    if counts.get(S.ERROR, 0):
        return T.ERROR
    if counts.get(S.CANCELLED, 0):
        return T.CANCELLED
    if counts.get(S.PENDING, 0):
        # Only reachable when a parent was cancelled or skipped away; nothing can run, so it failed.
        return T.ERROR
    if counts.get(S.RESOLVED_MANUALLY, 0):
        return T.RESOLVED_MANUALLY
    return T.COMPLETE


@dataclass
class TaskCounts:
    """A task's step rows by state as a settle counts them: its own steps (`steps`), the rows that
    undo them (`undos`: `undo:<step>`, `tasker.domain.compensation`), and how many of its
    completed steps are to be undone should it fail (`undoable`)."""

    steps: dict[str, int] = field(default_factory=dict)
    undos: dict[str, int] = field(default_factory=dict)
    undoable: int = 0
    #: Failed steps whose failure leaves the task in `error` rather than compensating it: the step
    #: says `on_failure: stop`, or its failure was retryable and ran out of attempts.
    stopping: int = 0

    def add(
        self,
        state: str,
        n: int,
        *,
        is_undo: bool = False,
        undo: bool = False,
        stops: bool = False,
    ) -> None:
        """Count `n` rows in `state`: undo rows (`is_undo`), or steps (`undo`: to be undone;
        `stops`: their failure holds the task in `error` instead of compensating it)."""
        into = self.undos if is_undo else self.steps
        into[state] = into.get(state, 0) + n
        if undo and not is_undo and state == S.COMPLETE:
            self.undoable += n
        if stops and not is_undo and state == S.ERROR:
            self.stopping += n


def compensation_outcome(undos: dict[str, int]) -> TaskState | None:
    """Where a task's compensation leaves it, given how many of its undo rows are in each state:
    None while one is ready, running or waiting to retry; `error` when one failed for good (or waits
    behind one that did); `cancelled` when an operator stopped the undo; `compensated` when every
    undo completed or was resolved by hand."""
    if any(undos.get(s, 0) for s in ACTIVE_STEP_STATES):
        return None
    if undos.get(S.ERROR, 0):
        return T.ERROR
    if undos.get(S.CANCELLED, 0):
        return T.CANCELLED
    if undos.get(S.PENDING, 0):
        return T.ERROR  # an undo whose wait cannot end
    return T.COMPENSATED


def settle_move(status: TaskState | str, counts: dict[str, int] | TaskCounts) -> TaskState | None:
    """Where a task in `status` goes given how many of its steps are in each state (a plain mapping
    counts steps only), or None when it stays: to `final_task_state` once no step is active (a
    failure with steps to undo to `compensating` instead of `error`, unless a failed step holds it:
    `on_failure: stop`, or a retryable failure that ran out of attempts); an `error` task with work
    again (an operator's retry or resolution) back to `pending`, or back to `compensating` when the
    work is an undo; a task in compensation by `compensation_outcome`; a finished task nowhere.
    Raises `InvalidTransitionError` for a move the transition table forbids."""
    status = TaskState(status)
    tally = counts if isinstance(counts, TaskCounts) else TaskCounts(dict(counts))
    if tally.undos or status == T.COMPENSATING:
        return _compensation_move(status, tally.undos)
    final = final_task_state(tally.steps)
    if final == T.ERROR and tally.undoable and not tally.stopping:
        final = T.COMPENSATING
    if final is None:
        if status != T.ERROR:
            return None
        target = T.PENDING
    elif final == status or status in FINISHED_TASK_STATES - {T.ERROR}:
        return None
    else:
        target = final
    check_task_transition(status, target)
    return target


def _compensation_move(status: TaskState, undos: dict[str, int]) -> TaskState | None:
    """`settle_move` for a task whose undo rows exist (or are about to: a task `compensating`
    without any waits for the planner, which writes them, and moves nowhere)."""
    if not undos or status in TERMINAL_TASK_STATES:
        return None
    outcome = compensation_outcome(undos)
    target = T.COMPENSATING if outcome is None else outcome
    if target == status:
        return None
    check_task_transition(status, target)
    return target
