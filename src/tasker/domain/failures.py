"""Failure classification: what a handler's exception says about the step and about its dependent system.

Two separate questions, answered by pure functions:

- Is it worth trying the step again? Every exception but `PermanentError` is (a bug fixed by a deploy,
  a race lost), within the step's retry limit.
- Is it a sign that the dependent system is unwell? Only when the failure says so: a connection that
  could not be made or broke, a timeout, a `RetryableError` (which `ApiStepHandler` raises for 408, 429,
  502, 503 and 504) unless it says `system_fault=False`. A `KeyError` in a handler is the step's own
  failure: it spends the step's attempts and never opens a circuit, so one buggy template cannot stall
  every other template that shares its system (issue #9).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tasker.domain.errors import RetryableError, StepFailure

#: How long steps wait for a dependent system that answers nothing, unless the system says otherwise.
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
