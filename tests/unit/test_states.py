"""The step and task state machines: the full product of transitions, terminal states and
finalization."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasker.domain.errors import InvalidTransitionError
from tasker.domain.states import (
    ACTIVE_STEP_STATES,
    STEP_TRANSITIONS,
    TASK_TRANSITIONS,
    TERMINAL_STEP_STATES,
    TERMINAL_TASK_STATES,
    StepState,
    TaskState,
    can_transition_step,
    can_transition_task,
    check_step_transition,
    check_task_transition,
    final_task_state,
)

S = StepState
T = TaskState

# The legal moves written out independently of the module, from docs/architecture.md ("States"),
# so that an accidental edit of the table (a state gaining or losing a way out) fails here.
EXPECTED_STEP: dict[StepState, set[StepState]] = {
    S.PENDING: {S.READY, S.CANCELLED, S.RESOLVED_MANUALLY, S.SKIPPED, S.ERROR},
    S.READY: {S.IN_PROGRESS, S.CANCELLED, S.RESOLVED_MANUALLY, S.SKIPPED},
    # -> skipped: a wait_for step whose signal did not come in time (on_timeout: skip).
    S.IN_PROGRESS: {S.COMPLETE, S.WAITING_RETRY, S.ERROR, S.CANCELLED, S.READY, S.SKIPPED},
    S.WAITING_RETRY: {S.IN_PROGRESS, S.CANCELLED, S.RESOLVED_MANUALLY, S.ERROR},
    S.ERROR: {S.READY, S.RESOLVED_MANUALLY, S.CANCELLED},
    S.COMPLETE: set(),
    S.CANCELLED: set(),
    S.RESOLVED_MANUALLY: set(),
    S.SKIPPED: set(),
}
EXPECTED_TASK: dict[TaskState, set[TaskState]] = {
    T.PENDING: {
        T.IN_PROGRESS,
        T.COMPLETE,
        T.ERROR,
        T.CANCELLED,
        T.RESOLVED_MANUALLY,
        T.COMPENSATING,
    },
    T.IN_PROGRESS: {T.COMPLETE, T.ERROR, T.CANCELLED, T.RESOLVED_MANUALLY, T.COMPENSATING},
    T.ERROR: {T.PENDING, T.RESOLVED_MANUALLY, T.CANCELLED, T.COMPENSATING, T.COMPENSATED},
    T.COMPLETE: set(),
    T.CANCELLED: set(),
    T.RESOLVED_MANUALLY: set(),
    T.COMPENSATING: {T.COMPENSATED, T.ERROR, T.CANCELLED},
    T.COMPENSATED: set(),
}

STEP_PAIRS = list(itertools.product(StepState, StepState))
TASK_PAIRS = list(itertools.product(TaskState, TaskState))


def test_every_state_has_an_entry() -> None:
    assert set(STEP_TRANSITIONS) == set(StepState)
    assert set(TASK_TRANSITIONS) == set(TaskState)
    assert {k: set(v) for k, v in STEP_TRANSITIONS.items()} == EXPECTED_STEP
    assert {k: set(v) for k, v in TASK_TRANSITIONS.items()} == EXPECTED_TASK


@pytest.mark.parametrize(("src", "dst"), STEP_PAIRS, ids=[f"{a}->{b}" for a, b in STEP_PAIRS])
def test_step_transition_product(src: StepState, dst: StepState) -> None:
    legal = dst in EXPECTED_STEP[src]
    assert can_transition_step(src, dst) is legal
    if legal:
        check_step_transition(src, dst)
        check_step_transition(src.value, dst.value)  # plain strings, as read from the database
    else:
        with pytest.raises(InvalidTransitionError) as info:
            check_step_transition(src, dst)
        assert f"'{src.value}'" in str(info.value) and f"'{dst.value}'" in str(info.value)
        with pytest.raises(InvalidTransitionError):
            check_step_transition(src.value, dst.value)


@pytest.mark.parametrize(("src", "dst"), TASK_PAIRS, ids=[f"{a}->{b}" for a, b in TASK_PAIRS])
def test_task_transition_product(src: TaskState, dst: TaskState) -> None:
    legal = dst in EXPECTED_TASK[src]
    assert can_transition_task(src, dst) is legal
    if legal:
        check_task_transition(src, dst)
        check_task_transition(src.value, dst.value)
    else:
        with pytest.raises(InvalidTransitionError) as info:
            check_task_transition(src, dst)
        assert f"'{src.value}'" in str(info.value) and f"'{dst.value}'" in str(info.value)
        with pytest.raises(InvalidTransitionError):
            check_task_transition(src.value, dst.value)


def test_no_state_transitions_to_itself() -> None:
    for s in StepState:
        with pytest.raises(InvalidTransitionError):
            check_step_transition(s, s)
    for t in TaskState:
        with pytest.raises(InvalidTransitionError):
            check_task_transition(t, t)


@pytest.mark.parametrize("src", sorted(TERMINAL_STEP_STATES))
def test_terminal_step_states_have_no_way_out(src: StepState) -> None:
    assert STEP_TRANSITIONS[src] == frozenset()
    for dst in StepState:
        with pytest.raises(InvalidTransitionError):
            check_step_transition(src, dst)


@pytest.mark.parametrize("src", sorted(TERMINAL_TASK_STATES))
def test_terminal_task_states_have_no_way_out(src: TaskState) -> None:
    assert TASK_TRANSITIONS[src] == frozenset()
    for dst in TaskState:
        with pytest.raises(InvalidTransitionError):
            check_task_transition(src, dst)


def test_terminal_sets_are_exactly_the_dead_ends() -> None:
    assert {s for s, out in STEP_TRANSITIONS.items() if not out} == TERMINAL_STEP_STATES
    assert {t for t, out in TASK_TRANSITIONS.items() if not out} == TERMINAL_TASK_STATES
    # `error` is not terminal: an operator can retry or resolve it.
    assert S.ERROR not in TERMINAL_STEP_STATES and T.ERROR not in TERMINAL_TASK_STATES


def test_every_non_terminal_step_state_reaches_a_terminal_one() -> None:
    reach = {s: set(STEP_TRANSITIONS[s]) for s in StepState}
    changed = True
    while changed:
        changed = False
        for s in reach:
            extra = set().union(*(reach[d] for d in reach[s])) - reach[s]
            if extra:
                reach[s] |= extra
                changed = True
    for s in StepState:
        if s not in TERMINAL_STEP_STATES:
            assert reach[s] & TERMINAL_STEP_STATES, s
    assert S.COMPLETE in reach[S.PENDING]


def test_unknown_state_name_is_refused() -> None:
    with pytest.raises(ValueError):
        check_step_transition("pending", "finished")
    with pytest.raises(ValueError):
        check_task_transition("bogus", "complete")


# --- final_task_state -----------------------------------------------------------------------------

counts_st = st.dictionaries(
    st.sampled_from([s.value for s in StepState]),
    st.integers(min_value=0, max_value=5),
    max_size=len(StepState),
)


def n(counts: dict[str, int], *states: StepState) -> int:
    return sum(counts.get(s.value, 0) for s in states)


@given(counts_st)
def test_final_state_is_none_iff_a_step_is_active(counts: dict[str, int]) -> None:
    active = n(counts, *ACTIVE_STEP_STATES)
    assert (final_task_state(counts) is None) == (active > 0)


@given(counts_st)
def test_error_wins_over_everything(counts: dict[str, int]) -> None:
    if n(counts, *ACTIVE_STEP_STATES) == 0 and n(counts, S.ERROR) > 0:
        assert final_task_state(counts) == T.ERROR


@given(counts_st)
def test_complete_only_when_every_step_is_complete_or_skipped(counts: dict[str, int]) -> None:
    others = [s for s in StepState if s not in (S.COMPLETE, S.SKIPPED)]
    result = final_task_state(counts)
    if result == T.COMPLETE:
        assert n(counts, *others) == 0
    if n(counts, *others) == 0:
        assert result == T.COMPLETE


@given(counts_st)
def test_resolved_manually_when_resolved_and_nothing_worse(counts: dict[str, int]) -> None:
    result = final_task_state(counts)
    quiet = n(counts, *ACTIVE_STEP_STATES, S.ERROR, S.CANCELLED, S.PENDING) == 0
    if quiet and n(counts, S.RESOLVED_MANUALLY) > 0:
        assert result == T.RESOLVED_MANUALLY
    if result == T.RESOLVED_MANUALLY:
        assert quiet and n(counts, S.RESOLVED_MANUALLY) > 0


@given(counts_st)
def test_cancelled_when_cancelled_and_no_error(counts: dict[str, int]) -> None:
    result = final_task_state(counts)
    if n(counts, *ACTIVE_STEP_STATES, S.ERROR) == 0 and n(counts, S.CANCELLED) > 0:
        assert result == T.CANCELLED
    if result == T.CANCELLED:
        assert n(counts, S.CANCELLED) > 0 and n(counts, S.ERROR) == 0


@given(counts_st)
def test_final_state_is_a_finished_task_state_and_a_legal_move(counts: dict[str, int]) -> None:
    result = final_task_state(counts)
    if result is not None:
        assert result in TERMINAL_TASK_STATES | {T.ERROR}
        # The finalizer moves a running task straight to the outcome.
        check_task_transition(T.IN_PROGRESS, result)


@given(counts_st)
def test_enum_and_string_keys_agree(counts: dict[str, int]) -> None:
    as_enum: dict[str, int] = {StepState(k): v for k, v in counts.items()}
    assert final_task_state(as_enum) == final_task_state(counts)


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({"complete": 3}, T.COMPLETE),
        ({"complete": 2, "skipped": 1}, T.COMPLETE),
        ({"complete": 2, "ready": 1}, None),
        ({"complete": 2, "in_progress": 1, "error": 1}, None),
        ({"complete": 2, "waiting_retry": 1}, None),
        ({"complete": 2, "error": 1, "pending": 3}, T.ERROR),
        ({"cancelled": 1, "error": 1}, T.ERROR),
        ({"cancelled": 2, "complete": 1, "pending": 1}, T.CANCELLED),
        ({"pending": 1, "complete": 1}, T.ERROR),
        ({"resolved_manually": 1, "complete": 4}, T.RESOLVED_MANUALLY),
        ({"resolved_manually": 1, "pending": 1}, T.ERROR),
        ({"complete": 0, "ready": 0, "error": 0}, T.COMPLETE),
    ],
)
def test_final_state_examples(counts: dict[str, int], expected: TaskState | None) -> None:
    assert final_task_state(counts) == expected
