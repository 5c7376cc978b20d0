"""Event-driven monitoring of the checkout: business figures and performance alerts, as two
subscribers.

`BusinessMetricsSubscriber` counts what the business cares about (orders completed, revenue, how
long a checkout takes, why orders failed) from the `task.completed` and `task.failed` events of
`ecommerce/process_order`. Task events carry only the task's id, and the revenue lives in the step
results (`process_payment.amount_charged`), so the subscriber reads the task back from the store: on
a thread of its own, because events are delivered on the worker's loop and a subscriber must return
at once.

`PerformanceSubscriber` needs nothing but the step events' payloads (`duration_ms`, `error`,
`attempt`): it raises an alert for an attempt slower than its threshold, a step that failed for
good, and a retry. Alerts go to a sink, any callable taking an `Alert`: `LogSink` (the default) logs
them; `MemorySink` keeps them for tests and dashboards; a pager or a chat webhook is a few lines
(keep it quick, or queue).

Both can be named in configuration (`subscribers = ["tasker.demos.observability.subscribers:
BusinessMetricsSubscriber"]`), which creates them without arguments and hands them the engine
through `bind`, so the business subscriber reads tasks through the engine it is attached to. In
code, prefer `tasker.demos.observability.wiring.attach(engine)`.
"""

from __future__ import annotations

import atexit
import logging
import math
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from tasker import Event, Events, StepState, Subscriber, Tasker

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("tasker.demos.observability")

CHECKOUT = ("ecommerce", "process_order")


# -- alerts ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Alert:
    """Something an operator should look at: `kind` is slow_step, step_failed or step_retry."""

    kind: str
    severity: str  # "warning" or "critical"
    message: str
    task_id: int
    step: str
    attempt: int
    figures: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


AlertSink = Callable[[Alert], None]


