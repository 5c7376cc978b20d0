"""`attach(engine)`: both monitoring subscribers on an engine running the checkout, in one call.

Slow-step thresholds default to half of each checkout step's `handler_config.timeout_seconds` (a
step that uses half its time budget is worth a look before it starts timing out); pass
`thresholds_ms` to choose your own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tasker import Tasker, TaskerError
from tasker.demos.observability.subscribers import (
    CHECKOUT,
    AlertSink,
    BusinessMetricsSubscriber,
    PerformanceSubscriber,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

#: Share of a step's timeout beyond which an attempt counts as slow.
SLOW_SHARE_OF_TIMEOUT = 0.5
DEFAULT_SLOW_STEP_MS = 5000.0


@dataclass
class Monitoring:
    business: BusinessMetricsSubscriber
    performance: PerformanceSubscriber
    _detach: list[Callable[[], None]]

    def detach(self) -> None:
        """Stop receiving events and stop the business subscriber's reader thread."""
        for undo in self._detach:
            undo()
        self._detach = []
        self.business.close()


def checkout_thresholds(engine: Tasker, share: float = SLOW_SHARE_OF_TIMEOUT) -> dict[str, float]:
    """Per step of the loaded checkout template: `share` of its timeout, in ms (empty if not
    loaded)."""
    try:
        template = engine.templates.get(f"{CHECKOUT[0]}/{CHECKOUT[1]}")
    except TaskerError:
        return {}
    return {
        s.name: s.timeout_seconds * 1000 * share
        for s in template.step_templates
        if s.timeout_seconds
    }


def attach(
    engine: Tasker,
    *,
    sink: AlertSink | None = None,
    thresholds_ms: Mapping[str, float] | None = None,
    slow_step_ms: float = DEFAULT_SLOW_STEP_MS,
    alert_on_retry: bool = True,
    registry: CollectorRegistry | None = None,
) -> Monitoring:
    """Attach the business-metrics and performance subscribers to `engine`; `detach()` undoes it."""
    business = BusinessMetricsSubscriber(engine, registry=registry)
    performance = PerformanceSubscriber(
        slow_step_ms=slow_step_ms,
        sink=sink,
        alert_on_retry=alert_on_retry,
        thresholds_ms=checkout_thresholds(engine) if thresholds_ms is None else thresholds_ms,
    )
    return Monitoring(
        business, performance, [engine.add_subscriber(business), engine.add_subscriber(performance)]
    )
