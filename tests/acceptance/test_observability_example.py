"""The story's event-driven monitoring: checkout orders run with both example subscribers attached.

Faults are injected the way the e-commerce tests do it (scripted service outcomes, a declined card)
plus one slow mailer call, and the test checks what an operator and the business would be told.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tasker import Event, EventBus, Tasker
from tasker.demos.ecommerce import services
from tasker.demos.ecommerce.demo import TEMPLATE, TEMPLATES
from tasker.demos.ecommerce.services import Fault, FaultSettings, Services
from tasker.demos.observability.subscribers import (
    Alert,
    BusinessMetricsSubscriber,
    LogSink,
    MemorySink,
    PerformanceSubscriber,
)
from tasker.demos.observability.wiring import attach, checkout_thresholds
from tasker.events.registration import configured_subscribers
from tests.acceptance.test_ecommerce import order

SLOW_REF = "checkout-slow-mail"


@pytest.fixture
def engine(make_tasker: Callable[..., Tasker]) -> Tasker:
    t = make_tasker(backoff_scale=0.05)
    t.load_templates(TEMPLATES)
    return t


@pytest.fixture
def shop(engine: Tasker, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    svc = services.configure(
        engine.db.writer,
        FaultSettings(rate_limit_retry_after=0.1),
        reader=engine.db.reader,
        reset=True,
    )
    send = svc.mailer.send

    def slow_for_one_order(**kwargs: Any) -> Any:  # the mail relay stalls on one checkout
        if kwargs["order_ref"] == SLOW_REF:
            time.sleep(0.8)
        return send(**kwargs)

    monkeypatch.setattr(svc.mailer, "send", slow_for_one_order)
    yield svc
    services.reset_registry()


CARTS = [
    [{"product_id": 1, "name": "Classic Cotton T-Shirt", "price": 29.99, "quantity": 2}],
    [
        {"product_id": 2, "name": "Canvas Sneakers", "price": 49.99, "quantity": 1},
        {"product_id": 4, "name": "Baseball Cap", "price": 19.99, "quantity": 3},
    ],
    [{"product_id": 3, "name": "Denim Jacket", "price": 89.99, "quantity": 1}],
]


def test_subscribers_report_orders_revenue_durations_and_alerts(
    engine: Tasker, shop: Services
) -> None:
    sink = MemorySink()
    registry = CollectorRegistry()
    monitoring = attach(
        engine,
        sink=sink,
        thresholds_ms={"send_confirmation": 500},
        slow_step_ms=10_000,
        registry=registry,
    )
    shop.faults.script(
        "payment_gateway", Fault.UNAVAILABLE
    )  # the first charge attempt fails, then succeeds
    good = [
        order(cart, customer_id=i, checkout_id=SLOW_REF if i == 1 else f"checkout-{i}")
        for i, cart in enumerate(CARTS)
    ]
    declined = order(
        token="tok_declined_insufficient_funds", customer_id=9, checkout_id="checkout-declined"
    )
    ids = [engine.create_task(TEMPLATE, o).id for o in [*good, declined]]
    try:
        engine.work(until_idle=True)
        assert monitoring.business.flush(timeout=10)
        figures = monitoring.business.snapshot()
    finally:
        monitoring.detach()
    tasks = engine.get_tasks(ids)
    assert [t.status for t in tasks] == ["complete", "complete", "complete", "error"]

    # what the business is told
    assert (figures.orders_completed, figures.orders_failed) == (3, 1)
    expected = sum((Decimal(str(o["payment_info"]["amount"])) for o in good), Decimal("0"))
    assert figures.revenue == {"USD": expected}
    charged = sum(
        (Decimal(str(t.step("validate_cart").results["total"])) for t in tasks[:3]),  # type: ignore[index]
        Decimal("0"),
    )
    assert expected == charged
    durations = figures.checkout_seconds
    assert durations["count"] == 3
    assert durations["min"] is not None and durations["min"] > 0
    assert durations["max"] is not None and durations["max"] >= 0.8  # the order with the slow mail
    assert figures.failures_by_reason == {"PAYMENT_DECLINED": 1}
    assert registry.get_sample_value("checkout_orders_completed_total") == 3
    assert registry.get_sample_value(
        "checkout_revenue_total", {"currency": "USD"}
    ) == pytest.approx(float(expected))
    assert (
        registry.get_sample_value("checkout_orders_failed_total", {"reason": "PAYMENT_DECLINED"})
        == 1
    )

    # what an operator is told
    slow = sink.of_kind("slow_step")
    assert [(a.task_id, a.step) for a in slow] == [(ids[1], "send_confirmation")]
    assert slow[0].figures["duration_ms"] >= 800 and slow[0].figures["threshold_ms"] == 500
    failed = sink.of_kind("step_failed")
    assert [(a.task_id, a.step, a.severity) for a in failed] == [
        (ids[3], "process_payment", "critical")
    ]
    assert failed[0].figures["error_code"] == "PAYMENT_DECLINED"
    retries = sink.of_kind("step_retry")
    assert [(a.step, a.attempt) for a in retries] == [("process_payment", 1)]
    assert retries[0].figures["error_code"] == "GATEWAY_UNAVAILABLE"


def test_detached_subscribers_hear_nothing_more(engine: Tasker, shop: Services) -> None:
    sink = MemorySink()
    monitoring = attach(engine, sink=sink, slow_step_ms=0)
    monitoring.detach()

    engine.run(engine.create_task(TEMPLATE, order()).id)

    assert sink.alerts == []
    assert monitoring.business.snapshot().orders_completed == 0


def test_default_thresholds_come_from_the_step_timeouts(
    engine: Tasker, make_tasker: Callable[..., Tasker]
) -> None:
    assert checkout_thresholds(engine) == {
        "validate_cart": 7500.0,
        "process_payment": 15000.0,
        "update_inventory": 10000.0,
        "create_order": 7500.0,
        "send_confirmation": 5000.0,
    }
    assert checkout_thresholds(make_tasker()) == {}  # an engine without the checkout template


def test_business_subscriber_named_in_configuration(
    engine: Tasker, shop: Services, store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Configuration creates the subscriber without arguments: it reads the configured database
    itself."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TASKER_CONFIG", raising=False)
    monkeypatch.setenv("TASKER_DATABASE_URL", store_url)
    [subscriber] = configured_subscribers(
        ["tasker.demos.observability.subscribers:BusinessMetricsSubscriber"],
        include_entry_points=False,
    )
    assert isinstance(subscriber, BusinessMetricsSubscriber)
    detach = engine.add_subscriber(subscriber)
    try:
        task = engine.run(engine.create_task(TEMPLATE, order()).id)
        assert subscriber.flush(timeout=10)
        figures = subscriber.snapshot()
    finally:
        detach()
        subscriber.close()
    assert (figures.orders_completed, figures.revenue) == (1, {"USD": Decimal("124.76")})
    assert task.status == "complete"


def test_other_templates_are_not_counted_as_orders(
    make_tasker: Callable[..., Tasker], tmp_path: Path
) -> None:
    engine = make_tasker()
    path = tmp_path / "other.yaml"
    path.write_text(
        "name: ping\nnamespace_name: ops\nversion: 1.0.0\nstep_templates:\n"
        "  - name: a\n    handler_class: tests.integration.handlers:Scripted\n"
    )
    engine.load_templates(path)
    business = BusinessMetricsSubscriber(engine)
    engine.add_subscriber(business)
    engine.run(engine.create_task("ops/ping", {"key": "x"}).id)
    assert business.flush(timeout=10)
    business.close()
    assert business.snapshot().orders_completed == 0


def _event(name: str, **payload: Any) -> Event:
    return Event(name, {"task_id": 7, "step": "process_payment", "attempt": 2, **payload})


def test_performance_alert_choices() -> None:
    sink = MemorySink()
    bus = EventBus()
    PerformanceSubscriber(
        slow_step_ms=100, thresholds_ms={"process_payment": 1000}, sink=sink, alert_on_retry=False
    ).attach(bus)
    error = {
        "class": "RetryableError",
        "message": "503",
        "retryable": True,
        "error_code": "GATEWAY_UNAVAILABLE",
    }

    bus.publish(
        "step.completed", _event("step.completed", duration_ms=900.0).payload
    )  # under its own threshold
    bus.publish(
        "step.retry_scheduled", _event("x", duration_ms=5.0, error=error).payload
    )  # retries: not wanted
    bus.publish(
        "step.completed", {**_event("x", duration_ms=150.0).payload, "step": "send_confirmation"}
    )

    assert [(a.kind, a.step, a.figures["threshold_ms"]) for a in sink.alerts] == [
        ("slow_step", "send_confirmation", 100)
    ]


def test_log_sink_logs_critical_alerts_as_errors(caplog: pytest.LogCaptureFixture) -> None:
    sink = LogSink()
    with caplog.at_level("WARNING", logger="tasker.demos.observability.alerts"):
        sink(Alert("step_failed", "critical", "payment declined", 1, "process_payment", 1))
        sink(Alert("slow_step", "warning", "slow mail", 1, "send_confirmation", 1))
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "[step_failed] payment declined"),
        ("WARNING", "[slow_step] slow mail"),
    ]
