"""OpenTelemetry spans for tasks and step attempts (optional extra `otel`; a no-op when it is not in
use).

A task runs for minutes across many worker processes, so no process can hold its span open. Instead
the trace is *derived*: a task's trace id and its span id are hashes of the task id and correlation
id. Every step attempt, whichever process runs it, starts a span whose parent is that (remote) task
span, so all of a task's attempts land in one trace; the worker that settles the task then records
the task span itself, with its real start and end times and the derived ids.

Zero cost when unused: nothing here imports OpenTelemetry. Tracing is on when the application has
imported it and configured a tracer provider (or passed one to `set_tracer_provider`); otherwise
every function returns at once.

Workers record spans through `TracingHooks`, one of the worker hooks (`tasker.domain.hooks`) a
`Tasker` installs; the task span is made from the settled task the worker read once for all its
hooks, never by reading the store here. Where spans go is a `Tracing`: the hooks' own, or the
process's default one, which follows OpenTelemetry's global provider unless `set_tracer_provider`
names another.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import logging
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

from tasker.domain.hooks import SettledTasks, WorkerHooks
from tasker.domain.states import FINISHED_TASK_STATES, StepState, TaskState

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from tasker.domain.records import ClaimedStep, FailureRecord, Outcome, Task

log = logging.getLogger("tasker.tracing")

SCOPE = "tasker"
_OUTCOMES: dict[str, str] = {
    StepState.COMPLETE: StepState.COMPLETE.value,
    StepState.WAITING_RETRY: "retry",
    StepState.ERROR: StepState.ERROR.value,
}
_FINISHED = {s.value for s in FINISHED_TASK_STATES}


@functools.cache
def _version() -> str:
    try:
        return importlib.metadata.version("tasker-engine")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a bare source tree
        return "unknown"


def _api() -> ModuleType | None:
    return sys.modules.get("opentelemetry.trace")


class Tracing:
    """Where spans go: `provider`, or OpenTelemetry's global tracer provider when None. Holds the
    tracers it made for that provider."""

    def __init__(self, provider: Any | None = None):
        self._override = provider
        self._cache: _Tracers | None = None

    def set_provider(self, provider: Any | None) -> None:
        self._override = provider
        self._cache = None

    def provider(self) -> Any | None:
        if self._override is not None:
            return self._override
        trace = _api()
        if trace is None:  # never imported, so certainly not configured
            return None
        provider = trace.get_tracer_provider()
        if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
            return None
        return provider

    def enabled(self) -> bool:
        """Whether spans are recorded: a provider is given, or OpenTelemetry is imported and a
        global tracer provider is configured."""
        return self.provider() is not None

    def tracers(self) -> _Tracers | None:
        provider = self.provider()
        if provider is None:
            return None
        cached = self._cache
        if cached is not None and cached.provider is provider:
            return cached
        made = self._cache = _make_tracers(provider)
        return made

    def step_span(self, claimed: ClaimedStep, template: str) -> AbstractContextManager[Any] | None:
        """See the module's `step_span`."""
        if self._override is None and "opentelemetry.trace" not in sys.modules:  # the usual case
            return None
        t = self.tracers()
        if t is None:
            return None
        span = t.step.start_span(
            f"tasker.step {claimed.name}",
            context=_task_parent(t, claimed.task_id, claimed.correlation_id),
            attributes={
                "tasker.task_id": claimed.task_id,
                "tasker.template": template,
                "tasker.step": claimed.name,
                "tasker.attempt": claimed.attempt,
                "tasker.correlation_id": claimed.correlation_id,
                "tasker.dependent_system": claimed.dependent_system,
            },
        )
        current: AbstractContextManager[Any] = t.api.use_span(
            span, end_on_exit=True, record_exception=True, set_status_on_exception=True
        )
        return current

    def record_task_spans(self, settled: SettledTasks) -> None:
        """See the module's `record_task_spans`."""
        t = self.tracers()
        if t is None or not any(status in _FINISHED for _, status in settled.settled):
            return
        ids = [task_id for task_id, status in settled.settled if status in _FINISHED]
        try:
            for task in settled.tasks():
                if task.id in ids:
                    _record_task(t, task)
        except Exception:  # tracing must never break the worker
            log.exception("could not record the task spans of tasks %s", ids)


