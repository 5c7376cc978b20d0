"""Run one attempt of one step and classify whatever happened into an `Outcome`.

Sync handlers run on handler threads (`handler_threads`) and async ones on their own task of the worker's
event loop. Whatever a handler does (raise anything, `SystemExit` and `CancelledError` included, return
something unstorable, hang, swallow its cancellation) ends as a recorded outcome; only the worker's own
cancellation of the attempt passes through. A timeout counts from when the handler starts. A timed-out
async handler is cancelled; a sync one cannot be interrupted in Python, so its thread is abandoned
(and replaced) and whatever it returns later is dropped.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import math
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from tasker.domain.errors import PermanentError, RetryableError, StepFailure, StepTimeoutError
from tasker.domain.failures import GAVE_UP, is_system_fault
from tasker.domain.records import ClaimedStep, FailureRecord, Outcome
from tasker.domain.retry import MAX_DELAY_SECONDS, RetryPolicy
from tasker.domain.states import StepState
from tasker.domain.storable import (
    MAX_MESSAGE_CHARS,
    find_unstorable,
    safe_str,
    storable,
    storable_text,
)
from tasker.engine.handler_threads import HandlerThreads
from tasker.handlers.base import StepContext, TaskPort
from tasker.observability import tracing
from tasker.observability.logging import bind_step_context
from tasker.templates.model import StepTemplate, TaskTemplate


def build_context(
    claimed: ClaimedStep, template: TaskTemplate, step: StepTemplate, tasks: TaskPort | None = None
) -> StepContext:
    return StepContext(
        task_id=claimed.task_id,
        step_id=claimed.step_id,
        step_name=claimed.name,
        namespace=template.namespace_name,
        task_name=template.name,
        version=template.version,
        context=claimed.context,
        results=claimed.results,
        handler_config=step.handler_config,
        attempt=claimed.attempt,
        retry_limit=claimed.retry_limit,
        idempotency_key=claimed.idempotency_key,
        correlation_id=claimed.correlation_id,
        dependent_system=claimed.dependent_system,
        declared_events=frozenset(template.declared_events(step)),
        _tasks=tasks,
    )


def describe_error(
    exc: BaseException, *, retryable: bool, system_fault: bool | None = None
) -> FailureRecord:
    """The stored form of a failure: class, message (escaped, cut to `MAX_MESSAGE_CHARS`), whether it is
    retried, whether it counts against the dependent system, and where it came from.

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


log = logging.getLogger("tasker.executor")


async def execute(
    claimed: ClaimedStep,
    template: TaskTemplate,
    step: StepTemplate,
    handler_cls: type,
    policy: RetryPolicy,
    threads: HandlerThreads,
    *,
    backoff_scale: float = 1.0,
    tasks: TaskPort | None = None,
) -> Outcome:
    """One attempt, with the step's fields on every log line it causes and, when tracing is on, in its span.

    Runs for every step, so it stays cheap: a few microseconds when debug logs and tracing are off.
    """
    key = template.key
    with bind_step_context(
        task_id=claimed.task_id,
        template=key,
        step=claimed.name,
        attempt=claimed.attempt,
        correlation_id=claimed.correlation_id,
    ):
        debug = log.isEnabledFor(logging.DEBUG)
        if debug:
            log.debug("attempt %d of step %s started", claimed.attempt, claimed.name)
        traced = tracing.step_span(claimed, key)  # None unless tracing is configured
        if traced is None:
            outcome = await _attempt(
                claimed,
                template,
                step,
                handler_cls,
                policy,
                threads,
                backoff_scale=backoff_scale,
                tasks=tasks,
            )
        else:
            with traced as span:
                outcome = await _attempt(
                    claimed,
                    template,
                    step,
                    handler_cls,
                    policy,
                    threads,
                    backoff_scale=backoff_scale,
                    tasks=tasks,
                )
                tracing.end_step(span, outcome.state, outcome.error)
        if debug or outcome.state != StepState.COMPLETE:
            _log_outcome(claimed, outcome)
    return outcome


def _log_outcome(claimed: ClaimedStep, outcome: Outcome) -> None:
    if outcome.state == StepState.COMPLETE:
        log.debug("step %s complete in %.1f ms", claimed.name, outcome.duration_ms)
        return
    error: FailureRecord = outcome.error or {"class": "", "message": ""}
    if outcome.state == StepState.WAITING_RETRY:
        log.info(
            "attempt %d of step %s failed, retry in %.1fs: %s: %.500s",
            claimed.attempt,
            claimed.name,
            outcome.retry_delay,
            error.get("class"),
            error.get("message"),
        )
    else:
        log.info(
            "step %s failed after attempt %d: %s: %.500s",
            claimed.name,
            claimed.attempt,
            error.get("class"),
            error.get("message"),
        )


