"""Failure classification for the circuit breaker (tasker.domain.failures.system_evidence) and the
retry limit, read from a FailureRecord's fields, never from the exception's class name."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasker.domain.errors import PermanentError, RetryableError, TaskerError
from tasker.domain.failures import (
    NoSystemEvidence,
    SystemEvidence,
    is_system_fault,
    outcome_evidence,
    says_nothing_of_system,
    system_evidence,
)
from tasker.domain.records import FailureRecord, Outcome
from tasker.domain.retry import RetryPolicy, may_retry
from tasker.domain.states import StepState
from tasker.handlers.base import UndeclaredEventError

E = SystemEvidence


def record(**fields: Any) -> FailureRecord:
    out: FailureRecord = {"class": fields.pop("cls", "Whatever"), "message": "m"}
    out.update(fields)  # type: ignore[typeddict-item]
    return out


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (None, E.ANSWER),  # a success
        (record(retryable=True, system_fault=True), E.FAULT),  # a timeout, a 503
        (record(retryable=True, system_fault=False), E.ANSWER),  # a KeyError: the step's own bug
        (
            record(retryable=False, system_fault=False),
            E.ANSWER,
        ),  # a PermanentError: the system said no
        (record(retryable=False, system_fault=True), E.ANSWER),  # not retried: no sign of an outage
        (record(retryable=True), E.ANSWER),  # older records without system_fault
        (record(), E.ANSWER),
        (record(retryable=True, system_fault=False, no_system_evidence=True), E.NONE),
        (record(retryable=False, no_system_evidence=True), E.NONE),
        (record(retryable=True, system_fault=True, no_system_evidence=True), E.NONE),
        (record(retryable=True, system_fault=True, no_system_evidence=False), E.FAULT),
    ],
)
def test_system_evidence_from_the_fields(error: FailureRecord | None, expected: E) -> None:
    assert system_evidence(error) == expected


@pytest.mark.parametrize(
    "cls", ["HandlerUnavailable", "UndeclaredEventError", "LeaseExpired", "HandlerNotFound"]
)
def test_the_class_name_decides_nothing(cls: str) -> None:
    """The engine's own failures say nothing because their records say so, not by their names."""
    assert system_evidence(record(cls=cls, retryable=True, system_fault=False)) == E.ANSWER
    marked = record(cls=cls, retryable=True, system_fault=False, no_system_evidence=True)
    assert system_evidence(marked) == E.NONE


def test_undeclared_event_error_carries_the_marker() -> None:
    exc = UndeclaredEventError("event 'x' is not declared")
    assert says_nothing_of_system(exc)
    assert isinstance(exc, NoSystemEvidence) and isinstance(exc, TaskerError)
    assert not is_system_fault(exc)
    for other in (KeyError("k"), RetryableError("503"), PermanentError("no"), TimeoutError()):
        assert not says_nothing_of_system(other)


def _outcome(state: StepState, error: FailureRecord | None) -> Outcome:
    return Outcome(step_id=1, task_id=1, claim_token=1, attempt=1, state=state, error=error)


def test_a_completed_attempt_is_an_answer_whatever_its_error_says() -> None:
    stray = record(retryable=True, system_fault=True)
    assert outcome_evidence(_outcome(StepState.COMPLETE, stray)) == E.ANSWER
    assert outcome_evidence(_outcome(StepState.WAITING_RETRY, stray)) == E.FAULT
    assert outcome_evidence(_outcome(StepState.ERROR, None)) == E.ANSWER


maybe_bool = st.one_of(st.none(), st.booleans())


@given(
    st.sampled_from([StepState.COMPLETE, StepState.WAITING_RETRY, StepState.ERROR]),
    st.booleans(),
    maybe_bool,
    maybe_bool,
)
def test_fault_is_exactly_what_the_worker_calls_a_transient_failure(
    state: StepState, has_error: bool, retryable: bool | None, system_fault: bool | None
) -> None:
    """`Outcome.transient_failure` (the worker's probe refund) and the breaker's FAULT agree on
    every record the engine writes (those without the no-evidence marker)."""
    fields: dict[str, Any] = {}
    if retryable is not None:
        fields["retryable"] = retryable
    if system_fault is not None:
        fields["system_fault"] = system_fault
    o = _outcome(state, record(**fields) if has_error else None)
    assert (outcome_evidence(o) == E.FAULT) == o.transient_failure


# -- the retry limit -------------------------------------------------------------------------------


@given(
    st.booleans(), st.integers(min_value=1, max_value=100), st.integers(min_value=0, max_value=200)
)
def test_may_retry_is_the_policys_rule(retryable: bool, limit: int, attempts: int) -> None:
    expected = retryable and attempts < limit
    assert may_retry(retryable=retryable, retry_limit=limit, attempts=attempts) is expected
    policy = RetryPolicy(retry_limit=limit, retryable=retryable)
    assert policy.may_retry(attempts) is expected
    # The attempts a step gets in all: exactly the first `max_attempts` may be followed by another.
    granted = sum(
        1
        for n in range(1, limit + 2)
        if may_retry(retryable=retryable, retry_limit=limit, attempts=n)
    )
    assert granted + 1 == policy.max_attempts
