"""Health, Prometheus metrics and analytics: what operators, load balancers and dashboards read.

`/health/live` and `/health/ready` are always open (a load balancer has no credentials); status,
metrics and analytics need their permissions. Health answers carry `Cache-Control: no-store` so that
no proxy serves yesterday's verdict. The routes are thin: the figures come from
`tasker.engine.insight`, whose probes run under a deadline, so a hung database answers 503 in time
instead of hanging the probe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from tasker import __version__
from tasker.api.auth import Permission, require
from tasker.api.deps import get_engine
from tasker.api.embedded import EmbeddedWorkers, EmbeddedWorkerState, get_embedded_workers
from tasker.api.errors import ErrorBody, error_response, error_responses
from tasker.domain.errors import StoreError
from tasker.engine import insight
from tasker.engine.tasker import Tasker

router = APIRouter()
Engine = Annotated[Tasker, Depends(get_engine)]
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


class DatabaseCheck(BaseModel):
    """`SELECT 1` on the store, within the deadline."""

    status: Literal["ok", "failing"]
    response_time_ms: float | None = None
    error: str | None = Field(
        None, description="Why the database failed: an error class and line, or no answer."
    )


class MigrationCheck(BaseModel):
    """The schema's Alembic revision against the latest one this release ships."""

    status: Literal["ok", "failing", "unknown"] = Field(
        description="unknown when the database did not answer."
    )
    current: str | None = Field(description="The database's revision (null: never migrated).")
    head: str | None = Field(description="The latest revision this release ships.")
    error: str | None = Field(None, description="What is wrong and the fix ('tasker db upgrade').")


class EmbeddedWorkersCheck(BaseModel):
    """The workers this process runs (`tasker serve --workers N`); failing while one is down."""

    status: Literal["ok", "failing"]
    running: int = Field(description="Embedded workers running (or starting) now.")
    total: int = Field(description="Embedded workers this server runs (`--workers`).")
    error: str | None = Field(
        None, description="Which worker is down, since when, its last error, when it restarts."
    )


class Checks(BaseModel):
    database: DatabaseCheck
    migrations: MigrationCheck
    embedded_workers: EmbeddedWorkersCheck | None = Field(
        None, description="Only when the server runs in-process workers (`serve --workers N`)."
    )


class Ready(BaseModel):
    status: Literal["ready", "not_ready"]
    ready: bool
    checks: Checks
    failed_checks: list[Literal["database", "migrations", "embedded_workers"]]
    timestamp: datetime


class TaskCounts(BaseModel):
    pending: int
    in_progress: int
    complete: int
    error: int
    cancelled: int
    resolved_manually: int
    total: int


class StepCounts(BaseModel):
    pending: int
    ready: int
    in_progress: int
    complete: int
    waiting_retry: int
    error: int
    cancelled: int
    resolved_manually: int
    skipped: int
    total: int


class Backlog(BaseModel):
    due_steps: int = Field(description="Steps waiting for a worker now (ready or retry due).")
    overdue_steps: int = Field(description="Due steps nobody has claimed for more than 60 s.")
    oldest_due_seconds: float | None
    scheduled_steps: int = Field(description="Steps waiting for a later run_at (backoff).")
    running_steps: int
    active_tasks: int
    tasks_in_error: int


class LastHour(BaseModel):
    finished_tasks: int
    failed_tasks: int
    task_error_rate: float | None
    step_attempts: int
    failed_attempts: int
    step_failure_rate: float | None


class Worker(BaseModel):
    id: str
    hostname: str
    pid: int
    namespaces: list[str] | None
    concurrency: int
    started_at: datetime
    last_seen_at: datetime
    steps_run: int


class Workers(BaseModel):
    seen_recently: int
    window_seconds: float
    items: list[Worker]


class EmbeddedWorker(BaseModel):
    """One worker slot of `tasker serve --workers N`: a restarted worker keeps it, not its id."""

    index: int = Field(description="1 to `--workers`.")
    state: Literal["starting", "running", "restarting", "stopped"]
    worker_id: str | None = Field(description="The id of the slot's current (or last) worker.")
    since: datetime = Field(description="When it entered this state.")
    restarts: int = Field(description="How many times the server restarted this slot's worker.")
    last_error: str | None = Field(description="Why its last worker died: error class and message.")
    last_error_at: datetime | None
    restart_in_seconds: float | None = Field(
        description="While restarting: seconds until the next start."
    )