async def _attempt(
    claimed: ClaimedStep,
    template: TaskTemplate,
    step: StepTemplate,
    handler_cls: type,
    policy: RetryPolicy,
    threads: HandlerThreads,
    *,
    backoff_scale: float = 1.0,
    tasks: TaskPort | None = None,
) -> Outcome:
    """Run the handler and turn whatever it does into an outcome: only the worker's own cancellation of
    this attempt (a lost lease, the end of the grace period) passes through."""
    ctx = build_context(claimed, template, step, tasks)
    timeout = step.timeout_seconds
    started = time.perf_counter()
    try:
        handler = handler_cls()
        process = handler.process
        if inspect.iscoroutinefunction(process):
            result = await _run_async(process(ctx), timeout)
        else:
            # run on another thread, which does not inherit context variables: give it this task's
            # (log fields, span). The timeout counts from when the thread starts the handler.
            started, result = await _run_sync(
                threads, contextvars.copy_context().run, process, ctx, timeout
            )
            if inspect.isawaitable(result):
                remaining = (
                    None if timeout is None else max(0.0, timeout - (time.perf_counter() - started))
                )
                result = await _run_async(result, remaining)
        results = _check_results(result, handler_cls)
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError) and _cancelled_by_worker():
            raise
        return _failure(claimed, started, _unwrap(exc), policy, backoff_scale, ctx, timeout)
    return Outcome(
        step_id=claimed.step_id,
        task_id=claimed.task_id,
        claim_token=claimed.claim_token,
        attempt=claimed.attempt,
        state=StepState.COMPLETE,
        results=results,
        duration_ms=(time.perf_counter() - started) * 1000,
        events=_events(ctx),
    )


def _cancelled_by_worker() -> bool:
    """Whether the running attempt is being cancelled by the worker, as opposed to a handler having
    raised `CancelledError` itself (which is the handler's failure, not a lost lease)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _failure(
    claimed: ClaimedStep,
    started: float,
    exc: BaseException,
    policy: RetryPolicy,
    backoff_scale: float,
    ctx: StepContext,
    timeout: float | None,
) -> Outcome:
    """Classify a failed attempt: permanent now, retried after a delay, or retries exhausted."""
    if isinstance(exc, (PermanentError, InvalidResultError)):
        return _failed(claimed, started, describe_error(exc, retryable=False), StepState.ERROR, ctx)
    if isinstance(exc, HandlerTimedOut):
        exc = StepTimeoutError(
            f"timed out after {timeout:g}s (handler_config.timeout_seconds)" + exc.note
        )
    error = describe_error(exc, retryable=True)
    retry_after = _retry_after(exc, error)
    if not policy.may_retry(claimed.attempt):
        outcome = _failed(claimed, started, error, StepState.ERROR, ctx)
        if policy.retryable:
            error["message"] = f"{error['message']}{GAVE_UP.format(claimed.attempt)}"
            outcome.exhausted = True  # the store may still hold it while its system is down
        return outcome
    delay = min(policy.delay(claimed.attempt, retry_after) * backoff_scale, MAX_DELAY_SECONDS)
    outcome = _failed(claimed, started, error, StepState.WAITING_RETRY, ctx)
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


class HandlerTimedOut(Exception):
    """The handler ran past its timeout; `note` says if it had to be left running."""

    def __init__(self, note: str = ""):
        super().__init__(note)
        self.note = note


class _Escaped(Exception):
    """Carries a `BaseException` (SystemExit, KeyboardInterrupt, GeneratorExit, a handler's own
    CancelledError) out of a handler's task: raised bare, asyncio would let it out of the event loop
    and take the whole worker down."""

    def __init__(self, original: BaseException):
        super().__init__(type(original).__name__)
        self.original = original


def _unwrap(exc: BaseException) -> BaseException:
    return exc.original if isinstance(exc, _Escaped) else exc


#: How long a timed-out async handler has to honour its cancellation before it is left running.
CANCEL_GRACE_SECONDS = 1.0


async def _guarded(awaitable: Awaitable[Any]) -> Any:
    try:
        return await awaitable
    except asyncio.CancelledError as exc:
        if _cancelled_by_worker():
            raise
        raise _Escaped(exc) from None
    except Exception:
        raise
    except BaseException as exc:
        raise _Escaped(exc) from None


async def _run_async(awaitable: Awaitable[Any], timeout: float | None) -> Any:
    """Await a handler's coroutine on its own task, within `timeout`.

    A handler that swallows its cancellation cannot finish the attempt as complete: once the timeout
    passes, the attempt is timed out whatever the handler does next.
    """
    if timeout is None:  # nothing to time: no task of its own (the common, cheap case)
        return await _guarded(awaitable)
    task = asyncio.ensure_future(_guarded(awaitable))
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task in done:
        return task.result()
    task.cancel()
    finished, _ = await asyncio.wait({task}, timeout=CANCEL_GRACE_SECONDS)
    task.add_done_callback(_discard)
    if finished:
        raise HandlerTimedOut()
    raise HandlerTimedOut(
        f"; it ignored cancellation for {CANCEL_GRACE_SECONDS:g}s and was left running"
    )


def _discard(task: asyncio.Future[Any]) -> None:
    """Retrieve a dropped attempt's exception so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


