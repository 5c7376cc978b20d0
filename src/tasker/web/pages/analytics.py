"""Analytics over a chosen window: performance per template and bottlenecks, with bar charts.

The figures are those of `engine.insight.performance` and `engine.insight.bottlenecks`, the same
reports as `/api/v1/analytics/*`, computed together from one read (`engine.insight.analytics`),
and need the same permission (`tasker.analytics:index`).
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from tasker.api.auth import Permission
from tasker.domain.errors import TaskerInputError
from tasker.domain.reports import Bottlenecks, Performance, TemplatePerformance
from tasker.engine.tasker import Tasker
from tasker.web.access import Pages, page, viewer
from tasker.web.charts import hbars
from tasker.web.rendering import percent
from tasker.web.timeline import duration

pages = Pages()
WINDOWS = (1, 6, 24, 72, 168, 720)


def _reports(
    engine: Tasker, hours: int, namespace: str | None, name: str | None
) -> tuple[Performance, Bottlenecks]:
    """Both reports from one read: `engine.insight.analytics` answers what its `performance` and
    `bottlenecks` do, but catches the rollups up and reads the figures once, not twice."""
    return engine.insight.analytics(hours, namespace=namespace, name=name)


def charts(perf: Performance, bottle: Bottlenecks) -> dict[str, Any]:
    """The page's bar charts: p95 duration per template, slowest steps, step error rates."""

    def ref(r: TemplatePerformance) -> str:
        return f"{r.namespace}/{r.name}@{r.version}"

    p95 = [
        (ref(r), r.duration_seconds.p95 or 0.0, duration(r.duration_seconds.p95))
        for r in perf.templates
    ]
    slow = [
        (
            f"{r.name}:{r.step}",
            r.duration_ms.p95 or 0.0,
            duration((r.duration_ms.p95 or 0.0) / 1000),
        )
        for r in bottle.slowest_steps
    ]
    erring = [
        (f"{r.name}:{r.step}", r.failure_rate or 0.0, percent(r.failure_rate))
        for r in bottle.step_error_rates
        if r.failure_rate
    ]
    return {"p95": hbars(p95), "slow": hbars(slow), "errors": hbars(erring)}


@pages.get("/analytics")
async def analytics(request: Request) -> Response:
    v = await viewer(request, Permission.ANALYTICS_INDEX)
    params = request.query_params
    raw_hours = params.get("hours", "24")
    namespace = params.get("namespace", "").strip() or None
    template = params.get("template", "").strip() or None
    error = None
    perf = bottle = None
    hours = 24
    try:
        hours = int(raw_hours)
        perf, bottle = await run_in_threadpool(
            _reports, request.app.state.tasker, hours, namespace, template
        )
    except ValueError:
        error = f"hours: '{raw_hours[:20]}' is not a whole number of hours"
    except TaskerInputError as exc:
        error = str(exc)
    return page(
        request,
        v,
        "analytics.html",
        "Analytics",
        "analytics",
        status=422 if error else 200,
        hours=hours,
        namespace=namespace or "",
        template=template or "",
        windows=WINDOWS,
        error=error,
        perf=perf,
        bottle=bottle,
        charts=charts(perf, bottle) if perf and bottle else None,
    )
