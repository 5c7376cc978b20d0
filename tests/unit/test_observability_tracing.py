"""Tracing without a store: derived ids, the no-op path, the attempt span, propagation and sampling.

Task spans and whole task runs are tested in tests/integration/test_observability.py.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased

from tasker.domain.records import ClaimedStep
from tasker.domain.states import StepState
from tasker.observability import tracing
from tasker.observability.logging import configure_logging


def _claimed(task_id: int = 5, attempt: int = 1, correlation_id: str = "corr-1") -> ClaimedStep:
    return ClaimedStep(
        step_id=50,
        task_id=task_id,
        name="charge",
        template_id=1,
        attempt=attempt,
        retry_limit=3,
        claim_token=1,
        idempotency_key="k",
        dependent_system="payments",
        context={},
        correlation_id=correlation_id,
        results={},
        from_state=StepState.READY,
    )


def _scope(**claim: object) -> AbstractContextManager[Any]:
    """The attempt span's scope, which exists only when tracing is on."""
    scope = tracing.step_span(_claimed(**claim), "shop/checkout@1.0.0")  # type: ignore[arg-type]
    assert scope is not None
    return scope


@pytest.fixture
def no_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.delenv("OTEL_PYTHON_TRACER_PROVIDER", raising=False)
    tracing.set_tracer_provider(None)


def _provider(sampler: Sampler | None = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler) if sampler is not None else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    provider, exp = _provider()
    tracing.set_tracer_provider(provider)
    yield exp
    tracing.set_tracer_provider(None)


def test_trace_ids_are_derived_from_the_task() -> None:
    a = tracing.task_trace_ids(1, "corr-a")
    assert a == tracing.task_trace_ids(1, "corr-a")  # any process computes the same ids
    assert a != tracing.task_trace_ids(2, "corr-a")
    assert a != tracing.task_trace_ids(1, "corr-b")  # task 1 of another store
    assert 0 < a[0] < 2**128 and 0 < a[1] < 2**64
    assert tracing.task_trace_id(1, "corr-a") == format(a[0], "032x")


def test_everything_is_a_no_op_without_a_provider(no_provider: None) -> None:
    assert not tracing.enabled()
    assert tracing.step_span(_claimed(), "shop/checkout@1.0.0") is None
    headers: dict[str, str] = {}
    tracing.inject_headers(headers)
    assert headers == {}
    tracing.end_step(None, "error", {"class": "X", "message": "y"})


def test_a_global_provider_turns_tracing_on(
    no_provider: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider, exporter = _provider()
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    assert tracing.enabled()
    with _scope():
        pass
    assert [s.name for s in exporter.get_finished_spans()] == ["tasker.step charge"]


def test_the_attempt_span_is_current_and_parented_to_the_task(
    exporter: InMemorySpanExporter,
) -> None:
    trace_id, task_span_id = tracing.task_trace_ids(5, "corr-1")
    with _scope(attempt=2) as span:
        headers: dict[str, str] = {}
        tracing.inject_headers(headers)
        tracing.end_step(
            span, "waiting_retry", {"class": "GatewayTimeout", "message": "no answer in 5s"}
        )
    (done,) = exporter.get_finished_spans()
    assert headers["traceparent"] == f"00-{trace_id:032x}-{done.context.span_id:016x}-01"
    assert done.context.trace_id == trace_id
    assert done.parent is not None and done.parent.span_id == task_span_id and done.parent.is_remote
    assert done.attributes == {
        "tasker.task_id": 5,
        "tasker.template": "shop/checkout@1.0.0",
        "tasker.step": "charge",
        "tasker.attempt": 2,
        "tasker.correlation_id": "corr-1",
        "tasker.dependent_system": "payments",
        "tasker.outcome": "retry",
        "tasker.error_class": "GatewayTimeout",
    }
    assert done.status.status_code.name == "ERROR"
    assert done.events[0].name == "exception"
    assert (done.events[0].attributes or {})["exception.type"] == "GatewayTimeout"


def test_a_successful_attempt_has_no_error_status(exporter: InMemorySpanExporter) -> None:
    with _scope() as span:
        tracing.end_step(span, "complete", None)
    (done,) = exporter.get_finished_spans()
    assert done.attributes is not None
    assert done.attributes["tasker.outcome"] == "complete"
    assert "tasker.error_class" not in done.attributes
    assert done.status.status_code.name == "UNSET"


def test_an_exception_through_the_span_is_recorded(exporter: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError), _scope():
        raise RuntimeError("cancelled mid-attempt")
    (done,) = exporter.get_finished_spans()
    assert done.status.status_code.name == "ERROR"


def test_log_lines_name_the_current_span(exporter: InMemorySpanExporter) -> None:
    root = logging.getLogger()
    handlers, level, config = list(root.handlers), root.level, structlog.get_config()
    buf = io.StringIO()
    configure_logging("json", "INFO", stream=buf)
    try:
        with _scope():
            logging.getLogger("tests.tracing").info("inside")
        logging.getLogger("tests.tracing").info("outside")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.configure(**config)
    inside, outside = (json.loads(line) for line in buf.getvalue().splitlines())
    (span,) = exporter.get_finished_spans()
    assert inside["trace_id"] == format(span.context.trace_id, "032x")
    assert inside["span_id"] == format(span.context.span_id, "016x")
    assert "trace_id" not in outside


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_step_spans_follow_the_providers_sampling_of_the_task(ratio: float) -> None:
    """The attempt spans of a task are kept or dropped together, as the provider would decide for
    the task."""
    provider, exporter = _provider(ParentBased(TraceIdRatioBased(ratio)))
    tracing.set_tracer_provider(provider)
    try:
        for task_id in range(1, 6):
            with _scope(task_id=task_id):
                pass
    finally:
        tracing.set_tracer_provider(None)
    assert len(exporter.get_finished_spans()) == (5 if ratio else 0)
