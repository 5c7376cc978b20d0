"""In-process metrics and the exposition, on fresh registries; the store-wide gauges are tested end
to end in tests/integration/test_observability.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tasker.domain.errors import TaskerInputError
from tasker.domain.records import ClaimedStep, FailureRecord, Outcome
from tasker.domain.states import StepState
from tasker.domain.templates import TaskTemplate
from tasker.observability import metrics
from tasker.store.database import Database

TEMPLATE = TaskTemplate.model_validate(
    {
        "name": "checkout",
        "namespace_name": "shop",
        "version": "1.2.0",
        "step_templates": [{"name": "charge", "handler_class": "x:Y"}],
    }
)


@pytest.fixture
def fresh() -> Iterator[metrics.EngineMetrics]:
    previous = metrics.set_engine_metrics(metrics.EngineMetrics())
    yield metrics.engine_metrics()
    metrics.set_engine_metrics(previous)


def _claimed(step_id: int, template_id: int = 1) -> ClaimedStep:
    return ClaimedStep(
        step_id=step_id,
        task_id=100 + step_id,
        name="charge",
        template_id=template_id,
        attempt=1,
        retry_limit=3,
        claim_token=1,
        idempotency_key="k",
        dependent_system="payments",
        context={},
        correlation_id="c",
        results={},
        from_state=StepState.READY,
    )


def _outcome(
    step_id: int, state: str, error_class: str | None = None, ms: float = 250.0
) -> Outcome:
    error: FailureRecord | None = (
        {"class": error_class, "message": "x", "retryable": state == "waiting_retry"}
        if error_class
        else None
    )
    return Outcome(
        step_id=step_id,
        task_id=100 + step_id,
        claim_token=1,
        attempt=1,
        state=StepState(state),
        error=error,
        duration_ms=ms,
    )


def _templates(template_id: int) -> TaskTemplate:
    if template_id == 1:
        return TEMPLATE
    raise KeyError(template_id)


def value(m: metrics.EngineMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_a_committed_cycle_counts_accepted_outcomes_only(fresh: metrics.EngineMetrics) -> None:
    done = [
        (_outcome(1, "complete"), _claimed(1)),
        (_outcome(2, "waiting_retry", "Timeout"), _claimed(2)),
        (_outcome(3, "error", "Declined"), _claimed(3)),
        (_outcome(4, "complete"), _claimed(4)),
    ]
    accepted = [done[0][0], done[1][0], done[2][0]]  # step 4 lost its lease: another worker owns it
    metrics.observe_cycle(done, accepted, _templates, claim_seconds=0.004)

    t, s = "shop/checkout@1.2.0", "charge"
    assert value(fresh, "tasker_step_outcomes_total", template=t, step=s, outcome="complete") == 1
    assert value(fresh, "tasker_step_outcomes_total", template=t, step=s, outcome="retry") == 1
    assert value(fresh, "tasker_step_outcomes_total", template=t, step=s, outcome="error") == 1
    assert value(fresh, "tasker_step_retries_total", template=t, step=s) == 1
    assert (
        value(fresh, "tasker_step_failures_total", template=t, step=s, error_class="Timeout") == 1
    )
    assert (
        value(fresh, "tasker_step_failures_total", template=t, step=s, error_class="Declined") == 1
    )
    assert value(fresh, "tasker_step_duration_seconds_count", template=t, step=s) == 3
    assert value(fresh, "tasker_step_duration_seconds_sum", template=t, step=s) == pytest.approx(
        0.75
    )
    assert value(fresh, "tasker_step_duration_seconds_bucket", template=t, step=s, le="0.25") == 3
    assert value(fresh, "tasker_claim_latency_seconds_count") == 1


def test_nothing_accepted_counts_nothing_but_the_claim(fresh: metrics.EngineMetrics) -> None:
    metrics.observe_cycle(
        [(_outcome(1, "complete"), _claimed(1))], [], _templates, claim_seconds=None
    )
    metrics.observe_cycle([], [], _templates, claim_seconds=0.01)
    assert (
        value(
            fresh,
            "tasker_step_outcomes_total",
            template="shop/checkout@1.2.0",
            step="charge",
            outcome="complete",
        )
        is None
    )
    assert value(fresh, "tasker_claim_latency_seconds_count") == 1


def test_an_unknown_template_is_labelled_unknown(fresh: metrics.EngineMetrics) -> None:
    done = [(_outcome(1, "complete"), _claimed(1, template_id=99))]
    metrics.observe_cycle(done, [done[0][0]], _templates, claim_seconds=None)
    assert (
        value(
            fresh,
            "tasker_step_outcomes_total",
            template="unknown",
            step="charge",
            outcome="complete",
        )
        == 1
    )


def test_api_calls_are_observed(fresh: metrics.EngineMetrics) -> None:
    metrics.observe_api_call("payments", "post", "201", 0.12)
    metrics.observe_api_call("payments", "POST", "201", 0.3)
    metrics.observe_api_call("payments", "GET", "timeout", 5.0)
    assert (
        value(
            fresh,
            "tasker_api_call_duration_seconds_count",
            system="payments",
            method="POST",
            status="201",
        )
        == 2
    )
    assert (
        value(
            fresh,
            "tasker_api_call_duration_seconds_count",
            system="payments",
            method="GET",
            status="timeout",
        )
        == 1
    )


def test_exposition_without_a_store_parses(fresh: metrics.EngineMetrics) -> None:
    metrics.observe_api_call("mailer", "POST", "503", 0.05)
    body, content_type = metrics.exposition(None)
    assert content_type == CONTENT_TYPE_LATEST
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {
        "tasker_step_duration_seconds",
        "tasker_step_outcomes",
        "tasker_claim_latency_seconds",
        "tasker_api_call_duration_seconds",
    } <= names
    assert all(n.startswith("tasker_") for n in names)
    assert "tasker_tasks" not in names  # no store, no store gauges


def test_fresh_metrics_start_from_zero(fresh: metrics.EngineMetrics) -> None:
    metrics.observe_api_call("mailer", "POST", "200", 0.05)
    other = metrics.EngineMetrics(CollectorRegistry())
    assert (
        other.registry.get_sample_value(
            "tasker_api_call_duration_seconds_count",
            {"system": "mailer", "method": "POST", "status": "200"},
        )
        is None
    )


def test_an_unreachable_store_answers_database_down(
    fresh: metrics.EngineMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database("postgresql://postgres@127.0.0.1:1/nowhere", migrate=False)
    try:
        collector = metrics.DatabaseCollector(db)
        registry = CollectorRegistry()
        registry.register(collector)  # describing the collector does not touch the store
        with caplog.at_level(logging.WARNING, logger="tasker.metrics"):
            families = {f.name: f for f in collector.collect()}
    finally:
        db.dispose()
    assert families["tasker_database_up"].samples[0].value == 0
    assert "cannot read the store" in caplog.text
    assert "tasker_tasks" not in families


def test_serve_metrics_answers_over_http(fresh: metrics.EngineMetrics) -> None:
    metrics.observe_api_call("inventory", "GET", "200", 0.02)
    server = metrics.serve_metrics(0, addr="127.0.0.1")
    try:
        port = server.server_port
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert response.status_code == 200
        sample = (
            'tasker_api_call_duration_seconds_count{method="GET",status="200",system="inventory"}'
            " 1.0"
        )
        assert sample in response.text
        with pytest.raises(TaskerInputError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            metrics.serve_metrics(port, addr="127.0.0.1")
    finally:
        server.shutdown()
        server.server_close()
