"""Durable waits in a worker: a step's own `sleep` / `wait_for`, and handlers that park themselves.

Before a step's handler runs (or instead of it, for a step that only waits), `before_handler`
decides from what the claim read (`tasker.store.signals.WaitLookup`: the step's stored wait and the
signals of its task that it declares) whether the step parks, completes, times out, or runs its
handler, and with what (`Resumption`). A handler that returns `ctx.sleep(...)` or
`ctx.wait_for_signal(...)` parks through `handler_parked`. A parked step is an outcome like any
other (`waiting_retry`, its attempt given back, `run_at` at the end of its wait), stored with its
wait (`Outcome.wait`) by the general completion path (`tasker.store.signals.record_waits`).

The rules themselves are pure, in `tasker.domain.waits`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tasker.domain.expressions import ExpressionFailure
from tasker.domain.records import ClaimedStep, Outcome
from tasker.domain.states import StepState
from tasker.domain.storable import find_unstorable
from tasker.domain.templates import StepTemplate, TaskTemplate
from tasker.domain.waits import (
    OnTimeout,
    Wait,
    WaitKind,
    WaitLookup,
    WaitStatus,
    duration_seconds,
    remaining_seconds,
    resume,
    signal_results,
    wake_time,
)
from tasker.engine.outcomes import given_up, outcome_of
from tasker.handlers.base import WaitRequest

#: The failure class of a `wait_for` step whose signal did not come in time (`on_timeout: error`).
SIGNAL_TIMEOUT = "SignalTimeout"
#: The failure class of a wait that cannot be set up (a sleep expression that fails, a state that
#: is not JSON).
WAIT_FAILED = "WaitFailed"


#: Reads a step's `WaitLookup`: (task_id, step_id, signal names) -> lookup (blocking).
FindWait = Callable[[int, int, frozenset[str]], WaitLookup]


@dataclass(frozen=True)
class Resumption:
    """What a handler is called with after the step's waits, and what its outcome stores."""

    #: What the handler passed as `state` when it parked (None on its first call).
    state: Any = None
    timed_out: bool = False
    signals: Mapping[str, Any] = field(default_factory=dict)
    #: When set, the outcome stores `wait` (None clears it) and this note as the step's decision.
    note: str | None = None
    wait: Wait | None = None


def needs_lookup(step: StepTemplate, claimed: ClaimedStep) -> bool:
    """Whether a claim must read the step's wait and signals before it runs: the step waits or
    declares signals, or it was parked (a handler's own wait, or a retry: one read by key)."""
    return claimed.from_state == StepState.WAITING_RETRY or step.waits or bool(step.signals)


def before_handler(
    claimed: ClaimedStep,
    template: TaskTemplate,
    step: StepTemplate,
    found: WaitLookup,
    now: datetime,
) -> Outcome | Resumption:
    """The outcome that stands for this attempt (park, complete, time out), or how to call the
    handler."""
    wait = found.wait
    if wait is not None and wait.handler:
        # The handler parked itself: it is called again once that wait is over.
        status = resume(wait, now, wait.signal in found.signals)
        if status == WaitStatus.WAITING:
            return park(claimed, wait, now)  # woken early (another signal, an operator): again
        return Resumption(
            state=wait.state,
            timed_out=status == WaitStatus.TIMED_OUT,
            signals=found.signals,
            note=wait.describe_end(status),
            wait=None,
        )
    if not step.waits or (wait is not None and wait.over):
        return Resumption(signals=found.signals)
    return _own_wait(claimed, template, step, found, wait, now)