#: The process's default: OpenTelemetry's global provider, or the one `set_tracer_provider` names.
_process = Tracing()


def set_tracer_provider(provider: Any | None) -> None:
    """Trace to `provider` instead of OpenTelemetry's global one; None goes back to the global
    provider (for the process's default `Tracing`)."""
    _process.set_provider(provider)


def enabled() -> bool:
    """Whether spans are recorded: OpenTelemetry is imported and a tracer provider is configured."""
    return _process.enabled()


def task_trace_ids(task_id: int, correlation_id: str) -> tuple[int, int]:
    """The trace id and the task span id of a task, the same in every process.

    The correlation id is part of the hash so that two stores' task 1 do not share a trace.
    """
    digest = hashlib.sha256(f"tasker-task:{task_id}:{correlation_id}".encode()).digest()
    return int.from_bytes(digest[:16], "big") or 1, int.from_bytes(digest[16:24], "big") or 1


def task_trace_id(task_id: int, correlation_id: str) -> str:
    """A task's trace id as the 32 hex digits tracing backends search by."""
    return format(task_trace_ids(task_id, correlation_id)[0], "032x")


class _FixedIds:
    """An id generator that hands out given ids when told to (the task span), else delegates.

    Installed on a tracer of our own scope, so no other instrumentation's ids are affected.
    """

    def __init__(self, fallback: Any):
        self.fallback = fallback
        self._local = threading.local()

    @contextlib.contextmanager
    def forced(self, trace_id: int, span_id: int) -> Any:
        self._local.ids = (trace_id, span_id)
        try:
            yield
        finally:
            self._local.ids = None

    def generate_trace_id(self) -> int:
        ids = getattr(self._local, "ids", None)
        return ids[0] if ids else int(self.fallback.generate_trace_id())

    def generate_span_id(self) -> int:
        ids = getattr(self._local, "ids", None)
        return ids[1] if ids else int(self.fallback.generate_span_id())

    def is_trace_id_random(self) -> bool:
        return True  # sha256 bits are as good as random for ratio samplers


@dataclass
class _Tracers:
    provider: Any
    api: ModuleType
    step: Any
    task: Any
    ids: _FixedIds | None


def _make_tracers(provider: Any) -> _Tracers:
    api = _api()
    assert api is not None
    version = _version()
    task = provider.get_tracer(f"{SCOPE}.tasks", version)
    ids = None
    current = getattr(
        task, "id_generator", None
    )  # the SDK's tracer; other providers get the fallback
    if isinstance(current, _FixedIds):
        ids = current
    elif current is not None:
        ids = _FixedIds(current)
        task.id_generator = ids
    return _Tracers(provider, api, provider.get_tracer(SCOPE, version), task, ids)


def _sampled(provider: Any, trace_id: int) -> bool:
    """The provider's own root decision for this trace id, so a task's step spans and its task span
    agree."""
    sampler = getattr(provider, "sampler", None)
    if sampler is None:
        return True
    try:
        return bool(sampler.should_sample(None, trace_id, "tasker.task").decision.is_sampled())
    except Exception:
        return True


def _task_parent(t: _Tracers, task_id: int, correlation_id: str) -> Any:
    trace_id, span_id = task_trace_ids(task_id, correlation_id)
    flags = t.api.TraceFlags(t.api.TraceFlags.SAMPLED if _sampled(t.provider, trace_id) else 0)
    parent = t.api.SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags)
    return t.api.set_span_in_context(t.api.NonRecordingSpan(parent))


