"""Failure classification: what a handler's exception says about the step and about its dependent
system.

Two separate questions, answered by pure functions:

- Is it worth trying the step again? Every exception but `PermanentError` is (a bug fixed by a
  deploy, a race lost), within the step's retry limit.
- Is it a sign that the dependent system is unwell? Only when the failure says so: a connection that
  could not be made or broke, a timeout, a `RetryableError` (which `ApiStepHandler` raises for 408,
  429, 502, 503 and 504) unless it says `system_fault=False`. A `KeyError` in a handler is the
  step's own failure: it spends the step's attempts and never opens a circuit, so one buggy template
  cannot stall every other template that shares its system (issue #9).

The answers are written into the `FailureRecord` when the exception is described (`retryable`,
`system_fault`, `no_system_evidence`); from then on every reader, the circuit breaker included, asks
`system_evidence` about the record's fields and never looks at the exception's class name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING

from tasker.domain.errors import RetryableError, StepFailure
from tasker.domain.states import StepState

if TYPE_CHECKING:
    from tasker.domain.records import FailureRecord, Outcome

#: How long steps wait for a dependent system that answers nothing, unless the system says
#: otherwise.
DEFAULT_MAX_OUTAGE_SECONDS = 3600.0
#: Appended to the error message of a step that ran out of attempts.
GAVE_UP = " (gave up after {} attempts)"

#: Third-party exception classes (by top-level module and class name, so that nothing is imported to
#: check them) that mean "the other side could not be reached or did not answer in time".
TRANSPORT_FAULTS = frozenset(
    {
        ("httpx", "TransportError"),
        ("httpx", "TimeoutException"),
        ("httpcore", "NetworkError"),
        ("httpcore", "TimeoutException"),
        ("requests", "ConnectionError"),
        ("requests", "Timeout"),
        ("urllib3", "NewConnectionError"),
        ("urllib3", "TimeoutError"),
        ("urllib3", "ProtocolError"),
        ("aiohttp", "ClientConnectionError"),
        ("aiohttp", "ServerTimeoutError"),
        ("grpc", "RpcError"),
    }
)


def is_system_fault(exc: BaseException) -> bool:
    """Whether this failure counts towards opening the circuit of the step's dependent system."""
    if isinstance(exc, RetryableError):
        return exc.system_fault
    if isinstance(exc, StepFailure):
        return False  # a PermanentError is an answer: the system is up and said no
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return any(
        (cls.__module__.partition(".")[0], cls.__name__) in TRANSPORT_FAULTS
        for cls in type(exc).__mro__
    )


class NoSystemEvidence:
    """Marks an exception class whose failures say nothing about the step's dependent system, not
    even that it answered: the engine raised it around the handler's work (a custom event the
    template does not declare), so it neither counts towards the circuit nor ends its streak.

    A mixin: `class UndeclaredEventError(TaskerError, NoSystemEvidence)`.
    """


def says_nothing_of_system(exc: BaseException) -> bool:
    """Whether a failure of this exception is no evidence either way about the dependent system."""
    return isinstance(exc, NoSystemEvidence)


class SystemEvidence(Enum):
    """What an attempt's outcome tells the circuit breaker of the step's dependent system."""

    #: The system is unwell (it could not be reached, timed out, said "try later"): counts.
    FAULT = "fault"
    #: The system answered (a success, a refusal, the handler's own bug): ends the streak.
    ANSWER = "answer"
    #: Nothing either way (no worker could load the handler, the engine refused the attempt).
    NONE = "none"


def system_evidence(error: FailureRecord | None) -> SystemEvidence:
    """Classify an attempt by its recorded failure (None: it succeeded), from the record's fields.

    A failure marked `no_system_evidence` says nothing; a retryable one with `system_fault` set is a
    fault; anything else (success included) is an answer.
    """
    if error is None:
        return SystemEvidence.ANSWER
    if error.get("no_system_evidence") is True:
        return SystemEvidence.NONE
    if error.get("retryable") and error.get("system_fault") is True:
        return SystemEvidence.FAULT
    return SystemEvidence.ANSWER


def outcome_evidence(outcome: Outcome) -> SystemEvidence:
    """`system_evidence` of one attempt's outcome (a completed attempt is an answer)."""
    return system_evidence(None if outcome.state == StepState.COMPLETE else outcome.error)


@dataclass(frozen=True)
class OutageVerdict:
    """What becomes of a step that ran out of attempts on failures that were its system's fault."""

    hold: bool  # wait for the system's circuit instead of failing
    silent_seconds: float  # how long the system has answered nothing


def outage_verdict(
    *,
    failing_since: datetime | None,
    now: datetime,
    max_outage_seconds: float,
    unanswered_failures: int,
    attempts: int,
) -> OutageVerdict:
    """The outage promise for one step: while its system answers nothing, attempts are not spent.

    The step waits (its last attempt is given back and the circuit decides when to try again) if
    every one of its failed attempts fell within the system's current streak of unanswered failures
    (`unanswered_failures >= attempts`: nothing answered in between, so there is no evidence the
    system works) and the streak is younger than `max_outage_seconds`. Otherwise its retry limit
    holds: a system that answers others but fails this step is this step's problem.
    """
    since = failing_since or now
    silent = max(0.0, (now - since).total_seconds())
    hold = unanswered_failures >= attempts and silent < max_outage_seconds
    return OutageVerdict(hold=hold, silent_seconds=silent)
