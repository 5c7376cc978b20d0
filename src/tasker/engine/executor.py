"""Run one attempt of one step and classify what happened into an `Outcome`.

Sync handlers run in a thread pool and async ones on the worker's event loop. A timed-out async handler
is cancelled; a sync one cannot be interrupted in Python, so its attempt is failed as timed out and
whatever it returns later is dropped with its future.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import time
import traceback
from concurrent.futures import Executor
from typing import Any

from tasker.engine.model import ClaimedStep, Outcome
from tasker.errors import PermanentError, RetryableError, StepFailure, StepTimeoutError
from tasker.handlers.base import StepContext, TaskPort
from tasker.observability import tracing
from tasker.observability.logging import bind_step_context
from tasker.retry import MAX_DELAY_SECONDS, RetryPolicy
from tasker.states import StepState
from tasker.templates.model import StepTemplate, TaskTemplate


def build_context(claimed: ClaimedStep, template: TaskTemplate, step: StepTemplate,
                  tasks: TaskPort | None = None) -> StepContext:
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


def describe_error(exc: BaseException, *, retryable: bool) -> dict[str, Any]:
    err: dict[str, Any] = {"class": type(exc).__name__, "message": str(exc) or type(exc).__name__,
                           "retryable": retryable}
    if isinstance(exc, StepFailure):
        if exc.error_code:
            err["error_code"] = exc.error_code
        if exc.context:
            err["context"] = _jsonable(exc.context)
    else:
        err["traceback"] = "".join(traceback.format_exception(exc, limit=-6))[-4000:]
    return err


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return json.loads(json.dumps(value, default=repr))


log = logging.getLogger("tasker.executor")


async def execute(
    claimed: ClaimedStep,
    template: TaskTemplate,
    step: StepTemplate,
    handler_cls: type,
    policy: RetryPolicy,
    pool: Executor,
    *,
    backoff_scale: float = 1.0,
    tasks: TaskPort | None = None,
) -> Outcome:
    """One attempt, with the step's fields on every log line it causes and, when tracing is on, in its span.

    Runs for every step, so it stays cheap: a few microseconds when debug logs and tracing are off.
    """
    key = template.key
    with bind_step_context(task_id=claimed.task_id, template=key, step=claimed.name, attempt=claimed.attempt,
                           correlation_id=claimed.correlation_id):
        debug = log.isEnabledFor(logging.DEBUG)
        if debug:
            log.debug("attempt %d of step %s started", claimed.attempt, claimed.name)
        traced = tracing.step_span(claimed, key)  # None unless tracing is configured
        if traced is None:
            outcome = await _attempt(claimed, template, step, handler_cls, policy, pool,
                                     backoff_scale=backoff_scale, tasks=tasks)
        else:
            with traced as span:
                outcome = await _attempt(claimed, template, step, handler_cls, policy, pool,
                                         backoff_scale=backoff_scale, tasks=tasks)
                tracing.end_step(span, outcome.state, outcome.error)
        if debug or outcome.state != StepState.COMPLETE:
            _log_outcome(claimed, outcome)
    return outcome


def _log_outcome(claimed: ClaimedStep, outcome: Outcome) -> None:
    if outcome.state == StepState.COMPLETE:
        log.debug("step %s complete in %.1f ms", claimed.name, outcome.duration_ms)
        return
    error = outcome.error or {}
    if outcome.state == StepState.WAITING_RETRY:
        log.info("attempt %d of step %s failed, retry in %.1fs: %s: %.500s", claimed.attempt, claimed.name,
                 outcome.retry_delay, error.get("class"), error.get("message"))
    else:
        log.info("step %s failed after attempt %d: %s: %.500s", claimed.name, claimed.attempt, error.get("class"),
                 error.get("message"))


async def _attempt(
    claimed: ClaimedStep,
    template: TaskTemplate,
    step: StepTemplate,
    handler_cls: type,
    policy: RetryPolicy,
    pool: Executor,
    *,
    backoff_scale: float = 1.0,
    tasks: TaskPort | None = None,
) -> Outcome:
    ctx = build_context(claimed, template, step, tasks)
    timeout = step.timeout_seconds
    started = time.perf_counter()
    retry_after: float | None = None
    try:
        handler = handler_cls()
        process = handler.process
        if inspect.iscoroutinefunction(process):
            result = await asyncio.wait_for(process(ctx), timeout)
        else:
            loop = asyncio.get_running_loop()
            # run_in_executor does not carry context variables: the thread gets this task's (log fields, span).
            call = contextvars.copy_context().run
            result = await asyncio.wait_for(loop.run_in_executor(pool, call, process, ctx), timeout)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, timeout)
        results = _check_results(result, handler_cls)
    except PermanentError as exc:
        return _failed(claimed, started, describe_error(exc, retryable=False), StepState.ERROR, ctx)
    except TimeoutError as exc:
        if timeout is not None and time.perf_counter() - started >= timeout * 0.95:
            error = describe_error(
                StepTimeoutError(f"timed out after {timeout:g}s (handler_config.timeout_seconds)"), retryable=True
            )
        else:  # the handler's own timeout (a socket, say): an ordinary retryable failure
            error = describe_error(exc, retryable=True)
    except RetryableError as exc:
        error = describe_error(exc, retryable=True)
        retry_after = exc.retry_after
        if not exc.system_fault:
            error["system_fault"] = False
    except InvalidResultError as exc:
        return _failed(claimed, started, describe_error(exc, retryable=False), StepState.ERROR, ctx)
    except Exception as exc:
        error = describe_error(exc, retryable=True)
    else:
        return Outcome(
            step_id=claimed.step_id, task_id=claimed.task_id, claim_token=claimed.claim_token,
            attempt=claimed.attempt, state=StepState.COMPLETE, results=results,
            duration_ms=(time.perf_counter() - started) * 1000, events=_events(ctx),
        )
    if not policy.may_retry(claimed.attempt):
        if policy.retryable:
            error["message"] = f"{error['message']} (gave up after {claimed.attempt} attempts)"
        return _failed(claimed, started, error, StepState.ERROR, ctx)
    delay = min(policy.delay(claimed.attempt, retry_after) * backoff_scale, MAX_DELAY_SECONDS)
    outcome = _failed(claimed, started, error, StepState.WAITING_RETRY, ctx)
    outcome.retry_delay = delay
    return outcome


class InvalidResultError(Exception):
    """A handler returned something that is not a JSON object: a bug, so the step fails without retrying."""


def _check_results(result: Any, handler_cls: type) -> dict[str, Any]:
    if result is None:
        return {}
    if not isinstance(result, dict):
        raise InvalidResultError(
            f"{handler_cls.__name__}.process returned {type(result).__name__}; it must return a dict (or None)"
        )
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        raise InvalidResultError(f"{handler_cls.__name__}.process returned results that are not JSON: {exc}") from None
    return result


def _events(ctx: StepContext) -> list[tuple[str, dict[str, Any]]]:
    return [(name, {**_jsonable(payload), "task_id": ctx.task_id, "step_id": ctx.step_id, "step": ctx.step_name,
                    "namespace": ctx.namespace, "attempt": ctx.attempt, "correlation_id": ctx.correlation_id})
            for name, payload in ctx.published]


def _failed(claimed: ClaimedStep, started: float, error: dict[str, Any], state: str, ctx: StepContext) -> Outcome:
    return Outcome(
        step_id=claimed.step_id, task_id=claimed.task_id, claim_token=claimed.claim_token, attempt=claimed.attempt,
        state=state, error=error, duration_ms=(time.perf_counter() - started) * 1000, events=_events(ctx),
    )