async def _run_sync(
    threads: HandlerThreads,
    fn: Callable[..., Any],
    process: Any,
    ctx: StepContext,
    timeout: float | None,
) -> tuple[float, Any]:
    """Run a sync handler on a handler thread; returns (when it started, what it returned)."""
    call = threads.submit(_contained, fn, process, ctx)
    finished = asyncio.wrap_future(call.done)
    try:
        if timeout is not None:
            # Wait for the outcome first: most handlers finish before their timeout, so one wake-up
            # does. Only when the timeout has passed, find out whether it counted from a start.
            done, _ = await asyncio.wait({finished}, timeout=timeout)
            while not done:
                if call.started_at is None:  # still queued for a thread: no time is spent yet
                    done, _ = await asyncio.wait({finished}, timeout=QUEUED_POLL_SECONDS)
                    continue
                elapsed = time.perf_counter() - call.started_at
                if elapsed >= timeout:
                    call.abandon()
                    finished.add_done_callback(_discard)
                    raise HandlerTimedOut()
                done, _ = await asyncio.wait({finished}, timeout=timeout - elapsed)
        result = await finished  # done by now when timed; else the usual case: one wake-up
    except asyncio.CancelledError:  # the worker gave up on the attempt: so does the thread pool
        call.abandon()
        raise
    return (call.started_at if call.started_at is not None else time.perf_counter()), result


#: How often a timed step still queued for a handler thread looks again whether its handler started.
QUEUED_POLL_SECONDS = 0.05


def _contained(fn: Callable[..., Any], *args: Any) -> Any:
    """Run on the handler thread: a `BaseException` that is not an `Exception` (SystemExit,
    KeyboardInterrupt, GeneratorExit) travels back wrapped, so that awaiting the outcome never raises
    it where asyncio would let it out of the event loop."""
    try:
        return fn(*args)
    except Exception:
        raise
    except BaseException as exc:
        raise _Escaped(exc) from None


class InvalidResultError(Exception):
    """A handler returned something that cannot be stored as a JSON object: a bug, so the step fails
    without retrying, with the path of the first offending value."""


def _check_results(result: Any, handler_cls: type) -> dict[str, Any]:
    if result is None:
        return {}
    if not isinstance(result, dict):
        raise InvalidResultError(
            f"{handler_cls.__name__}.process returned {type(result).__name__}; it must return a"
            " dict (or None)"
        )
    problem = find_unstorable(result)
    if problem is not None:
        raise InvalidResultError(
            f"{handler_cls.__name__}.process returned results that cannot be stored: {problem}"
        )
    return result


def _events(ctx: StepContext) -> list[tuple[str, dict[str, Any]]]:
    return [
        (
            name,
            {
                **storable(payload),
                "task_id": ctx.task_id,
                "step_id": ctx.step_id,
                "step": ctx.step_name,
                "namespace": ctx.namespace,
                "attempt": ctx.attempt,
                "correlation_id": ctx.correlation_id,
            },
        )
        for name, payload in ctx.published
    ]


def _failed(
    claimed: ClaimedStep,
    started: float,
    error: FailureRecord,
    state: StepState,
    ctx: StepContext,
) -> Outcome:
    return Outcome(
        step_id=claimed.step_id,
        task_id=claimed.task_id,
        claim_token=claimed.claim_token,
        attempt=claimed.attempt,
        state=state,
        error=error,
        duration_ms=(time.perf_counter() - started) * 1000,
        events=_events(ctx),
    )