class LogSink:
    """Alerts as log lines: critical ones at ERROR, the others at WARNING."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("tasker.demos.observability.alerts")

    def __call__(self, alert: Alert) -> None:
        level = logging.ERROR if alert.severity == "critical" else logging.WARNING
        self.logger.log(level, "[%s] %s", alert.kind, alert.message, extra={"alert": alert.figures})


class MemorySink:
    """Keeps every alert (thread-safe): for tests, demos, or a dashboard that polls."""

    def __init__(self) -> None:
        self._alerts: list[Alert] = []
        self._lock = threading.Lock()

    def __call__(self, alert: Alert) -> None:
        with self._lock:
            self._alerts.append(alert)

    @property
    def alerts(self) -> list[Alert]:
        with self._lock:
            return list(self._alerts)

    def of_kind(self, kind: str) -> list[Alert]:
        return [a for a in self.alerts if a.kind == kind]


class PerformanceSubscriber(Subscriber):
    """Alerts on slow attempts, on steps that failed for good, and (optionally) on each retry."""

    subscribed_events = (Events.STEP_COMPLETED, Events.STEP_FAILED, Events.STEP_RETRY_SCHEDULED)

    def __init__(
        self,
        *,
        slow_step_ms: float = 5000.0,
        thresholds_ms: Mapping[str, float] | None = None,
        sink: AlertSink | None = None,
        alert_on_retry: bool = True,
    ) -> None:
        self.slow_step_ms = slow_step_ms
        self.thresholds_ms = dict(thresholds_ms or {})
        self.sink: AlertSink = sink or LogSink()
        self.alert_on_retry = alert_on_retry

    def threshold_ms(self, step: str) -> float:
        """The slow-attempt threshold of a step: its own, else the default."""
        return self.thresholds_ms.get(step, self.slow_step_ms)

    def _emit(self, kind: str, severity: str, event: Event, message: str, **figures: Any) -> None:
        p = event.payload
        self.sink(
            Alert(
                kind,
                severity,
                message,
                int(p["task_id"]),
                str(p.get("step")),
                int(p.get("attempt") or 0),
                figures,
            )
        )

    def _check_speed(self, event: Event) -> None:
        p = event.payload
        duration = p.get("duration_ms")
        threshold = self.threshold_ms(str(p.get("step")))
        if duration is not None and duration > threshold:
            self._emit(
                "slow_step",
                "warning",
                event,
                f"step {p['step']} of task {p['task_id']} took {duration:.0f} ms "
                f"(attempt {p.get('attempt')}, threshold {threshold:.0f} ms)",
                duration_ms=round(duration, 1),
                threshold_ms=threshold,
            )

    def handle_step_completed(self, event: Event) -> None:
        self._check_speed(event)

    def handle_step_failed(self, event: Event) -> None:
        p = event.payload
        error = p.get("error") or {}
        self._emit(
            "step_failed",
            "critical",
            event,
            f"step {p['step']} of task {p['task_id']} failed for good on attempt"
            f" {p.get('attempt')}: {error.get('class')}: {error.get('message')}",
            error_class=error.get("class"),
            error_code=error.get("error_code"),
            retryable=error.get("retryable"),
        )
        self._check_speed(event)

    def handle_step_retry_scheduled(self, event: Event) -> None:
        self._check_speed(event)
        if not self.alert_on_retry:
            return
        p = event.payload
        error = p.get("error") or {}
        delay = p.get("retry_in_seconds")
        when = f"in {delay:.3g}s" if isinstance(delay, int | float) else "soon"
        self._emit(
            "step_retry",
            "warning",
            event,
            f"step {p['step']} of task {p['task_id']} failed attempt {p.get('attempt')} "
            f"({error.get('class')}: {error.get('message')}); retrying {when}",
            error_class=error.get("class"),
            error_code=error.get("error_code"),
            retry_in_seconds=delay,
        )


# -- business metrics ------------------------------------------------------------------------------
@dataclass(frozen=True)
class BusinessMetrics:
    """A snapshot of the checkout's business figures (durations in seconds, start to finish)."""

    orders_completed: int
    orders_failed: int
    revenue: dict[str, Decimal]
    checkout_seconds: dict[str, float | int | None]
    failures_by_reason: dict[str, int]


def _nearest_rank(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(p * len(sorted_values)) - 1)]


