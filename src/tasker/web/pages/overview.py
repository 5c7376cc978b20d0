"""The overview: counts by status, recent outcomes, attempts per minute, workers, circuits,
the latest failures.

Needs `tasker.health_status:index`, the permission of `GET /api/v1/overview` and of
`GET /api/v1/health/status`, whose figures (workers, circuits) it shows too.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from tasker.api.auth import Permission
from tasker.domain.states import TaskState
from tasker.engine.tasker import Tasker
from tasker.web.access import Pages, page, viewer
from tasker.web.charts import stacked_columns

pages = Pages()
#: The order of the status cards; every other state follows.
CARDS: tuple[str, ...] = (
    TaskState.IN_PROGRESS,
    TaskState.PENDING,
    TaskState.ERROR,
    TaskState.COMPLETE,
    TaskState.CANCELLED,
    TaskState.RESOLVED_MANUALLY,
)


def _gather(engine: Tasker) -> dict[str, Any]:
    """Every read of the page on one worker thread: a handful of indexed queries, none per row."""
    return {
        "overview": engine.insight.overview(),
        "workers": engine.systems.workers(),
        "systems": engine.systems.report(),
    }


@pages.get("/")
async def overview(request: Request) -> Response:
    v = await viewer(request, Permission.HEALTH_STATUS)
    data = await run_in_threadpool(_gather, request.app.state.tasker)
    ov = data["overview"]
    counts = ov.tasks_by_status
    cards = [s for s in CARDS if s in counts] + sorted(s for s in counts if s not in CARDS)
    chart = stacked_columns([(m.minute, m.completed, m.failed) for m in ov.per_minute])
    return page(
        request,
        v,
        "overview.html",
        "Overview",
        "overview",
        ov=ov,
        cards=cards,
        chart=chart,
        workers=data["workers"],
        systems=data["systems"],
    )
