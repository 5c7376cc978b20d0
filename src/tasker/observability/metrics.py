"""Prometheus metrics: store-wide gauges read at scrape time, and what this process's workers
observed.

Two sources, one exposition:

- `DatabaseCollector` answers each scrape with a handful of grouped queries (tasks and steps by
  state, the ready queue, circuits, live workers). The database is the truth shared by every
  process, so these gauges are the same whichever process is scraped; nothing is kept in memory
  between scrapes.
- `EngineMetrics` holds counters and histograms fed by workers after each cycle commits (so only
  outcomes the store accepted count), and by `ApiStepHandler` for each outgoing call. Workers feed
  them through `MetricsHooks`, one of the worker hooks (`tasker.domain.hooks`) a `Tasker` installs:
  the engine never imports this module.

Who owns which metrics: a `MetricsHooks(metrics)` feeds the `EngineMetrics` it was given, so an
application with two engines can give each its own. Without one it feeds the process's default
`EngineMetrics`, made on first use (not at import) and replaced with `set_engine_metrics` (as tests
do); that default is what `tasker worker --metrics-port` and the API's `/metrics` expose.

Metrics live in a registry of our own, never prometheus_client's global one, so tests and embedding
applications can make fresh ones. Labels are bounded: template keys, step names, error class names,
system names; never task ids.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tasker.domain.circuits import CircuitState
from tasker.domain.errors import TaskerInputError
from tasker.domain.hooks import CycleReport, ServiceCall, TasksPurged, WorkerHooks
from tasker.domain.states import StepState
from tasker.store import stats
from tasker.store.overview import FinalCounts
from tasker.store.workers import ALIVE_WITHIN_SECONDS

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from tasker.domain.records import ClaimedStep, Outcome
    from tasker.domain.templates import TaskTemplate
    from tasker.store.database import Database

log = logging.getLogger("tasker.metrics")

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
CLAIM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Step state after an attempt -> the `outcome` label.
OUTCOMES: dict[str, str] = {
    StepState.COMPLETE: StepState.COMPLETE.value,
    StepState.WAITING_RETRY: "retry",
    StepState.ERROR: StepState.ERROR.value,
}
#: A worker counts as alive when it wrote `last_seen_at` this recently.
WORKER_SEEN_SECONDS = ALIVE_WITHIN_SECONDS
CIRCUIT_VALUES: dict[str, int] = {
    CircuitState.CLOSED: 0,
    CircuitState.HALF_OPEN: 1,
    CircuitState.OPEN: 2,
}


class _StepSeries:
    """One (template, step): duration buckets (not cumulative), sum, outcomes and failures by
    class."""

    __slots__ = ("buckets", "failures", "outcomes", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(STEP_BUCKETS) + 1)
        self.total = 0.0
        self.outcomes: dict[str, int] = {}
        self.failures: dict[str, int] = {}


class StepMetrics(Collector):
    """The per-step series, kept as plain numbers and turned into metric families at scrape time.

    A worker records a whole cycle's outcomes under one lock; prometheus_client's own histogram and
    counters would take a lock per bucket and per counter for every step, several microseconds a
    step on a path that runs thousands of steps a second.
    """

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], _StepSeries] = {}
        self._lock = threading.Lock()

    def record(self, rows: Iterable[tuple[str, str, str, float, str | None]]) -> None:
        """Add attempts, each as (template, step, state, seconds, error class or None)."""
        with self._lock:
            for template, step, state, seconds, error_class in rows:
                series = self._series.get((template, step))
                if series is None:
                    series = self._series[(template, step)] = _StepSeries()
                series.buckets[bisect_left(STEP_BUCKETS, seconds)] += 1
                series.total += seconds
                outcome = OUTCOMES.get(state, state)
                series.outcomes[outcome] = series.outcomes.get(outcome, 0) + 1
                if error_class:
                    series.failures[error_class] = series.failures.get(error_class, 0) + 1

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> tuple[Any, ...]:
        return (
            HistogramMetricFamily(
                "tasker_step_duration_seconds",
                "Duration of step attempts (handler run time), by template and step.",
                labels=["template", "step"],
            ),
            CounterMetricFamily(
                "tasker_step_outcomes",
                "Step attempts by how they ended: complete, retry (scheduled) or error.",
                labels=["template", "step", "outcome"],
            ),
            CounterMetricFamily(
                "tasker_step_retries",
                "Retries scheduled after a failed attempt.",
                labels=["template", "step"],
            ),
            CounterMetricFamily(
                "tasker_step_failures",
                "Failed step attempts (retried or final), by error class.",
                labels=["template", "step", "error_class"],
            ),
        )

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            snapshot = [
                (key, list(s.buckets), s.total, dict(s.outcomes), dict(s.failures))
                for key, s in self._series.items()
            ]
        durations, outcomes, retries, failures = self._families()
        bounds = [*(str(b) for b in STEP_BUCKETS), "+Inf"]
        for (template, step), buckets, total, by_outcome, by_class in snapshot:
            cumulative = list(accumulate(buckets))
            durations.add_metric([template, step], list(zip(bounds, cumulative)), total)
            for outcome, n in by_outcome.items():
                outcomes.add_metric([template, step, outcome], n)
            if by_outcome.get("retry"):
                retries.add_metric([template, step], by_outcome["retry"])
            for error_class, n in by_class.items():
                failures.add_metric([template, step, error_class], n)
        yield from (durations, outcomes, retries, failures)


class EngineMetrics:
    """The in-process metrics, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process_metrics: bool = False):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.steps = StepMetrics()
        r.register(self.steps)
        self.claim_latency = Histogram(
            "tasker_claim_latency_seconds",
            "From the start of a worker's claim to the commit that hands it the steps, per cycle"
            " that claimed.",
            registry=r,
            buckets=CLAIM_BUCKETS,
        )
        self.api_calls = Histogram(
            "tasker_api_call_duration_seconds",
            "Outgoing HTTP calls made by ApiStepHandler steps.",
            ("system", "method", "status"),
            registry=r,
            buckets=API_BUCKETS,
        )
        self.stuck_handlers = Gauge(
            "tasker_handler_threads_stuck",
            "Sync handler threads still inside a handler that overstayed its timeout, per worker.",
            ("worker",),
            registry=r,
        )
        self.rate_deferrals = Counter(
            "tasker_rate_limit_deferrals",
            "Due steps moved to a later slot because their dependent system's rate limit was used"
            " up (no attempt spent).",
            ("system",),
            registry=r,
        )
        self.fair_share_waits = Counter(
            "tasker_fair_share_waits",
            "Due steps a claim passed over because their fair-share key had its most steps in"
            " flight, by template.",
            ("template",),
            registry=r,
        )
        self.tasks_purged = Counter(
            "tasker_tasks_purged",
            "Finished tasks deleted, by the housekeeping job's retention or by hand, per namespace"
            " and status.",
            ("namespace", "status"),
            registry=r,
        )
        if process_metrics:
            ProcessCollector(namespace="tasker", registry=r)

    def observe_attempt(
        self, template: str, step: str, state: str, seconds: float, error_class: str | None
    ) -> None:
        """One attempt (the worker records a cycle's attempts at once with `steps.record`)."""
        self.steps.record([(template, step, state, seconds, error_class)])

    def observe_api_call(self, system: str, method: str, status: str, seconds: float) -> None:
        """One outgoing service call (status: the HTTP code or the kind of error)."""
        self.api_calls.labels(system or "unknown", method.upper(), str(status)).observe(seconds)


