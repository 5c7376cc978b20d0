"""Health, Prometheus metrics and analytics: what operators, load balancers and dashboards read.

`/health/live` and `/health/ready` are always open (a load balancer has no credentials); status,
metrics and analytics need their permissions. Health answers carry `Cache-Control: no-store` so that
no proxy serves yesterday's verdict. The routes are thin: the reports come from
`engine.insight` (`tasker.engine.insight`), whose probes run under a deadline, so a hung database
answers 503 in time instead of hanging the probe, and they are served as the typed models of
`tasker.domain.reports` that the engine returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel

from tasker import __version__
from tasker.api.auth import Permission, require
from tasker.api.deps import get_engine, get_settings
from tasker.api.embedded import EmbeddedWorkers, EmbeddedWorkerState, get_embedded_workers
from tasker.api.errors import ErrorBody, error_response, error_responses
from tasker.domain.errors import StoreError
from tasker.domain.reports import (
    Bottlenecks,
    EmbeddedWorker,
    EmbeddedWorkersCheck,
    Overview,
    Performance,
    Ready,
    RetentionReport,
    Status,
)
from tasker.engine import insight
from tasker.engine.tasker import Tasker
from tasker.observability.metrics import exposition
from tasker.settings import Settings

router = APIRouter()
Engine = Annotated[Tasker, Depends(get_engine)]
Configured = Annotated[Settings, Depends(get_settings)]
#: The workers `tasker serve --workers N` runs in this process; None when it runs none.
Embedded = Annotated[EmbeddedWorkers | None, Depends(get_embedded_workers)]

#: Seconds `/health/ready` and `/health/status` wait for the database before answering 503.
READY_TIMEOUT_SECONDS = insight.READY_TIMEOUT_SECONDS
STATUS_TIMEOUT_SECONDS = insight.STATUS_TIMEOUT_SECONDS
NO_STORE = "no-store"
#: Empty means "no filter", so `?namespace=&name=` works as the unfiltered report.
OPTIONAL_NAME = r"^([A-Za-z_][A-Za-z0-9_.\-]*)?$"
OPTIONAL_SEMVER = (
    r"^((0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.\-]+)?(\+[0-9A-Za-z.\-]+)?)?$"
)


# -- response shapes -------------------------------------------------------------------------------
class Live(BaseModel):
    status: Literal["ok"]
    service: str
    version: str
    timestamp: datetime


# -- health ----------------------------------------------------------------------------------------
@router.get(
    "/health/live", response_model=Live, tags=["health"], summary="Liveness: the process is up"
)
def live(response: Response) -> Live:
    """Always 200 while the process serves requests; touches nothing else."""
    response.headers["Cache-Control"] = NO_STORE
    return Live(status="ok", service="tasker", version=__version__, timestamp=datetime.now(UTC))


@router.get(
    "/health/ready",
    response_model=Ready,
    tags=["health"],
    summary="Readiness: database reachable and migrated",
    responses={503: {"model": Ready, "description": "A check failed; `failed_checks` names it."}},
)
def ready(response: Response, engine: Engine, embedded: Embedded) -> Ready:
    """200 when the database answers within a few seconds and its schema is at the latest migration
    (and, under `tasker serve --workers N`, every embedded worker runs)."""
    report = engine.insight.readiness(timeout=READY_TIMEOUT_SECONDS)
    if embedded is not None:
        check = _embedded_check(embedded.snapshot())
        report.checks.embedded_workers = check
        if check.status != "ok":
            report.failed_checks.append("embedded_workers")
            report.ready, report.status = False, "not_ready"
    response.headers["Cache-Control"] = NO_STORE
    if not report.ready:
        response.status_code = 503
    return report


@router.get(
    "/health/status",
    response_model=Status,
    tags=["health"],
    summary="Status: counts, backlog, workers, circuits",
    dependencies=[Depends(require(Permission.HEALTH_STATUS))],
    responses={
        503: {"model": Status, "description": "Unhealthy; `reasons` says why."},
        **error_responses(401, 403, 422),
    },
)
def status(
    response: Response,
    engine: Engine,
    embedded: Embedded,
    settings: Configured,
    window_hours: Annotated[
        int,
        Query(
            ge=1,
            le=insight.MAX_PERIOD_HOURS,
            description="Count the tasks created in this many hours.",
        ),
    ] = 24,
) -> Status:
    """healthy (200), degraded (200: a circuit is open or work waits unclaimed) or unhealthy (503).

    Unhealthy: the database fails its checks, or over the last hour more than half of at least 10
    finished tasks are in error, or more than half of at least 20 step attempts failed. Under
    `tasker serve --workers N`: degraded while an embedded worker is down, unhealthy while all are.
    `retention`: the retention in force and the housekeeping job's last pass.
    """
    report = engine.insight.status(window_hours=window_hours, timeout=STATUS_TIMEOUT_SECONDS)
    if report.tasks is not None:  # the store answered: it can say what it keeps
        report.retention = _retention(engine, settings)
    if embedded is not None:
        _add_embedded_status(report, embedded.snapshot())
    response.headers["Cache-Control"] = NO_STORE
    if report.status == "unhealthy":
        response.status_code = 503
    return report


def _retention(engine: Tasker, settings: Settings) -> RetentionReport | None:
    """The retention part of a status; None when the store fails to answer it in time (the rest
    of the status stands)."""
    try:
        return engine.retention.report(settings.retention, settings.archive)
    except (StoreError, TimeoutError):
        return None


def _embedded_check(states: Sequence[EmbeddedWorkerState]) -> EmbeddedWorkersCheck:
    down = [s for s in states if s.down]
    return EmbeddedWorkersCheck(
        status="failing" if down else "ok",
        running=len(states) - len(down),
        total=len(states),
        error="; ".join(s.reason() for s in down) or None,
    )


def _add_embedded_status(report: Status, states: Sequence[EmbeddedWorkerState]) -> None:
    """Add the embedded workers to a status report; those that are down lower its verdict."""
    report.checks.embedded_workers = _embedded_check(states)
    report.embedded_workers = [EmbeddedWorker.model_validate(dataclasses.asdict(s)) for s in states]
    down = [s for s in states if s.down]
    if not down:
        return
    report.reasons = [*report.reasons, *(s.reason() for s in down)]
    if len(down) == len(states):
        report.status, report.healthy = "unhealthy", False
    elif report.status == "healthy":
        report.status = "degraded"


# -- overview --------------------------------------------------------------------------------------
@router.get(
    "/overview",
    response_model=Overview,
    tags=["monitoring"],
    summary="Overview: what the dashboard shows first",
    dependencies=[Depends(require(Permission.HEALTH_STATUS))],
    responses=error_responses(401, 403),
)
def overview(response: Response, engine: Engine) -> Overview:
    """Tasks by status, retries waiting, tasks finished in the last hour and day, step attempts per
    minute over the last hour and the latest failures; every figure is one indexed query."""
    response.headers["Cache-Control"] = NO_STORE
    return engine.insight.overview()


# -- metrics ---------------------------------------------------------------------------------------
@router.get(
    "/metrics",
    tags=["monitoring"],
    summary="Prometheus metrics",
    response_class=Response,
    dependencies=[Depends(require(Permission.METRICS_INDEX))],
    responses={
        200: {
            "description": "The Prometheus text exposition format.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        503: {"model": ErrorBody, "description": "The store-wide gauges could not be read."},
        **error_responses(401, 403),
    },
)
def metrics(engine: Engine) -> Response:
    """Store-wide gauges (read from the database at each scrape) and this process's counters."""
    try:
        body, content_type = exposition(engine)
    except StoreError as exc:
        failed = type(exc.__cause__ or exc).__name__
        return error_response(
            503, "unavailable", f"metrics unavailable: the database failed ({failed})"
        )
    return Response(body, media_type=content_type)