def _own_wait(
    claimed: ClaimedStep,
    template: TaskTemplate,
    step: StepTemplate,
    found: WaitLookup,
    wait: Wait | None,
    now: datetime,
) -> Outcome | Resumption:
    """A step's own `sleep` or `wait_for`: start it, go on waiting, or end it."""
    if wait is None:
        kind = WaitKind.SLEEP if step.sleep is not None else WaitKind.SIGNAL
        if kind == WaitKind.SLEEP:
            try:
                seconds: float | None = _sleep_seconds(claimed, template, step)
            except ValueError as exc:
                return _failed(claimed, WAIT_FAILED, f"sleep: {exc}")
        else:
            seconds = step.wait_timeout
        until = None if seconds is None else wake_time(now, seconds)
        wait = Wait(kind, until, step.wait_for, since=now)
    status = resume(wait, now, wait.signal in found.signals)
    if status == WaitStatus.WAITING:
        return park(claimed, wait, now)
    ended = Wait(wait.kind, wait.until, wait.signal, since=wait.since, over=True)
    note = wait.describe_end(status)
    if status == WaitStatus.TIMED_OUT:
        on_timeout = step.on_timeout or OnTimeout.ERROR
        if on_timeout == OnTimeout.ERROR:
            return _failed(
                claimed,
                SIGNAL_TIMEOUT,
                f"{note}; fix: send it (tasker tasks signal {claimed.task_id} {wait.signal}) and"
                f" retry the step, or resolve it by hand",
                note=note,
                wait=ended,
            )
        if on_timeout == OnTimeout.SKIP:
            return _with_wait(outcome_of(claimed, StepState.SKIPPED), note, ended)
    if step.handler_class is None:
        results: dict[str, Any]
        if status == WaitStatus.RECEIVED:
            results = signal_results(found.signals.get(wait.signal or ""))
        elif status == WaitStatus.TIMED_OUT:
            results = {"timed_out": True}
        else:
            results = {"slept_until": (wait.until or now).isoformat()}
        return _with_wait(outcome_of(claimed, StepState.COMPLETE, results=results), note, ended)
    return Resumption(
        timed_out=status == WaitStatus.TIMED_OUT, signals=found.signals, note=note, wait=ended
    )


def _sleep_seconds(claimed: ClaimedStep, template: TaskTemplate, step: StepTemplate) -> float:
    """A step's sleep in seconds: its constant, or its expression's value (seconds or a
    duration), over the task's context and the ancestors' results."""
    if not isinstance(step.sleep, str):
        return float(step.sleep or 0.0)
    expression = template.controls()[step.name].sleep
    assert expression is not None
    try:
        value = expression.evaluate(
            claimed.context, dict(template.visible_results(claimed.results))
        )
    except ExpressionFailure as exc:
        raise ValueError(f"`{expression.source}` failed: {exc}") from None
    try:
        return duration_seconds(value)
    except ValueError as exc:
        raise ValueError(f"`{expression.source}` gave {exc}") from None


def park(claimed: ClaimedStep, wait: Wait, now: datetime) -> Outcome:
    """The outcome that parks a step until its wait is over: `waiting_retry`, the attempt given
    back, `run_at` at the wait's end (none: until its signal wakes it)."""
    outcome = outcome_of(claimed, StepState.WAITING_RETRY)
    outcome.refund_attempt = True  # waiting is no attempt
    seconds = remaining_seconds(wait, now)
    if seconds is None:
        outcome.parks = True
    else:
        outcome.retry_delay = seconds
    return _with_wait(outcome, wait.describe(), wait)


def handler_parked(
    claimed: ClaimedStep,
    request: WaitRequest,
    now: datetime,
    events: list[tuple[str, dict[str, Any]]],
    duration_ms: float,
) -> Outcome:
    """The outcome of a handler that returned `ctx.sleep(...)` or `ctx.wait_for_signal(...)`."""
    problem = find_unstorable(request.state, "state")
    if problem is not None:
        return _failed(
            claimed,
            WAIT_FAILED,
            f"the state to wait with cannot be stored: {problem}; pass JSON (dicts, lists,"
            " strings, numbers)",
        )
    until = None if request.seconds is None else wake_time(now, request.seconds)
    wait = Wait(request.kind, until, request.signal, request.state, since=now, handler=True)
    outcome = park(claimed, wait, now)
    outcome.events = events
    outcome.duration_ms = duration_ms
    return outcome


def with_resumption(outcome: Outcome, resumption: Resumption | None) -> Outcome:
    """Store the end of the step's wait with the outcome of the handler that ran after it (unless
    the handler parked again)."""
    if resumption is not None and resumption.note is not None and outcome.wait_note is None:
        _with_wait(outcome, resumption.note, resumption.wait)
    return outcome


def _with_wait(outcome: Outcome, note: str, wait: Wait | None) -> Outcome:
    outcome.wait = None if wait is None else wait.to_json()
    outcome.wait_note = note
    outcome.waits_for = (
        wait.signal if wait is not None and _parked_on_signal(outcome, wait) else None
    )
    return outcome


def _parked_on_signal(outcome: Outcome, wait: Wait) -> bool:
    return outcome.state == StepState.WAITING_RETRY and wait.kind == WaitKind.SIGNAL


def _failed(
    claimed: ClaimedStep,
    cls: str,
    message: str,
    *,
    note: str | None = None,
    wait: Wait | None = None,
) -> Outcome:
    outcome = given_up(claimed, cls, message)
    return outcome if note is None else _with_wait(outcome, note, wait)
