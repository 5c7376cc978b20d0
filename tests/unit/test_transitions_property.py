"""Properties of the step and task state machines, and the store's journal refusing illegal moves.

Every state reachable from a root can still end in a terminal one (no trap), random walks along the
tables can always be finished, and `final_task_state` agrees with the tables: a task it settles has
no step a worker could still move, and the state it names is a legal way out of a running task.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasker.domain.errors import InvalidTransitionError
from tasker.domain.states import (
    ACTIVE_STEP_STATES,
    CLAIMABLE_STEP_STATES,
    FINISHED_TASK_STATES,
    INITIAL_STEP_STATES,
    INITIAL_TASK_STATES,
    STEP_TRANSITIONS,
    TASK_TRANSITIONS,
    TERMINAL_STEP_STATES,
    TERMINAL_TASK_STATES,
    UNRECORDED_SOURCE_STEP_STATES,
    StepState,
    TaskState,
    check_step_transition,
    check_task_transition,
    final_task_state,
)
from tasker.store.journal import Journal

S = StepState
T = TaskState

#: Moves a worker makes on its own (the others are an operator's: cancel, resolve, retry).
WORKER_STEP_MOVES = {
    S.PENDING: {S.READY},
    S.READY: {S.IN_PROGRESS},
    S.WAITING_RETRY: {S.IN_PROGRESS, S.ERROR},
    S.IN_PROGRESS: {S.COMPLETE, S.WAITING_RETRY, S.ERROR, S.READY},
}


def reachable(start: set[StepState] | set[TaskState], table: dict) -> set:  # type: ignore[type-arg]
    seen, todo = set(start), list(start)
    while todo:
        for nxt in table[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_state_reachable_from_a_root_can_still_finish() -> None:
    for state in reachable(set(INITIAL_STEP_STATES), STEP_TRANSITIONS):
        assert reachable({state}, STEP_TRANSITIONS) & TERMINAL_STEP_STATES, state
    for task_state in reachable(set(INITIAL_TASK_STATES), TASK_TRANSITIONS):
        assert reachable({task_state}, TASK_TRANSITIONS) & TERMINAL_TASK_STATES, task_state


def test_every_state_is_reachable_from_a_root() -> None:
    assert reachable(set(INITIAL_STEP_STATES), STEP_TRANSITIONS) == set(StepState)
    assert reachable(set(INITIAL_TASK_STATES), TASK_TRANSITIONS) == set(TaskState)


def _shortest_to_terminal(state: StepState) -> int:
    frontier, seen, n = {state}, {state}, 0
    while not frontier & TERMINAL_STEP_STATES:
        frontier = {d for s in frontier for d in STEP_TRANSITIONS[s]} - seen
        seen |= frontier
        n += 1
    return n


@given(
    st.sampled_from(sorted(INITIAL_STEP_STATES)),
    st.lists(st.integers(min_value=0, max_value=100), max_size=60),
)
def test_random_walks_can_always_be_finished(root: StepState, choices: list[int]) -> None:
    """Walk the table along arbitrary legal moves: wherever the walk stops, the step can still
    reach a terminal state, each move passes the store's check, and terminal states end walks."""
    state = root
    check_step_transition(None, root)
    for choice in choices:
        ways = sorted(STEP_TRANSITIONS[state])
        if not ways:
            assert state in TERMINAL_STEP_STATES
            break
        nxt = ways[choice % len(ways)]
        check_step_transition(state, nxt)
        state = nxt
    assert _shortest_to_terminal(state) <= 3


@given(
    st.sampled_from(sorted(INITIAL_TASK_STATES)),
    st.lists(st.integers(min_value=0, max_value=100), max_size=30),
)
def test_random_task_walks_can_always_be_finished(root: TaskState, choices: list[int]) -> None:
    state = root
    check_task_transition(None, root)
    for choice in choices:
        ways = sorted(TASK_TRANSITIONS[state])
        if not ways:
            assert state in TERMINAL_TASK_STATES
            break
        nxt = ways[choice % len(ways)]
        check_task_transition(state, nxt)
        state = nxt
    assert reachable({state}, TASK_TRANSITIONS) & TERMINAL_TASK_STATES


step_counts = st.dictionaries(
    st.sampled_from(list(StepState)), st.integers(min_value=0, max_value=4), max_size=len(StepState)
)


