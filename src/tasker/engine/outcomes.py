"""What one attempt comes to: every decision that turns an attempt into an `Outcome`, in one place.

The executor runs a handler and hands over what it returned or raised; the worker hands over what
went wrong around it. Here it becomes the outcome the store applies:

- a result: `complete`, with the step's children when the worker knows them;
- a failure: permanent now (`PermanentError`, an invalid result), retried after a delay, or retries
  exhausted (which the store may still hold while the step's system is down: `exhausted`); a
  timeout is recorded as `StepTimeoutError`;
- a failed circuit probe: the attempt is given back and the step waits for the circuit;
- a handler this worker cannot import: handed back unspent, for a worker that can;
- the engine's own bug while running the attempt: the step fails visibly, not retried;
- an outcome the store refuses to store: a failure of its step that names the store's error.

Whether a failed *cycle* is an outage (wait and store the same outcomes again) is `is_outage`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import traceback
from typing import Any

from tasker.domain.errors import (
    PermanentError,
    RetryableError,
    StepFailure,
    StepTimeoutError,
    StoreUnavailable,
)
from tasker.domain.failures import GAVE_UP, is_system_fault, says_nothing_of_system
from tasker.domain.records import ClaimedStep, FailureRecord, Outcome
from tasker.domain.retry import MAX_DELAY_SECONDS, RetryPolicy
from tasker.domain.states import StepState
from tasker.domain.storable import MAX_MESSAGE_CHARS, safe_str, storable, storable_text

#: How long a step whose handler this worker cannot import waits before a worker tries it again.
UNLOADABLE_RETRY_SECONDS = 10.0

Events = list[tuple[str, dict[str, Any]]]


class HandlerTimedOut(Exception):
    """The handler ran past its timeout; `note` says if it had to be left running."""

    def __init__(self, note: str = ""):
        super().__init__(note)
        self.note = note


class InvalidResultError(Exception):
    """A handler returned something that cannot be stored as a JSON object: a bug, so the step fails
    without retrying, with the path of the first offending value."""


def is_outage(exc: BaseException) -> bool:
    """A failed cycle that pauses the worker (a lost connection, a restarting server, a deadlock
    victim), as opposed to one to isolate: anything else is a bug."""
    return isinstance(exc, StoreUnavailable)


def describe_error(
    exc: BaseException, *, retryable: bool, system_fault: bool | None = None
) -> FailureRecord:
    """The stored form of a failure: class, message (escaped, cut to `MAX_MESSAGE_CHARS`), whether
    it is retried, whether it counts against the dependent system, and where it came from.

    Never raises, whatever the exception does: its `__str__` may raise, its context may not be JSON.
    """
    fault = is_system_fault(exc) if system_fault is None else system_fault
    message = storable_text(safe_str(exc), MAX_MESSAGE_CHARS) or type(exc).__name__
    err: FailureRecord = {
        "class": storable_text(type(exc).__name__, 200),
        "message": message,
        "retryable": retryable,
        "system_fault": retryable and fault,
    }
    if says_nothing_of_system(exc):
        err["no_system_evidence"] = True
    if isinstance(exc, StepFailure):
        code = getattr(exc, "error_code", None)
        if code:
            err["error_code"] = storable_text(safe_str(code), 200)
        context = getattr(exc, "context", None)
        if context:
            err["context"] = _bounded(storable(context))
    else:
        err["traceback"] = _traceback(exc)
    return err


def _traceback(exc: BaseException) -> str:
    try:
        text = "".join(traceback.format_exception(exc, limit=-6))
    except (
        BaseException
    ) as failure:  # formatting calls the exception's __str__, which may be broken
        text = f"(no traceback: formatting it raised {type(failure).__name__})"
    return storable_text(text[-4000:])


def _bounded(value: Any) -> Any:
    """Error context within `MAX_MESSAGE_CHARS` once encoded, or a note saying how large it was."""
    encoded = json.dumps(value)
    if len(encoded) <= MAX_MESSAGE_CHARS:
        return value
    return {
        "truncated": f"error context of {len(encoded):,} characters is not stored in full",
        "excerpt": encoded[:1024],
    }


def outcome_of(
    claimed: ClaimedStep,
    state: StepState,
    *,
    results: dict[str, Any] | None = None,
    error: FailureRecord | None = None,
    duration_ms: float = 0.0,
    events: Events | None = None,
) -> Outcome:
    return Outcome(
        step_id=claimed.step_id,
        task_id=claimed.task_id,
        claim_token=claimed.claim_token,
        attempt=claimed.attempt,
        state=state,
        results=results,
        error=error,
        duration_ms=duration_ms,
        events=events if events is not None else [],
    )


# -- what the handler did --------------------------------------------------------------------------
def completed(
    claimed: ClaimedStep, results: dict[str, Any], duration_ms: float, events: Events
) -> Outcome:
    return outcome_of(
        claimed, StepState.COMPLETE, results=results, duration_ms=duration_ms, events=events
    )


def failed(
    claimed: ClaimedStep,
    exc: BaseException,
    policy: RetryPolicy,
    *,
    backoff_scale: float,
    timeout: float | None,
    duration_ms: float,
    events: Events,
) -> Outcome:
    """Classify a failed attempt: permanent now, retried after a delay, or retries exhausted."""
    if isinstance(exc, (PermanentError, InvalidResultError)):
        error = describe_error(exc, retryable=False)
        return outcome_of(
            claimed, StepState.ERROR, error=error, duration_ms=duration_ms, events=events
        )
    if isinstance(exc, HandlerTimedOut):
        exc = StepTimeoutError(
            f"timed out after {timeout:g}s (handler_config.timeout_seconds)" + exc.note
        )
    error = describe_error(exc, retryable=True)
    retry_after = _retry_after(exc, error)
    if not policy.may_retry(claimed.attempt):
        outcome = outcome_of(
            claimed, StepState.ERROR, error=error, duration_ms=duration_ms, events=events
        )
        if policy.retryable:
            error["message"] = f"{error['message']}{GAVE_UP.format(claimed.attempt)}"
            outcome.exhausted = True  # the store may still hold it while its system is down
        return outcome
    delay = min(policy.delay(claimed.attempt, retry_after) * backoff_scale, MAX_DELAY_SECONDS)
    outcome = outcome_of(
        claimed, StepState.WAITING_RETRY, error=error, duration_ms=duration_ms, events=events
    )
    outcome.retry_delay = delay
    return outcome


def _retry_after(exc: BaseException, error: FailureRecord) -> float | None:
    """The delay a `RetryableError` asks for, when it is a usable number of seconds (else noted)."""
    if not isinstance(exc, RetryableError):
        return None
    value = getattr(exc, "retry_after", None)
    if value is None:
        return None
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    ):
        return float(value)
    error["retry_after_ignored"] = storable_text(safe_str(value), 200)
    return None


# -- what happened around the handler --------------------------------------------------------------
def fan_in(claimed: ClaimedStep) -> Outcome:
    """A fan-out step whose instances all completed: it completes, and the store gathers their
    results into its own (`completion.collect_fanouts`). No handler runs."""
    outcome = outcome_of(claimed, StepState.COMPLETE)
    outcome.collects = True
    return outcome


def given_up(claimed: ClaimedStep, error_class: str, message: str) -> Outcome:
    """The engine fails the step for good, with no handler's fault in it (a child task that
    failed, a signal that did not come): unretried, and no evidence about its dependent system."""
    error: FailureRecord = {
        "class": error_class,
        "message": storable_text(message, MAX_MESSAGE_CHARS),
        "retryable": False,
        "system_fault": False,
        "no_system_evidence": True,
    }
    return outcome_of(claimed, StepState.ERROR, error=error)


def engine_fault(claimed: ClaimedStep, exc: BaseException) -> Outcome:
    """The engine's own code failed while running the attempt: the step fails visibly, unretried."""
    error = describe_error(exc, retryable=False, system_fault=False)
    return outcome_of(claimed, StepState.ERROR, error=error)


