"""Run one attempt of one step and classify whatever happened into an `Outcome`.

Sync handlers run on handler threads (`handler_threads`) and async ones on their own task of the
worker's event loop. Whatever a handler does (raise anything, `SystemExit` and `CancelledError`
included, return something unstorable, hang, swallow its cancellation) ends as a recorded outcome;
only the worker's own cancellation of the attempt passes through. A timeout counts from when the
handler starts. A timed-out async handler is cancelled; a sync one cannot be interrupted in Python,
so its thread is abandoned (and replaced) and whatever it returns later is dropped.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tasker.domain.compensation import undone_by
from tasker.domain.records import ClaimedStep, FailureRecord, Outcome
from tasker.domain.retry import RetryPolicy
from tasker.domain.states import StepState
from tasker.domain.storable import find_unstorable, storable
from tasker.domain.templates import StepTemplate, TaskTemplate
from tasker.engine import clock, outcomes, waits
from tasker.engine.handler_threads import HandlerThreads
from tasker.engine.hooks import Hooks
from tasker.engine.outcomes import HandlerTimedOut, InvalidResultError
from tasker.handlers.base import ServiceCallSink, StepContext, TaskPort, WaitRequest

log = logging.getLogger("tasker.executor")

_NO_HOOKS = Hooks()
_NOT_RESUMED = waits.Resumption()


@dataclass(frozen=True, slots=True)
class Runtime:
    """What every attempt of one worker shares: its handler threads, its backoff scale, the engine
    operations its handlers may call, and its hooks."""

    threads: HandlerThreads
    backoff_scale: float = 1.0
    tasks: TaskPort | None = None
    hooks: Hooks = field(default=_NO_HOOKS)


def build_context(
    claimed: ClaimedStep,
    template: TaskTemplate,
    step: StepTemplate,
    tasks: TaskPort | None = None,
    on_service_call: ServiceCallSink | None = None,
    resumption: waits.Resumption | None = None,
) -> StepContext:
    resumed = resumption or _NOT_RESUMED
    return StepContext(
        task_id=claimed.task_id,
        step_id=claimed.step_id,
        step_name=claimed.name,
        namespace=template.namespace_name,
        task_name=template.name,
        version=template.version,
        context=claimed.context,
        results=template.visible_results(claimed.results),
        handler_config=step.handler_config,
        attempt=claimed.attempt,
        retry_limit=claimed.retry_limit,
        idempotency_key=claimed.idempotency_key,
        correlation_id=claimed.correlation_id,
        dependent_system=claimed.dependent_system,
        declared_events=frozenset(template.declared_events(step)),
        state=resumed.state,
        timed_out=resumed.timed_out,
        declared_signals=step.declared_signals(),
        _clock=clock.now,
        signals=resumed.signals,
        **_item_or_forward(claimed),
        _tasks=tasks,
        _on_service_call=on_service_call,
    )


def _item_or_forward(claimed: ClaimedStep) -> dict[str, Any]:
    """An instance's item and index, or an undo row's step and that step's results (the row
    carries them in its item)."""
    forward = undone_by(claimed.name)
    if forward is None:
        return {"item": claimed.item, "index": claimed.index}
    results = claimed.item if isinstance(claimed.item, dict) else {}
    return {"forward_step": forward, "forward_results": results}


async def execute(
    claimed: ClaimedStep,
    template: TaskTemplate,
    step: StepTemplate,
    handler_cls: type,
    policy: RetryPolicy,
    rt: Runtime,
    resumption: waits.Resumption | None = None,
) -> Outcome:
    """One attempt, inside the scope its hooks open (the step's fields on every log line it causes,
    its span when tracing is on).

    Runs for every step, so it stays cheap: a few microseconds when debug logs are off, nothing more
    for hooks that open no scope.
    """
    scope = rt.hooks.attempt_scope(claimed, template.key)
    if scope is None:
        return await _logged(claimed, template, step, handler_cls, policy, rt, resumption)
    with scope:
        outcome = await _logged(claimed, template, step, handler_cls, policy, rt, resumption)
        scope.finished(outcome)
    return outcome


async def _logged(
    claimed: ClaimedStep,
    template: TaskTemplate,
    step: StepTemplate,
    handler_cls: type,
    policy: RetryPolicy,
    rt: Runtime,
    resumption: waits.Resumption | None,
) -> Outcome:
    debug = log.isEnabledFor(logging.DEBUG)
    if debug:
        log.debug("attempt %d of step %s started", claimed.attempt, claimed.name)
    outcome = await _attempt(claimed, template, step, handler_cls, policy, rt, resumption)
    outcome = waits.with_resumption(outcome, resumption)
    if debug or outcome.state != StepState.COMPLETE:
        _log_outcome(claimed, outcome)
    return outcome


def _log_outcome(claimed: ClaimedStep, outcome: Outcome) -> None:
    if outcome.state == StepState.COMPLETE:
        log.debug("step %s complete in %.1f ms", claimed.name, outcome.duration_ms)
        return
    error: FailureRecord = outcome.error or {"class": "", "message": ""}
    if outcome.state == StepState.WAITING_RETRY and outcome.error is None and outcome.wait_note:
        log.info("step %s: %s", claimed.name, outcome.wait_note)
    elif outcome.state == StepState.WAITING_RETRY:
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
    rt: Runtime,
    resumption: waits.Resumption | None,
) -> Outcome:
    """Run the handler and turn whatever it does into an outcome (`outcomes` decides which): only
    the worker's own cancellation of this attempt (a lost lease, the end of the grace period)
    passes through."""
    ctx = build_context(claimed, template, step, rt.tasks, rt.hooks.service_call, resumption)
    timeout = step.timeout_seconds
    started = time.perf_counter()
    try:
        handler = handler_cls()
        process = handler.process
        if inspect.iscoroutinefunction(process):
            result = await _run_async(process(ctx), timeout)
        elif template.runs_inline(step):
            # Opted in (`run_inline`): no hand-off to a handler thread and back. The worker's loop
            # waits for the handler; a `BaseException` comes back wrapped, as from a thread.
            result = _contained(process, ctx)
            if inspect.isawaitable(result):
                result = await _run_async(result, timeout)
        else:
            # run on another thread, which does not inherit context variables: give it this task's
            # (log fields, span). The timeout counts from when the thread starts the handler.
            started, result = await _run_sync(
                rt.threads, contextvars.copy_context().run, process, ctx, timeout
            )
            if inspect.isawaitable(result):
                remaining = (
                    None if timeout is None else max(0.0, timeout - (time.perf_counter() - started))
                )
                result = await _run_async(result, remaining)
        if isinstance(result, WaitRequest):  # ctx.sleep(...) / ctx.wait_for_signal(...)
            duration_ms = (time.perf_counter() - started) * 1000
            return waits.handler_parked(claimed, result, clock.now(), _events(ctx), duration_ms)
        results = _check_results(result, handler_cls)
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError) and _cancelled_by_worker():
            raise
        return outcomes.failed(
            claimed,
            _unwrap(exc),
            policy,
            backoff_scale=rt.backoff_scale,
            timeout=timeout,
            duration_ms=(time.perf_counter() - started) * 1000,
            events=_events(ctx),
        )
    return outcomes.completed(
        claimed, results, (time.perf_counter() - started) * 1000, _events(ctx)
    )


def _cancelled_by_worker() -> bool:
    """Whether the running attempt is being cancelled by the worker, as opposed to a handler having
    raised `CancelledError` itself (which is the handler's failure, not a lost lease)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


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
    KeyboardInterrupt, GeneratorExit) travels back wrapped, so that awaiting the outcome never
    raises it where asyncio would let it out of the event loop."""
    try:
        return fn(*args)
    except Exception:
        raise
    except BaseException as exc:
        raise _Escaped(exc) from None


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
