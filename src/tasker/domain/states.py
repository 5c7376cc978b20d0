"""The task and step state machines of DESIGN section 4: states, the legal transitions, and the checks.

Kept free of I/O so that the rules can be tested exhaustively; the store consults `check_step_transition`
and `check_task_transition` before it writes a transition row.
"""

from __future__ import annotations

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


S = StepState
T = TaskState

STEP_TRANSITIONS: dict[StepState, frozenset[StepState]] = {
    S.PENDING: frozenset({S.READY, S.CANCELLED, S.RESOLVED_MANUALLY, S.SKIPPED}),
    S.READY: frozenset({S.IN_PROGRESS, S.CANCELLED, S.RESOLVED_MANUALLY, S.SKIPPED}),
    # in_progress -> ready is a graceful release (a stopping worker hands the step back unspent).
    S.IN_PROGRESS: frozenset({S.COMPLETE, S.WAITING_RETRY, S.ERROR, S.CANCELLED, S.READY}),
    S.WAITING_RETRY: frozenset({S.IN_PROGRESS, S.CANCELLED, S.RESOLVED_MANUALLY, S.ERROR}),
    S.ERROR: frozenset({S.READY, S.RESOLVED_MANUALLY, S.CANCELLED}),
    S.COMPLETE: frozenset(),
    S.CANCELLED: frozenset(),
    S.RESOLVED_MANUALLY: frozenset(),
    S.SKIPPED: frozenset(),
}

TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    T.PENDING: frozenset({T.IN_PROGRESS, T.COMPLETE, T.ERROR, T.CANCELLED, T.RESOLVED_MANUALLY}),
    T.IN_PROGRESS: frozenset({T.COMPLETE, T.ERROR, T.CANCELLED, T.RESOLVED_MANUALLY}),
    # error -> pending is an operator's retry or a manual resolution that unblocks more steps.
    T.ERROR: frozenset({T.PENDING, T.RESOLVED_MANUALLY, T.CANCELLED}),
    T.COMPLETE: frozenset(),
    T.CANCELLED: frozenset(),
    T.RESOLVED_MANUALLY: frozenset(),
}

#: Steps a worker may pick up (at or after their run_at).
CLAIMABLE_STEP_STATES = frozenset({S.READY, S.WAITING_RETRY})
#: Steps that still hold the task open: while any exists the task cannot be finalized.
ACTIVE_STEP_STATES = frozenset({S.READY, S.IN_PROGRESS, S.WAITING_RETRY})
#: Steps whose dependents may run.
SATISFIED_STEP_STATES = frozenset({S.COMPLETE, S.RESOLVED_MANUALLY, S.SKIPPED})
TERMINAL_STEP_STATES = frozenset({S.COMPLETE, S.CANCELLED, S.RESOLVED_MANUALLY, S.SKIPPED})
TERMINAL_TASK_STATES = frozenset({T.COMPLETE, T.CANCELLED, T.RESOLVED_MANUALLY})
FINISHED_TASK_STATES = TERMINAL_TASK_STATES | {T.ERROR}


def can_transition_step(src: StepState, dst: StepState) -> bool:
    return dst in STEP_TRANSITIONS[src]


def check_step_transition(src: StepState | str, dst: StepState | str) -> None:
    s, d = StepState(src), StepState(dst)
    if d not in STEP_TRANSITIONS[s]:
        raise InvalidTransitionError(f"step cannot go from '{s}' to '{d}'")


def can_transition_task(src: TaskState, dst: TaskState) -> bool:
    return dst in TASK_TRANSITIONS[src]


def check_task_transition(src: TaskState | str, dst: TaskState | str) -> None:
    s, d = TaskState(src), TaskState(dst)
    if d not in TASK_TRANSITIONS[s]:
        raise InvalidTransitionError(f"task cannot go from '{s}' to '{d}'")


def final_task_state(counts: dict[str, int]) -> TaskState | None:
    """The state a task settles in given how many of its steps are in each state, or None while it runs.

    A task is finished once no step is active: nothing can make a pending step ready any more. Then an
    `error` step makes the task `error`; a step resolved by an operator makes it `resolved_manually`.
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
