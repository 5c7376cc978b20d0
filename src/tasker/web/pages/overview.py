"""The overview: counts by status, recent outcomes, attempts per minute, workers, circuits,
the latest failures, and the retention in force with the housekeeping job's last pass.

Needs `tasker.health_status:index`, the permission of `GET /api/v1/overview` and of
`GET /api/v1/health/status`, whose figures (workers, circuits, retention) it shows too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from tasker.api.auth import Permission
from tasker.domain.errors import StoreError
from tasker.domain.reports import RetentionReport
from tasker.domain.states import TaskState
from tasker.engine import clock
from tasker.engine.tasker import Tasker
from tasker.settings import Settings
from tasker.web.access import Pages, page, settings_of, viewer
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


#: What the Retention section says when the store did not give the report.
RETENTION_TIMED_OUT = "the store did not answer in time"
RETENTION_FAILED = "the store failed to answer"


@dataclass(frozen=True)
class RetentionView:
    """The Retention section: the report (None when the store did not give it, `problem` says
    why), and whether its holder's lease still runs (a holder whose lease ran out is gone)."""

    report: RetentionReport | None
    problem: str | None = None
    held: bool = False


def _retention(engine: Tasker, settings: Settings) -> RetentionView:
    """The retention in force, as `GET /api/v1/health/status` and `tasker retention` read it: the
    default and archive of this server's settings. Read under a deadline; the page shows the rest
    when it runs out."""
    try:
        report = engine.retention.report(settings.retention, settings.archive)
    except TimeoutError:
        return RetentionView(None, RETENTION_TIMED_OUT)
    except StoreError:
        return RetentionView(None, RETENTION_FAILED)
    held = (
        report.holder is not None
        and report.lease_until is not None
        and report.lease_until > clock.now()
    )
    return RetentionView(report, held=held)


def _gather(engine: Tasker, settings: Settings) -> dict[str, Any]:
    """Every read of the page on one worker thread: a handful of indexed queries, none per row."""
    return {
        "overview": engine.insight.overview(),
        "workers": engine.systems.workers(),
        "systems": engine.systems.report(),
        "retention": _retention(engine, settings),
    }


@pages.get("/")
async def overview(request: Request) -> Response:
    v = await viewer(request, Permission.HEALTH_STATUS)
    data = await run_in_threadpool(_gather, request.app.state.tasker, settings_of(request))
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
        retention=data["retention"],
    )
