"""The observability a `Tasker` installs on its workers by default: logs, metrics and traces, each a
worker hook (`tasker.domain.hooks`), so the engine depends on the interface and never on this
package."""

from __future__ import annotations

from tasker.domain.hooks import WorkerHooks
from tasker.observability.logging import LoggingHooks
from tasker.observability.metrics import EngineMetrics, MetricsHooks
from tasker.observability.tracing import Tracing, TracingHooks


def default_hooks(
    *, metrics: EngineMetrics | None = None, tracing: Tracing | None = None
) -> list[WorkerHooks]:
    """Step fields on log lines, metrics, and spans when tracing is configured.

    `metrics` and `tracing` default to the process's own (`engine_metrics()`, and OpenTelemetry's
    global provider or `set_tracer_provider`'s); give an engine its own to keep it apart from others
    in the same process.
    """
    return [LoggingHooks(), MetricsHooks(metrics), TracingHooks(tracing)]