def unloadable(
    claimed: ClaimedStep, handler: str, exc: BaseException, *, worker_id: str, backoff_scale: float
) -> Outcome:
    """This worker cannot import the step's handler (a missing module, a deploy half done): hand
    the step back without spending an attempt, for a worker that can, and try again later."""
    message = (
        f"waiting: no worker can load {handler} (worker {worker_id}: "
        f"{storable_text(exc, MAX_MESSAGE_CHARS)})"
    )
    outcome = outcome_of(
        claimed,
        StepState.WAITING_RETRY,
        error={
            "class": "HandlerUnavailable",
            "message": message,
            "handler": handler,
            "retryable": True,
            "system_fault": False,
            "no_system_evidence": True,  # the handler never ran
        },
    )
    outcome.retry_delay = UNLOADABLE_RETRY_SECONDS * backoff_scale
    outcome.refund_attempt = True
    return outcome


def finish(
    outcome: Outcome,
    claimed: ClaimedStep,
    children: list[str] | None,
    gated: frozenset[str] = frozenset(),
) -> Outcome:
    """Complete the outcome with what the claim knows: its system and step, a probe's verdict, and
    a completed step's children (`children` None: they could not be found, the store reads them),
    and whether one of them is `gated` (its template's steps that wait for a decision)."""
    outcome.dependent_system = claimed.dependent_system
    outcome.step = claimed.name
    if claimed.probe:
        outcome.probe = True
        if outcome.transient_failure:
            # the circuit reopens; this attempt does not count against the step
            outcome.state = StepState.WAITING_RETRY
            outcome.refund_attempt = True
            outcome.retry_delay = 0.0
    if outcome.state in (StepState.COMPLETE, StepState.SKIPPED):
        outcome.gates_children = bool(gated) and (
            children is None or any(n in gated for n in children)
        )
        if children is None:
            outcome.children = None
        elif all(n in claimed.step_ids for n in children):
            outcome.children = [claimed.step_ids[n] for n in children]
    return outcome


def refused(outcome: Outcome, exc: BaseException) -> Outcome:
    """The store refused to store `outcome` (a bug, a value the database will not take): stand in
    for it with a failure of its step that names the store's error."""
    error = describe_error(exc, retryable=False, system_fault=False)
    error["class"] = "OutcomeNotStorable"
    error["message"] = storable_text(
        f"the store refused this attempt's outcome ({outcome.state}): {type(exc).__name__}:"
        f" {safe_str(exc)}",
        MAX_MESSAGE_CHARS,
    )
    return dataclasses.replace(
        outcome,
        state=StepState.ERROR,
        results=None,
        error=error,
        events=[],
        children=None,
        retry_delay=0.0,
        refund_attempt=False,
    )