class _Default:
    """The process's default metrics: made on first use, replaceable (`set_engine_metrics`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.metrics: EngineMetrics | None = None

    def get(self) -> EngineMetrics:
        current = self.metrics
        if current is None:
            with self._lock:
                current = self.metrics
                if current is None:
                    current = self.metrics = EngineMetrics(process_metrics=True)
        return current

    def swap(self, metrics: EngineMetrics) -> EngineMetrics:
        previous = self.get()
        with self._lock:
            self.metrics = metrics
        return previous


_default = _Default()


def engine_metrics() -> EngineMetrics:
    """The process's default metrics: what workers without metrics of their own feed."""
    return _default.get()


def set_engine_metrics(metrics: EngineMetrics) -> EngineMetrics:
    """Make `metrics` the process's default from now on (tests, or an application with its own
    registry); returns the previous one so it can be put back."""
    return _default.swap(metrics)


def observe_stuck_handlers(worker: str, stuck: int) -> None:
    """How many of a worker's handler threads are stuck in timed-out handlers now."""
    _default.get().stuck_handlers.labels(worker).set(stuck)


def observe_api_call(system: str, method: str, status: str, seconds: float) -> None:
    """Record one outgoing service call made by an `ApiStepHandler` outside a worker's hooks
    (status: HTTP code or error kind)."""
    _default.get().observe_api_call(system, method, status, seconds)


