"""The circuit breaker and the claim limits as pure functions (tasker.domain.circuits), no database.

Examples pin each rule; the property tests drive a circuit through random histories of failures,
probes, answers, cool-downs and resets and check what must always hold: an open circuit always
comes due for a probe within its capped cool-down, a probe's success closes it, cool-downs stay
between the base and the cap, and every function changes only the columns the store writes for it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasker.domain.circuits import (
    ANSWER_COLUMNS,
    CIRCUIT_TRANSITIONS,
    COOLDOWN_COLUMNS,
    DEFAULT_COOLDOWN_SECONDS,
    DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_MAX_COOLDOWN_SECONDS,
    MAX_COOLDOWN_SECONDS,
    MAX_OUTAGE_CAP_SECONDS,
    RESERVED,
    RESET_COLUMNS,
    STATE_COLUMNS,
    Access,
    Admission,
    Circuit,
    CircuitChange,
    CircuitState,
    ClaimPlan,
    after_cycle,
    claim_access,
    columns,
    on_answer,
    on_cooldown_elapsed,
    on_failures,
    on_probe_failure,
    on_probe_success,
    on_reset,
    outage_decision,
    probe_lost,
    room,
    seconds,
    take_over_probe,
)
from tasker.domain.failures import DEFAULT_MAX_OUTAGE_SECONDS, GAVE_UP
from tasker.domain.records import FailureRecord
from tasker.domain.states import StepState

C = CircuitState
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def changed_columns(old: Circuit, new: Circuit) -> set[str]:
    a, b = columns(old), columns(new)
    return {k for k in STATE_COLUMNS if a[k] != b[k]}


_STATE_FIELDS = {
    "state",
    "consecutive_failures",
    "current_cooldown_seconds",
    "opened_at",
    "open_until",
    "probe_step_id",
    "failing_since",
}


def settings_of(c: Circuit) -> dict[str, object]:
    return {k: v for k, v in asdict(c).items() if k not in _STATE_FIELDS}


# -- examples --------------------------------------------------------------------------------------


def test_a_new_circuit_is_closed_with_the_defaults() -> None:
    c = Circuit("billing")
    assert c.state == C.CLOSED and c.consecutive_failures == 0
    assert c.threshold == DEFAULT_FAILURE_THRESHOLD == 5
    assert c.base_cooldown == DEFAULT_COOLDOWN_SECONDS == 5.0
    assert c.cooldown_cap == DEFAULT_MAX_COOLDOWN_SECONDS == 30.0
    assert c.outage_limit == DEFAULT_MAX_OUTAGE_SECONDS
    assert claim_access(c, T0) == Access.FREE


def test_failures_below_the_threshold_count_and_start_the_streak() -> None:
    change = on_failures(Circuit("s", failure_threshold=3), T0, 2)
    assert change.transition is None
    assert change.circuit.state == C.CLOSED
    assert change.circuit.consecutive_failures == 2
    assert change.circuit.failing_since == T0
    later = on_failures(change.circuit, T0 + timedelta(seconds=9), 0)
    assert later.circuit.failing_since == T0  # the streak goes on from its start


def test_reaching_the_threshold_opens_for_the_base_cooldown() -> None:
    c = Circuit("s", failure_threshold=3, cooldown_seconds=2.0, consecutive_failures=1)
    change = on_failures(c, T0, 2)
    assert change.transition is not None
    assert (change.transition.src, change.transition.dst) == (C.CLOSED, C.OPEN)
    assert change.transition.reason == (
        "3 consecutive retryable failures (threshold 3); probe in 2s"
    )
    opened = change.circuit
    assert opened.state == C.OPEN and opened.consecutive_failures == 3
    assert opened.current_cooldown_seconds == 2.0
    assert opened.opened_at == T0 and opened.open_until == T0 + timedelta(seconds=2)
    assert opened.probe_step_id is None
    assert claim_access(opened, T0 + timedelta(seconds=1)) == Access.BLOCKED
    assert claim_access(opened, T0 + timedelta(seconds=2)) == Access.COOLDOWN_OVER


def test_open_and_half_open_circuits_only_count_failures() -> None:
    for state in (C.OPEN, C.HALF_OPEN):
        c = Circuit("s", state=state, consecutive_failures=9, open_until=T0)
        change = on_failures(c, T0, 4)
        assert change.transition is None
        assert change.circuit == replace(c, consecutive_failures=13, failing_since=T0)


def test_cooldown_over_turns_half_open_and_reserves_the_probe() -> None:
    c = Circuit("s", state=C.OPEN, open_until=T0)
    assert on_cooldown_elapsed(c, T0 - timedelta(microseconds=1)) is None
    change = on_cooldown_elapsed(c, T0)
    assert change is not None and change.transition is not None
    assert change.circuit.state == C.HALF_OPEN and change.circuit.probe_step_id == RESERVED
    assert change.transition.reason == "cool-down over: one probe goes through"
    assert on_cooldown_elapsed(Circuit("s"), T0) is None
    assert on_cooldown_elapsed(Circuit("s", state=C.OPEN), T0) is None  # no open_until: not due


def test_probe_success_closes_and_forgets() -> None:
    c = Circuit(
        "s",
        state=C.HALF_OPEN,
        consecutive_failures=7,
        current_cooldown_seconds=20.0,
        opened_at=T0,
        open_until=T0,
        probe_step_id=42,
        failing_since=T0,
    )
    change = on_probe_success(c)
    assert change.transition is not None and change.transition.reason == "probe succeeded"
    assert (change.transition.src, change.transition.dst) == (C.HALF_OPEN, C.CLOSED)
    assert change.circuit == replace(
        c,
        state=C.CLOSED,
        consecutive_failures=0,
        current_cooldown_seconds=None,
        open_until=None,
        probe_step_id=None,
        failing_since=None,
    )


def test_probe_failure_doubles_the_cooldown_up_to_the_cap() -> None:
    c = Circuit(
        "s",
        state=C.HALF_OPEN,
        cooldown_seconds=5.0,
        max_cooldown_seconds=30.0,
        current_cooldown_seconds=5.0,
        consecutive_failures=5,
        probe_step_id=3,
    )
    waits = []
    for _ in range(5):
        change = on_probe_failure(c, T0, failures=1)
        assert change.transition is not None
        assert change.transition.reason == (
            f"probe failed; next probe in {change.circuit.current_cooldown_seconds:g}s"
        )
        c = replace(change.circuit, state=C.HALF_OPEN)
        waits.append(c.current_cooldown_seconds)
    assert waits == [10.0, 20.0, 30.0, 30.0, 30.0]
    assert c.consecutive_failures == 5 + 5 * 2  # the probe's own failure and the other one


def test_an_answer_ends_only_a_closed_circuits_streak() -> None:
    c = Circuit("s", consecutive_failures=3, failing_since=T0)
    assert on_answer(c) == replace(c, consecutive_failures=0, failing_since=None)
    for state in (C.OPEN, C.HALF_OPEN):
        assert on_answer(replace(c, state=state)) == replace(c, state=state)


def test_reset_closes_and_records_a_transition_only_when_it_moved() -> None:
    c = Circuit("s", state=C.OPEN, consecutive_failures=5, open_until=T0, opened_at=T0)
    change = on_reset(c)
    assert change.transition is not None and change.transition.reason == "reset by an operator"
    assert change.circuit.state == C.CLOSED and change.circuit.opened_at == T0
    assert on_reset(Circuit("s", consecutive_failures=2)).transition is None


def test_probe_is_taken_over_only_when_the_last_one_is_not_running() -> None:
    half = Circuit("s", state=C.HALF_OPEN, probe_step_id=7)
    assert not probe_lost(half, StepState.IN_PROGRESS)
    assert not probe_lost(half, "in_progress")
    assert probe_lost(half, StepState.WAITING_RETRY)
    assert probe_lost(half, None)  # the step is gone
    assert probe_lost(replace(half, probe_step_id=None), None)
    assert not probe_lost(Circuit("s"), None)
    assert take_over_probe(half).probe_step_id == RESERVED
    assert claim_access(half, T0) == Access.PROBE_IF_LOST


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, 5.0),
        (float("nan"), 5.0),
        (float("inf"), 5.0),
        (-1.0, 5.0),
        (0.0, 5.0),
        (2.5, 2.5),
        (1e12, MAX_COOLDOWN_SECONDS),
    ],
)
def test_stored_seconds_are_made_usable(value: float | None, expected: float) -> None:
    assert seconds(value, 5.0) == expected


def test_bad_rows_never_make_an_unbounded_cooldown() -> None:
    c = Circuit(
        "s",
        cooldown_seconds=float("nan"),
        max_cooldown_seconds=float("inf"),
        max_outage_seconds=-3.0,
    )
    assert c.base_cooldown == DEFAULT_COOLDOWN_SECONDS
    assert c.cooldown_cap == DEFAULT_MAX_COOLDOWN_SECONDS
    assert c.outage_limit == DEFAULT_MAX_OUTAGE_SECONDS
    assert Circuit("s", max_outage_seconds=1e12).outage_limit == MAX_OUTAGE_CAP_SECONDS


# -- the outage hold -------------------------------------------------------------------------------


def _error(attempt: int) -> FailureRecord:
    return {
        "class": "ConnectError",
        "message": "refused" + GAVE_UP.format(attempt),
        "retryable": True,
        "system_fault": True,
    }


def test_a_silent_system_holds_the_step_and_gives_its_attempt_back() -> None:
    c = Circuit("pay", consecutive_failures=2, failing_since=T0, cooldown_seconds=7.0)
    d = outage_decision(c, error=_error(3), attempt=3, now=T0 + timedelta(seconds=40))
    assert d.hold and d.state == StepState.WAITING_RETRY and d.refund_attempt
    assert d.retry_delay == 7.0
    assert d.error["waiting_for_system"] == "pay"
    assert d.error["message"] == (
        "refused (waiting for 'pay': it has answered nothing for 40s; attempts are not spent"
        " while it is down, up to max_outage_seconds=3600)"
    )
    assert d.error["class"] == "ConnectError"  # the rest of the record is kept
    with_current = replace(c, current_cooldown_seconds=20.0)
    assert outage_decision(with_current, error=_error(3), attempt=3, now=T0).retry_delay == 20.0


def test_a_system_that_answered_others_fails_the_step() -> None:
    c = Circuit("pay", consecutive_failures=0, failing_since=None)
    d = outage_decision(c, error=_error(3), attempt=3, now=T0)
    assert not d.hold and d.state == StepState.ERROR and not d.refund_attempt
    assert d.retry_delay is None
    assert d.error["message"] == (
        "refused (gave up after 3 attempts) ('pay' answered other steps meanwhile)"
    )
    assert "waiting_for_system" not in d.error


def test_a_system_silent_past_max_outage_fails_the_step() -> None:
    c = Circuit("pay", consecutive_failures=50, failing_since=T0, max_outage_seconds=60.0)
    d = outage_decision(c, error=_error(2), attempt=2, now=T0 + timedelta(seconds=61))
    assert not d.hold and d.state == StepState.ERROR
    assert d.error["message"].endswith(
        "(gave up after 2 attempts) ('pay' has answered nothing for 61s, past its"
        " max_outage_seconds=60)"
    )


def test_an_outcome_without_an_error_gets_a_placeholder() -> None:
    d = outage_decision(Circuit("pay"), error=None, attempt=1, now=T0)
    assert d.error["class"] == "Error"


@given(
    st.integers(min_value=0, max_value=50),
    st.integers(min_value=1, max_value=50),
    st.floats(min_value=0, max_value=10_000),
    st.floats(min_value=1, max_value=5_000),
)
def test_hold_exactly_when_the_verdict_says_so(
    failures: int, attempt: int, silent: float, limit: float
) -> None:
    c = Circuit("s", consecutive_failures=failures, failing_since=T0, max_outage_seconds=limit)
    d = outage_decision(
        c, error=_error(attempt), attempt=attempt, now=T0 + timedelta(seconds=silent)
    )
    silent_exact = (T0 + timedelta(seconds=silent) - T0).total_seconds()
    assert d.hold == (failures + 1 >= attempt and silent_exact < limit)
    assert d.hold == (d.state == StepState.WAITING_RETRY) == d.refund_attempt
    # The suffix is never doubled, and the original message is always kept.
    assert d.error["message"].startswith("refused (")
    assert d.error["message"].count("gave up after") == (0 if d.hold else 1)


# -- limits ----------------------------------------------------------------------------------------


def test_room_under_each_limit() -> None:
    assert room({"a": 3, "b": 2, "c": None}, Counter({"a": 1, "b": 5})) == {"a": 2, "b": 0}
    assert room({}, {"a": 4}) == {}


def test_a_probe_lets_one_step_through_and_full_systems_are_blocked() -> None:
    plan = ClaimPlan(system_room={"a": 3, "b": 0}, probes={"a", "p"})
    plan.limit_probes()
    assert plan.system_room == {"a": 1, "b": 0, "p": 1}
    assert plan.blocked == {"b"}
    took = Admission.TAKE
    assert plan.admit("a", "ns") == took and plan.admit("a", "ns") == Admission.LEAVE
    assert plan.admit("p", "ns") == took and plan.admit("p", "ns") == Admission.LEAVE
    assert plan.admit("b", "ns") == Admission.LEAVE
    assert plan.admit("other", "ns") == took


def test_an_empty_plan_is_unrestricted() -> None:
    assert ClaimPlan().unrestricted
    assert not ClaimPlan(namespace_room={"ns": 1}).unrestricted


names = st.sampled_from(["a", "b", "c", "d"])


@given(
    st.dictionaries(names, st.one_of(st.none(), st.integers(min_value=1, max_value=6))),
    st.dictionaries(names, st.integers(min_value=1, max_value=6)),
    st.dictionaries(names, st.integers(min_value=0, max_value=8)),
    st.frozensets(names),
    st.frozensets(names),
    st.lists(st.tuples(names, names), max_size=60),
)
def test_admitted_steps_never_exceed_any_limit(
    system_limits: dict[str, int | None],
    namespace_limits: dict[str, int],
    busy: dict[str, int],
    blocked: frozenset[str],
    probes: frozenset[str],
    candidates: list[tuple[str, str]],
) -> None:
    plan = ClaimPlan(
        blocked=set(blocked),
        system_room=room(system_limits, busy),
        namespace_room=room(dict(namespace_limits), busy),
        probes=set(probes) - blocked,
    )
    plan.limit_probes()
    admitted = [(s, n) for s, n in candidates if plan.admit(s, n) == Admission.TAKE]
    per_system = Counter(s for s, _ in admitted)
    per_namespace = Counter(n for _, n in admitted)
    for s, n in per_system.items():
        assert s not in blocked
        limit = system_limits.get(s)
        if limit is not None:
            assert busy.get(s, 0) + n <= limit
        if s in probes:
            assert n <= 1
    for ns, n in per_namespace.items():
        if ns in namespace_limits:
            assert busy.get(ns, 0) + n <= namespace_limits[ns]
    assert all(v >= 0 for v in plan.system_room.values())
    assert all(v >= 0 for v in plan.namespace_room.values())


# -- properties of the breaker ---------------------------------------------------------------------

durations = st.one_of(
    st.none(),
    st.floats(min_value=0.01, max_value=3 * MAX_COOLDOWN_SECONDS),
    st.sampled_from([float("nan"), float("inf"), -1.0, 0.0]),
)


@st.composite
def circuits(draw: st.DrawFn) -> Circuit:
    return Circuit(
        "s",
        failure_threshold=draw(st.one_of(st.none(), st.integers(min_value=1, max_value=8))),
        cooldown_seconds=draw(durations),
        max_cooldown_seconds=draw(durations),
        max_outage_seconds=draw(durations),
    )


events = st.lists(
    st.one_of(
        st.tuples(st.just("failures"), st.integers(min_value=1, max_value=6)),
        st.tuples(st.just("answer"), st.just(0)),
        st.tuples(st.just("probe_ok"), st.just(0)),
        st.tuples(st.just("probe_failed"), st.integers(min_value=0, max_value=3)),
        st.tuples(st.just("claim"), st.just(0)),
        st.tuples(st.just("reset"), st.just(0)),
        st.tuples(st.just("wait"), st.integers(min_value=0, max_value=200_000)),
    ),
    max_size=40,
)


def _legal(change: CircuitChange, before: Circuit) -> None:
    if change.transition is not None:
        assert change.transition.src == before.state
        assert change.transition.dst == change.circuit.state
        assert change.transition.dst in CIRCUIT_TRANSITIONS[change.transition.src]
    else:
        assert change.circuit.state == before.state


def _invariants(c: Circuit, now: datetime) -> None:
    assert c.consecutive_failures >= 0
    if c.current_cooldown_seconds is not None:
        assert c.base_cooldown <= c.current_cooldown_seconds <= c.cooldown_cap
        assert math.isfinite(c.current_cooldown_seconds)
    if c.state == C.OPEN:
        # Never open forever: it is due for a probe within its capped cool-down.
        assert c.open_until is not None and c.opened_at is not None
        assert c.probe_step_id is None
        wait = (c.open_until - c.opened_at).total_seconds()
        assert 0 < wait <= c.cooldown_cap + 1e-6  # timedelta keeps microseconds
        assert c.cooldown_cap <= MAX_COOLDOWN_SECONDS
        assert claim_access(c, c.open_until) == Access.COOLDOWN_OVER
    if c.state == C.HALF_OPEN:
        assert claim_access(c, now) == Access.PROBE_IF_LOST
    if c.state == C.CLOSED:
        assert claim_access(c, now) == Access.FREE
    if c.consecutive_failures == 0 and c.state == C.CLOSED:
        assert c.failing_since is None or c.failing_since <= now


@given(circuits(), events)
def test_random_histories_keep_the_breaker_sound(
    start: Circuit, history: list[tuple[str, int]]
) -> None:
    c, now = start, T0
    for kind, n in history:
        before = c
        if kind == "wait":
            now += timedelta(seconds=n / 10)
            continue
        if kind == "failures":
            change = on_failures(c, now, n)
            assert change.circuit.consecutive_failures == c.consecutive_failures + n
            if c.state == C.CLOSED:
                assert (change.circuit.state == C.OPEN) == (
                    c.consecutive_failures + n >= c.threshold
                )
        elif kind == "answer":
            new = on_answer(c)
            assert changed_columns(c, new) <= set(ANSWER_COLUMNS)
            change = CircuitChange(new)
        elif kind == "probe_ok":
            change = on_probe_success(c)
            assert change.circuit.state == C.CLOSED and change.circuit.consecutive_failures == 0
            assert change.circuit.failing_since is None
        elif kind == "probe_failed":
            change = on_probe_failure(c, now, failures=n)
            assert change.circuit.state == C.OPEN
            assert change.circuit.consecutive_failures == c.consecutive_failures + n + 1
        elif kind == "claim":
            access = claim_access(c, now)
            if access == Access.COOLDOWN_OVER:
                elapsed = on_cooldown_elapsed(c, now)
                assert elapsed is not None
                assert changed_columns(c, elapsed.circuit) <= set(COOLDOWN_COLUMNS)
                change = elapsed
            elif access == Access.PROBE_IF_LOST and probe_lost(c, None):
                taken = take_over_probe(c)
                assert changed_columns(c, taken) <= {"probe_step_id"}
                change = CircuitChange(taken)
            else:
                assert on_cooldown_elapsed(c, now) is None
                change = CircuitChange(c)
        else:
            change = on_reset(c)
            assert changed_columns(c, change.circuit) <= set(RESET_COLUMNS)
            assert change.circuit.state == C.CLOSED
        _legal(change, before)
        # Settings are the operator's: no breaker function changes them.
        assert settings_of(change.circuit) == settings_of(before)
        c = change.circuit
        _invariants(c, now)


@given(circuits(), st.integers(min_value=1, max_value=40))
def test_cooldown_growth_is_bounded_and_monotonic(start: Circuit, probes: int) -> None:
    c = on_failures(start, T0, start.threshold).circuit
    assert c.state == C.OPEN and c.current_cooldown_seconds == start.base_cooldown
    waits: list[float | None] = [c.current_cooldown_seconds]
    now = T0
    for _ in range(probes):
        assert c.open_until is not None
        now = c.open_until
        elapsed = on_cooldown_elapsed(c, now)
        assert elapsed is not None  # always due once the cool-down is over: it never stays open
        c = on_probe_failure(elapsed.circuit, now).circuit
        waits.append(c.current_cooldown_seconds)
    assert all(w is not None for w in waits)
    ws = [w for w in waits if w is not None]
    assert ws == sorted(ws)
    assert all(start.base_cooldown <= w <= start.cooldown_cap for w in ws)
    assert ws[-1] == min(start.base_cooldown * 2**probes, start.cooldown_cap)


@given(circuits(), st.integers(min_value=0, max_value=20), st.booleans(), st.booleans())
def test_after_cycle_precedence(c: Circuit, failures: int, ok: bool, failed: bool) -> None:
    got = after_cycle(c, T0, failures=failures, probe_ok=ok, probe_failed=failed)
    if ok:
        assert got == on_probe_success(c)
    elif failed:
        assert got == on_probe_failure(c, T0, failures=failures)
    else:
        assert got == on_failures(c, T0, failures)


@given(circuits(), st.sampled_from(list(CircuitState)))
def test_a_success_always_closes(c: Circuit, state: CircuitState) -> None:
    change = on_probe_success(replace(c, state=state, consecutive_failures=3, failing_since=T0))
    assert change.circuit.state == C.CLOSED
    assert claim_access(change.circuit, T0) == Access.FREE