# -- analytics -------------------------------------------------------------------------------------
Period = Annotated[
    int, Query(ge=1, le=insight.MAX_PERIOD_HOURS, description="Tasks created in the last N hours.")
]
NamespaceFilter = Annotated[str | None, Query(max_length=64, pattern=OPTIONAL_NAME)]
NameFilter = Annotated[str | None, Query(max_length=128, pattern=OPTIONAL_NAME)]
VersionFilter = Annotated[str | None, Query(max_length=64, pattern=OPTIONAL_SEMVER)]


@router.get(
    "/analytics/performance",
    response_model=Performance,
    tags=["analytics"],
    summary="Performance per template",
    dependencies=[Depends(require(Permission.ANALYTICS_INDEX))],
    responses=error_responses(401, 403, 422),
)
def performance(
    engine: Engine,
    period_hours: Period = 24,
    namespace: NamespaceFilter = None,
    name: NameFilter = None,
    version: VersionFilter = None,
) -> Performance:
    """Per template, over the tasks created in the period: outcomes, completion rate, durations,
    throughput."""
    return engine.insight.performance(period_hours, namespace=namespace, name=name, version=version)


@router.get(
    "/analytics/bottlenecks",
    response_model=Bottlenecks,
    tags=["analytics"],
    summary="Bottlenecks and advice",
    dependencies=[Depends(require(Permission.ANALYTICS_INDEX))],
    responses=error_responses(401, 403, 422),
)
def bottlenecks(
    engine: Engine,
    period_hours: Period = 24,
    namespace: NamespaceFilter = None,
    name: NameFilter = None,
    version: VersionFilter = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Rows per list.")] = 10,
) -> Bottlenecks:
    """Slowest and most retried steps, error rates per step and dependent system, and
    recommendations."""
    return engine.insight.bottlenecks(
        period_hours, namespace=namespace, name=name, version=version, limit=limit
    )