def observe_cycle(
    done: Sequence[tuple[Outcome, ClaimedStep]],
    accepted: Sequence[Outcome],
    template_of: Callable[[int], TaskTemplate],
    claim_seconds: float | None,
) -> None:
    """What one committed worker cycle did: the attempts it stored, and how long its claim took.

    `done` pairs each outcome with its claim (for the template); only the `accepted` outcomes count:
    the others lost their lease and another worker owns the step now.
    """
    try:
        _observe_cycle(_default.get(), done, accepted, lambda t: template_of(t).key, claim_seconds)
    except Exception:  # the cycle is committed: a metrics fault must not make the worker rerun it
        log.exception("recording the metrics of a worker cycle failed")


def _observe_cycle(
    m: EngineMetrics,
    done: Sequence[tuple[Outcome, ClaimedStep]],
    accepted: Sequence[Outcome],
    template_key: Callable[[int], str],
    claim_seconds: float | None,
) -> None:
    if claim_seconds is not None:
        m.claim_latency.observe(claim_seconds)
    if not accepted:
        return
    pairs: Iterable[tuple[Outcome, ClaimedStep]] = done
    if len(accepted) != len(done):
        taken = {id(o) for o in accepted}
        pairs = [p for p in done if id(p[0]) in taken]
    keys: dict[int, str] = {}
    rows = []
    for outcome, claimed in pairs:
        key = keys.get(claimed.template_id)
        if key is None:
            try:
                key = template_key(claimed.template_id)
            except KeyError:
                key = "unknown"
            keys[claimed.template_id] = key
        error = outcome.error
        rows.append(
            (
                key,
                claimed.name,
                outcome.state,
                outcome.duration_ms / 1000.0,
                error.get("class") if error else None,
            )
        )
    m.steps.record(rows)


class MetricsHooks(WorkerHooks):
    """The worker hooks that feed metrics: `metrics`, or the process's default when None (looked up
    at each observation, so `set_engine_metrics` takes effect on running workers too)."""

    def __init__(self, metrics: EngineMetrics | None = None):
        self._metrics = metrics

    @property
    def metrics(self) -> EngineMetrics:
        return self._metrics if self._metrics is not None else _default.get()

    def on_cycle(self, report: CycleReport) -> None:
        m = self.metrics
        _observe_cycle(m, report.done, report.accepted, report.template_key, report.claim_seconds)
        for system, n in report.deferred.items():
            m.rate_deferrals.labels(system).inc(n)
        for scope, n in report.key_waits.items():
            m.fair_share_waits.labels(scope).inc(n)

    def on_stuck_handlers(self, worker_id: str, stuck: int) -> None:
        self.metrics.stuck_handlers.labels(worker_id).set(stuck)

    def on_tasks_purged(self, purged: TasksPurged) -> None:
        counter = self.metrics.tasks_purged
        for namespace, status, n in purged.counts:
            counter.labels(namespace, status).inc(n)

    def on_service_call(self, call: ServiceCall) -> None:
        self.metrics.observe_api_call(call.system, call.method, call.status, call.seconds)