def step_span(claimed: ClaimedStep, template: str) -> AbstractContextManager[Any] | None:
    """A span for one step attempt, current while the handler runs (so `inject_headers` sees it), as
    a context manager that yields the span; pass the span to `end_step` with the attempt's outcome.

    None when tracing is off, so the caller skips even an empty `with` on every attempt.
    """
    return _process.step_span(claimed, template)


def end_step(span: Any, state: str, error: FailureRecord | None) -> None:
    """Put the attempt's outcome on its span: `tasker.outcome`, and for failures the error class and
    status."""
    if span is None:
        return
    span.set_attribute("tasker.outcome", _OUTCOMES.get(state, state))
    if error:
        api = _api()
        cls, message = str(error.get("class", "")), str(error.get("message", ""))
        span.set_attribute("tasker.error_class", cls)
        span.add_event("exception", {"exception.type": cls, "exception.message": message[:1000]})
        if api is not None:
            span.set_status(api.Status(api.StatusCode.ERROR, f"{cls}: {message}"[:256]))


def record_task_spans(settled: SettledTasks) -> None:
    """Record the span of each task that just finished, from its record: created -> finished.

    Called through the hooks of the worker that settled the tasks (off its event loop); a task that
    ends twice (retried after an error) records its span again with the same ids. A failure to get
    the tasks costs their spans only: it is logged, never raised.
    """
    _process.record_task_spans(settled)


def _nanos(at: datetime) -> int:
    return int((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() * 1_000_000_000)


def _record_task(t: _Tracers, task: Task) -> None:
    from opentelemetry.context import Context

    trace_id, span_id = task_trace_ids(task.id, task.correlation_id)
    attributes = {
        "tasker.task_id": task.id,
        "tasker.template": task.template_key,
        "tasker.correlation_id": task.correlation_id,
        "tasker.status": task.status,
        "tasker.steps": len(task.steps),
    }
    name = f"tasker.task {task.template_key}"
    start = _nanos(task.created_at)
    if t.ids is not None:
        with t.ids.forced(trace_id, span_id):
            span = t.task.start_span(
                name, context=Context(), attributes=attributes, start_time=start
            )
    else:  # not the SDK: the span joins the task's trace under the derived parent instead
        span = t.task.start_span(
            name,
            context=_task_parent(t, task.id, task.correlation_id),
            attributes=attributes,
            start_time=start,
        )
    if task.status == TaskState.ERROR:
        failed = [s.name for s in task.steps if s.status == StepState.ERROR]
        span.set_status(
            t.api.Status(t.api.StatusCode.ERROR, f"failed steps: {', '.join(failed)}"[:256])
        )
    span.end(end_time=_nanos(task.finished_at or datetime.now(UTC)))


def inject_headers(headers: dict[str, str]) -> None:
    """Add the current trace context (`traceparent`, `tracestate`) to outgoing HTTP headers, if
    tracing is on."""
    trace = _api()
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return
    from opentelemetry import propagate

    propagate.inject(headers)


class _SpanScope:
    """The attempt span as a worker hook's attempt scope."""

    __slots__ = ("_scope", "_span")

    def __init__(self, scope: AbstractContextManager[Any]):
        self._scope = scope
        self._span: Any = None

    def __enter__(self) -> object:
        self._span = self._scope.__enter__()
        return self._span

    def finished(self, outcome: Outcome) -> None:
        end_step(self._span, outcome.state, outcome.error)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return self._scope.__exit__(exc_type, exc, tb)


class TracingHooks(WorkerHooks):
    """The worker hooks that record spans: one per attempt, one per finished task. To `tracing`,
    or to the process's default `Tracing` when None."""

    def __init__(self, tracing: Tracing | None = None):
        self.tracing = tracing if tracing is not None else _process

    def attempt_scope(self, claimed: ClaimedStep, template: str) -> _SpanScope | None:
        scope = self.tracing.step_span(claimed, template)
        return None if scope is None else _SpanScope(scope)

    def observes_settled_tasks(self) -> bool:
        return self.tracing.enabled()

    def on_tasks_settled(self, settled: SettledTasks) -> None:
        self.tracing.record_task_spans(settled)