class BusinessMetricsSubscriber(Subscriber):
    """Orders completed, revenue per currency, checkout duration and failure reasons of the
    checkout.

    Pass a prometheus_client `CollectorRegistry` to export the same figures as
    `checkout_orders_completed_total`, `checkout_orders_failed_total{reason}`,
    `checkout_revenue_total{currency}` and the `checkout_duration_seconds` histogram.
    """

    subscribed_events = (Events.TASK_COMPLETED, Events.TASK_FAILED)

    def __init__(
        self,
        engine: Tasker | None = None,
        *,
        template: tuple[str, str] = CHECKOUT,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._engine = engine
        self._own_engine = False
        self.template = template
        self._lock = threading.Lock()
        self._completed: set[int] = set()
        self._failed: dict[int, str] = {}
        self._revenue: dict[str, Decimal] = {}
        self._durations: list[float] = []
        self._queue: queue.Queue[tuple[str, int] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._prometheus = _Exported(registry) if registry is not None else None

    def bind(self, engine: Tasker) -> None:
        """Read tasks through `engine` (instead of opening the configured database)."""
        self._engine = engine

    # Delivery happens on the worker's loop: only enqueue there, read the store on our own thread.
    def handle_task_completed(self, event: Event) -> None:
        self._enqueue("completed", int(event.payload["task_id"]))

    def handle_task_failed(self, event: Event) -> None:
        self._enqueue("failed", int(event.payload["task_id"]))

    def _enqueue(self, outcome: str, task_id: int) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._drain, name="business-metrics", daemon=True
                )
                self._thread.start()
                atexit.register(
                    self.flush, 5.0
                )  # a short-lived process (`tasker run`) still records its task
        self._queue.put((outcome, task_id))

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._record(*item)
            except Exception:
                log.exception(
                    "business metrics: could not record task %s", item[1] if item else None
                )
            finally:
                self._queue.task_done()

    def _tasks(self) -> Tasker:
        if self._engine is None:  # created from configuration, without arguments
            from tasker.settings import Settings

            self._engine = Tasker(Settings.load().database_url, migrate=False)
            self._own_engine = True
        return self._engine

    def _record(self, outcome: str, task_id: int) -> None:
        task = self._tasks().get_task(task_id)
        if (task.namespace, task.name) != self.template:
            return
        if outcome == "failed":
            failed = next((s for s in task.steps if s.status == StepState.ERROR), None)
            reason = (
                ((failed.last_error and failed.last_error.get("error_code")) or failed.name)
                if failed
                else task.status
            )
            with self._lock:
                self._failed[task_id] = str(reason)
            log.info("checkout of task %s failed: %s", task_id, reason)
            if self._prometheus:
                self._prometheus.failed.labels(str(reason)).inc()
            return
        payment = next((s.results or {} for s in task.steps if s.name == "process_payment"), {})
        amount = Decimal(str(payment.get("amount_charged", 0)))
        currency = str(payment.get("currency", "USD"))
        duration = task.duration_seconds
        with self._lock:
            if task_id in self._completed:
                return  # an event delivered twice counts once
            self._completed.add(task_id)
            self._failed.pop(task_id, None)  # failed first, completed after an operator's retry
            self._revenue[currency] = self._revenue.get(currency, Decimal("0")) + amount
            if duration is not None:
                self._durations.append(duration)
        log.info(
            "checkout of task %s completed: %s %s in %ss",
            task_id,
            amount,
            currency,
            f"{duration:.3f}" if duration is not None else "?",
        )
        if self._prometheus:
            self._prometheus.completed.inc()
            self._prometheus.revenue.labels(currency).inc(float(amount))
            if duration is not None:
                self._prometheus.duration.observe(duration)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event received so far is recorded; False if that took longer than
        `timeout`."""
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout)

    def snapshot(self) -> BusinessMetrics:
        with self._lock:
            durations = sorted(self._durations)
            reasons: dict[str, int] = {}
            for reason in self._failed.values():
                reasons[reason] = reasons.get(reason, 0) + 1
            return BusinessMetrics(
                orders_completed=len(self._completed),
                orders_failed=len(self._failed),
                revenue=dict(self._revenue),
                checkout_seconds={
                    "count": len(durations),
                    "min": durations[0] if durations else None,
                    "avg": round(sum(durations) / len(durations), 3) if durations else None,
                    "p50": _nearest_rank(durations, 0.50),
                    "p95": _nearest_rank(durations, 0.95),
                    "max": durations[-1] if durations else None,
                },
                failures_by_reason=reasons,
            )

    def close(self) -> None:
        """Stop the reader thread (after what is queued) and close the engine opened from
        configuration."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            atexit.unregister(self.flush)
            self._queue.put(None)
            thread.join(timeout=10)
        if self._own_engine and self._engine is not None:
            self._engine.close()
            self._engine, self._own_engine = None, False


class _Exported:
    """The business figures as Prometheus metrics, in the registry the caller gives."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Histogram

        self.completed = Counter(
            "checkout_orders_completed", "Checkouts completed.", registry=registry
        )
        self.failed = Counter(
            "checkout_orders_failed",
            "Checkouts that failed, by reason.",
            ["reason"],
            registry=registry,
        )
        self.revenue = Counter(
            "checkout_revenue",
            "Amount charged for completed checkouts.",
            ["currency"],
            registry=registry,
        )
        self.duration = Histogram(
            "checkout_duration_seconds",
            "Checkout duration, first step to last.",
            registry=registry,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