# -- store-wide gauges, read at scrape time --------------------------------------------------------
class DatabaseCollector(Collector):
    """Gauges computed from the store at each scrape: one grouped query per subject, all in one
    read."""

    def __init__(self, db: Database):
        self.db = db
        self._final = FinalCounts()

    def describe(self) -> Iterable[Metric]:
        """Names only: registering the collector must not query the database."""
        return list(_families())

    def collect(self) -> Iterable[Metric]:
        started = time.perf_counter()
        up = GaugeMetricFamily(
            "tasker_database_up", "1 when the last scrape could read the store, else 0."
        )
        try:
            snapshot = stats.read(self.db, datetime.now(UTC), WORKER_SEEN_SECONDS, self._final)
        except Exception as exc:  # a scrape must answer (with up=0) whatever the store does
            log.warning(
                "metrics: cannot read the store %s (%s: %s)",
                self.db.safe_url(),
                type(exc).__name__,
                exc,
            )
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        tasks_f, steps_f, depth_f, oldest_f, circuit_f, workers_f, scrape_f = _families()
        for state, n in snapshot["tasks"].items():
            tasks_f.add_metric([state], n)
        for state, n in snapshot["steps"].items():
            steps_f.add_metric([state], n)
        depth_f.add_metric([], snapshot["ready"])
        oldest_f.add_metric([], snapshot["oldest_seconds"])
        for name, state in snapshot["circuits"]:
            circuit_f.add_metric([name], CIRCUIT_VALUES.get(state, 2))
        workers_f.add_metric([], snapshot["workers"])
        scrape_f.add_metric([], time.perf_counter() - started)
        yield from (tasks_f, steps_f, depth_f, oldest_f, circuit_f, workers_f, scrape_f)


def _families() -> tuple[GaugeMetricFamily, ...]:
    return (
        GaugeMetricFamily("tasker_tasks", "Tasks by state.", labels=["state"]),
        GaugeMetricFamily(
            "tasker_steps",
            "Steps in the states a step can leave (pending, ready, in_progress, waiting_retry,"
            " error).",
            labels=["state"],
        ),
        GaugeMetricFamily(
            "tasker_ready_queue_depth",
            "Steps ready or waiting to retry whose run_at has come: claimable now, not yet"
            " claimed.",
        ),
        GaugeMetricFamily(
            "tasker_ready_queue_oldest_seconds",
            "How long the oldest claimable step has been due (0 when the queue is empty).",
        ),
        GaugeMetricFamily(
            "tasker_circuit_state",
            "Circuit breaker per dependent system: 0 closed, 1 half_open, 2 open.",
            labels=["system"],
        ),
        GaugeMetricFamily(
            "tasker_workers_active",
            f"Worker processes that reported in the last {WORKER_SEEN_SECONDS:g} s and have not "
            "stopped.",
        ),
        GaugeMetricFamily(
            "tasker_metrics_scrape_seconds", "Time spent reading the store for this scrape."
        ),
    )


class HasDatabase(Protocol):
    """Whatever holds the store to read the gauges from (a `Tasker`)."""

    @property
    def db(self) -> Database: ...


class _Exposed(Collector):
    """The store's gauges (when there is a store) followed by in-process metrics, as one
    collector."""

    def __init__(self, db: Database | None, metrics: EngineMetrics | None):
        self.database = DatabaseCollector(db) if db is not None else None
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        if self.database is not None:
            yield from self.database.collect()
        metrics = self.metrics if self.metrics is not None else _default.get()
        yield from metrics.registry.collect()


def exposition(
    engine: HasDatabase | None, metrics: EngineMetrics | None = None
) -> tuple[bytes, str]:
    """The `/metrics` answer: body in the Prometheus text format and its content type.

    With an engine, the store-wide gauges are read from its database for this scrape; with None,
    only the in-process metrics are exposed: `metrics`, or the process's default.
    """
    exposed = _Exposed(engine.db if engine is not None else None, metrics)
    return generate_latest(exposed), CONTENT_TYPE_LATEST


def serve_metrics(
    port: int,
    engine: HasDatabase | None = None,
    *,
    addr: str = "0.0.0.0",
    metrics: EngineMetrics | None = None,
) -> WSGIServer:
    """Serve `/metrics` from a background thread (a worker process's own metrics endpoint).

    Pass `engine` to add the store-wide gauges: every process would report the same values, so one
    scrape target for them (the API, or one worker) is enough; leave it out on the others.
    """
    try:
        server, _thread = start_http_server(
            port, addr, registry=_Exposed(engine.db if engine else None, metrics)
        )
    except OSError as exc:
        raise TaskerInputError(
            f"cannot serve metrics on {addr}:{port} ({exc.strerror or exc}); fix: choose a free"
            " --metrics-port"
        ) from None
    log.info("serving Prometheus metrics on http://%s:%d/metrics", addr, port)
    return server