class Circuit(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    circuit_state: str
    consecutive_failures: int
    open_until: datetime | None = None
    in_flight: int = 0
    waiting: int = 0


class Status(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"]
    healthy: bool = Field(description="False only when unhealthy (the answer is then 503).")
    reasons: list[str] = Field(description="Why the status is not healthy; empty when it is.")
    checks: Checks
    window_hours: int = Field(
        description="`tasks` and `steps` count the tasks created in this window."
    )
    tasks: TaskCounts | None
    steps: StepCounts | None
    backlog: Backlog | None
    last_hour: LastHour | None
    workers: Workers | None
    circuits: list[Circuit] | None
    embedded_workers: list[EmbeddedWorker] | None = Field(
        None, description="Only when the server runs in-process workers (`serve --workers N`)."
    )
    generated_at: datetime


class Distribution(BaseModel):
    count: int
    avg: float | None
    p50: float | None
    p95: float | None
    max: float | None


class Filters(BaseModel):
    namespace: str | None
    name: str | None
    version: str | None


class TaskFigures(BaseModel):
    created: int
    started: int
    completed: int
    failed: int
    cancelled: int
    resolved_manually: int
    in_flight: int
    completion_rate: float | None = Field(
        description="completed / finished (complete, error, cancelled, resolved)."
    )
    error_rate: float | None
    task_throughput_per_hour: float
    step_attempts: int
    steps_completed: int
    step_retries: int
    step_errors: int
    step_throughput_per_hour: float


class TemplateKey(BaseModel):
    namespace: str
    name: str
    version: str


class TemplatePerformance(TaskFigures, TemplateKey):
    duration_seconds: Distribution = Field(
        description="Start to finish of the tasks that completed."
    )


class Performance(BaseModel):
    period_hours: int
    since: datetime
    generated_at: datetime
    filters: Filters
    totals: TaskFigures
    templates: list[TemplatePerformance]


class ErrorCount(BaseModel):
    error_class: str
    count: int


class StepBottleneck(BaseModel):
    namespace: str
    name: str
    version: str
    step: str
    dependent_system: str
    steps: int
    attempts: int
    completed: int
    retries: int
    errors: int
    errors_after_retries: int
    retry_limit: int
    failure_rate: float | None
    retries_per_step: float | None
    duration_ms: Distribution
    share_of_template_time: float | None
    top_errors: list[ErrorCount]


class SystemErrors(BaseModel):
    dependent_system: str
    attempts: int
    failures: int
    retries: int
    errors: int
    failure_rate: float | None
    circuit_state: str
    top_errors: list[ErrorCount]


class Recommendation(BaseModel):
    kind: str = Field(
        description=(
            "retries_exhausted, failing_step, slow_step, long_tail, unstable_system, lost_leases"
        )
    )
    severity: Literal["critical", "warning", "info"]
    subject: str
    message: str
    figures: dict[str, float | int | str | None]


class Scope(BaseModel):
    tasks: int
    step_attempts: int


class Bottlenecks(BaseModel):
    period_hours: int
    since: datetime
    generated_at: datetime
    filters: Filters
    scope: Scope
    slowest_steps: list[StepBottleneck]
    most_retried_steps: list[StepBottleneck]
    step_error_rates: list[StepBottleneck]
    system_error_rates: list[SystemErrors]
    error_classes: list[ErrorCount]
    recommendations: list[Recommendation]


class MinuteOut(BaseModel):
    minute: datetime = Field(description="Start of the minute (UTC).")
    completed: int = Field(description="Step attempts that completed in that minute.")
    failed: int = Field(description="Step attempts that failed (waiting_retry or error) in it.")


class FailureOut(BaseModel):
    task_id: int
    template: str = Field(description="`namespace/name@version`.")
    step: str
    error_class: str
    message: str = Field(description="Cut to 300 characters.")
    at: datetime


class OverviewOut(BaseModel):
    tasks_by_status: dict[str, int] = Field(description="Every task state, 0 when none.")
    steps_waiting_retry: int
    completed_last_hour: int = Field(description="Tasks that finished complete in the last hour.")
    completed_last_day: int
    failed_last_hour: int = Field(description="Tasks that finished in error in the last hour.")
    failed_last_day: int
    per_minute: list[MinuteOut] = Field(
        description="60 minutes, oldest first, ending with the current one."
    )
    latest_failures: list[FailureOut] = Field(
        description="Failed step attempts, newest first, at most 10."
    )
    generated_at: datetime


# -- health ----------------------------------------------------------------------------------------
@router.get(
    "/health/live", response_model=Live, tags=["health"], summary="Liveness: the process is up"
)
def live(response: Response) -> dict[str, Any]:
    """Always 200 while the process serves requests; touches nothing else."""
    response.headers["Cache-Control"] = NO_STORE
    return {
        "status": "ok",
        "service": "tasker",
        "version": __version__,
        "timestamp": datetime.now(UTC),
    }


@router.get(
    "/health/ready",
    response_model=Ready,
    tags=["health"],
    summary="Readiness: database reachable and migrated",
    responses={503: {"model": Ready, "description": "A check failed; `failed_checks` names it."}},
)
def ready(response: Response, engine: Engine, embedded: Embedded) -> dict[str, Any]:
    """200 when the database answers within a few seconds and its schema is at the latest migration
    (and, under `tasker serve --workers N`, every embedded worker runs)."""
    report = insight.readiness(engine.db, timeout=READY_TIMEOUT_SECONDS)
    if embedded is not None:
        check = _embedded_check(embedded.snapshot())
        report["checks"]["embedded_workers"] = check
        if check["status"] != "ok":
            report["failed_checks"].append("embedded_workers")
            report["ready"], report["status"] = False, "not_ready"
    response.headers["Cache-Control"] = NO_STORE
    if not report["ready"]:
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
    window_hours: Annotated[
        int,
        Query(
            ge=1,
            le=insight.MAX_PERIOD_HOURS,
            description="Count the tasks created in this many hours.",
        ),
    ] = 24,
) -> dict[str, Any]:
    """healthy (200), degraded (200: a circuit is open or work waits unclaimed) or unhealthy (503).

    Unhealthy: the database fails its checks, or over the last hour more than half of at least 10
    finished tasks are in error, or more than half of at least 20 step attempts failed. Under
    `tasker serve --workers N`: degraded while an embedded worker is down, unhealthy while all are.
    """
    report = insight.status(engine.db, window_hours=window_hours, timeout=STATUS_TIMEOUT_SECONDS)
    if embedded is not None:
        _add_embedded_status(report, embedded.snapshot())
    response.headers["Cache-Control"] = NO_STORE
    if report["status"] == "unhealthy":
        response.status_code = 503
    return report


def _embedded_check(states: Sequence[EmbeddedWorkerState]) -> dict[str, Any]:
    down = [s for s in states if s.down]
    return {
        "status": "failing" if down else "ok",
        "running": len(states) - len(down),
        "total": len(states),
        "error": "; ".join(s.reason() for s in down) or None,
    }


def _add_embedded_status(report: dict[str, Any], states: Sequence[EmbeddedWorkerState]) -> None:
    """Add the embedded workers to a status report; those that are down lower its verdict."""
    report["checks"]["embedded_workers"] = _embedded_check(states)
    report["embedded_workers"] = [dataclasses.asdict(s) for s in states]
    down = [s for s in states if s.down]
    if not down:
        return
    report["reasons"] = [*report["reasons"], *(s.reason() for s in down)]
    if len(down) == len(states):
        report["status"], report["healthy"] = "unhealthy", False
    elif report["status"] == "healthy":
        report["status"] = "degraded"


# -- overview --------------------------------------------------------------------------------------
@router.get(
    "/overview",
    response_model=OverviewOut,
    tags=["monitoring"],
    summary="Overview: what the dashboard shows first",
    dependencies=[Depends(require(Permission.HEALTH_STATUS))],
    responses=error_responses(401, 403),
)
def overview(response: Response, engine: Engine) -> dict[str, Any]:
    """Tasks by status, retries waiting, tasks finished in the last hour and day, step attempts per
    minute over the last hour and the latest failures; every figure is one indexed query."""
    response.headers["Cache-Control"] = NO_STORE
    return dataclasses.asdict(engine.overview())


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
    from tasker.observability.metrics import exposition

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
) -> dict[str, Any]:
    """Per template, over the tasks created in the period: outcomes, completion rate, durations,
    throughput."""
    return engine.performance(period_hours, namespace=namespace, name=name, version=version)


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
) -> dict[str, Any]:
    """Slowest and most retried steps, error rates per step and dependent system, and
    recommendations."""
    return engine.bottlenecks(
        period_hours, namespace=namespace, name=name, version=version, limit=limit
    )