@given(step_counts)
def test_final_task_state_agrees_with_the_tables(counts: dict[StepState, int]) -> None:
    present = {s for s, n in counts.items() if n}
    final = final_task_state({s.value: n for s, n in counts.items()})
    if final is None:
        # Still running: some step is one a worker can move on its own.
        assert present & ACTIVE_STEP_STATES
        return
    assert final in FINISHED_TASK_STATES
    # A running task (and a pending one, settling before it started) may legally go there.
    assert final in TASK_TRANSITIONS[T.IN_PROGRESS] and final in TASK_TRANSITIONS[T.PENDING]
    # Settled: no step can be claimed, is running or waits to retry.
    assert not present & (ACTIVE_STEP_STATES | CLAIMABLE_STEP_STATES)
    # What is left moves only by an operator's hand (or never): no worker move remains, except a
    # pending step whose parents can no longer finish.
    for s in present - {S.PENDING}:
        assert not WORKER_STEP_MOVES.get(s)
    if final in TERMINAL_TASK_STATES - {T.CANCELLED}:
        # complete or resolved: every step finished for good, none is waiting for anything.
        assert present <= TERMINAL_STEP_STATES
    if final == T.ERROR:
        assert S.ERROR in present or S.PENDING in present


# -- the store's journal honours the tables --------------------------------------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)
STEP_PAIRS = [(a, b) for a in StepState for b in StepState]
TASK_PAIRS = [(a, b) for a in TaskState for b in TaskState]


@pytest.mark.parametrize(("src", "dst"), STEP_PAIRS, ids=[f"{a}->{b}" for a, b in STEP_PAIRS])
def test_journal_records_legal_step_moves_and_refuses_the_rest(
    src: StepState, dst: StepState
) -> None:
    journal = Journal(NOW, "w")
    if dst in STEP_TRANSITIONS[src]:
        journal.step(1, 1, src, dst, 1)
        journal.step(2, 1, src.value, dst.value, 1)  # as read back from the database
        assert [r["to_state"] for r in journal.step_rows] == [dst, dst.value]
    else:
        with pytest.raises(InvalidTransitionError, match=f"'{src.value}' to '{dst.value}'"):
            journal.step(1, 1, src, dst, 1)
        assert journal.step_rows == [] and journal.readied == set()


@pytest.mark.parametrize(("src", "dst"), TASK_PAIRS, ids=[f"{a}->{b}" for a, b in TASK_PAIRS])
def test_journal_records_legal_task_moves_and_refuses_the_rest(
    src: TaskState, dst: TaskState
) -> None:
    journal = Journal(NOW, "w")
    if dst in TASK_TRANSITIONS[src]:
        journal.task(1, src, dst)
        assert len(journal.task_rows) == 1
    else:
        with pytest.raises(InvalidTransitionError):
            journal.task(1, src, dst)
        assert journal.task_rows == []


@pytest.mark.parametrize("dst", list(StepState))
def test_rows_without_a_from_state(dst: StepState) -> None:
    """Creation (`pending`, `ready`) and a cancellation record no from-state; nothing else may."""
    journal = Journal(NOW)
    if dst in UNRECORDED_SOURCE_STEP_STATES:
        journal.step(1, 1, None, dst, 0)
    else:
        with pytest.raises(InvalidTransitionError, match="from '\\(none\\)'"):
            journal.step(1, 1, None, dst, 0)
    for task_dst in TaskState:
        if task_dst in INITIAL_TASK_STATES:
            journal.task(1, None, task_dst)
        else:
            with pytest.raises(InvalidTransitionError):
                journal.task(1, None, task_dst)


def test_unknown_names_are_refused() -> None:
    journal = Journal(NOW)
    with pytest.raises(ValueError):
        journal.step(1, 1, "ready", "finished", 0)
    with pytest.raises(ValueError):
        journal.step(1, 1, "bogus", "ready", 0)
    with pytest.raises(ValueError):
        journal.task(1, "pending", "bogus")


def test_journal_tracks_readied_steps_by_state() -> None:
    journal = Journal(NOW)
    journal.step(1, 1, S.PENDING, S.READY, 0)
    journal.step(2, 1, "pending", "ready", 0)
    assert journal.readied == {1, 2}
    journal.step(1, 1, S.READY, S.IN_PROGRESS, 1)
    assert journal.readied == {2}
    assert Counter(r["from_state"] for r in journal.step_rows)[S.PENDING] == 2
