"""The reports Tasker produces about itself: health, status, overview, performance, bottlenecks.

Each report is declared once, here, as a pydantic model: the store and the engine build it
(`tasker.store.health`, `tasker.store.overview`, `tasker.engine.insight`), the REST API serves the
same class as its response model (so the OpenAPI spec is generated from it), and the CLI and the
dashboard render it. Field names and values are the API's JSON: renaming one is an API change.

Pydantic rather than dataclasses because these cross the API; the module is imported only where a
report is built or served, never by `import tasker`, so it costs the CLI's start-up nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CheckName = Literal["database", "migrations", "embedded_workers"]


# -- readiness -------------------------------------------------------------------------------------
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
    """Whether the store answers and is migrated (`GET /health/ready`)."""

    status: Literal["ready", "not_ready"]
    ready: bool
    checks: Checks
    failed_checks: list[CheckName]
    timestamp: datetime


# -- status ----------------------------------------------------------------------------------------
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
    """A long-running worker as it last reported itself (`tasker_workers`)."""

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
    """A dependent system's circuit and limits, as `tasker.store.systems.report` reads them."""

    model_config = ConfigDict(extra="allow")

    name: str
    circuit_state: str
    consecutive_failures: int
    open_until: datetime | None = None
    in_flight: int = 0
    waiting: int = 0


class PurgePassReport(BaseModel):
    """The housekeeping job's last pass (`tasker_jobs.last_pass`)."""

    started_at: datetime
    worker: str = Field(description="The worker that held the job.")
    seconds: float = Field(description="How long the pass took.")
    deleted: dict[str, int] = Field(description="Tasks deleted, per status.")
    total: int
    archived: int
    archive: str | None = Field(description="`table`, a directory, or null: no archive.")
    workers_pruned: int = Field(description="Rows of long-gone workers deleted.")
    complete: bool = Field(
        description="False: it stopped early (time up, job lost, an error); the next goes on."
    )
    error: str | None
    default: dict[str, str] = Field(description="The default retention the holder applied.")


class RetentionReport(BaseModel):
    """The retention in force and the housekeeping job's last pass (docs/operations.md)."""

    default: dict[str, str] = Field(
        description=(
            "This process's default per finished status (`30d`, `never`); empty: no task is"
            " deleted automatically unless its template says so."
        )
    )
    templates: dict[str, dict[str, str]] = Field(
        description="Templates (`namespace/name`) that declare their own retention, per status."
    )
    archive: str | None = Field(description="This process's archive setting.")
    holder: str | None = Field(description="The worker holding the housekeeping job, if any.")
    lease_until: datetime | None
    last_pass: PurgePassReport | None


Verdict = Literal["healthy", "degraded", "unhealthy"]


class Status(BaseModel):
    """Counts by state, backlog, workers, circuits and a verdict (`GET /health/status`)."""

    status: Verdict
    healthy: bool = Field(description="False only when unhealthy (the answer is then 503).")
    reasons: list[str] = Field(description="Why the status is not healthy; empty when it is.")
    checks: Checks
    window_hours: int = Field(
        description="`tasks` and `steps` count the tasks created in this window (from `since`)."
    )
    since: datetime | None = Field(
        None,
        description=(
            "Where the window starts: the beginning of the 30-minute slot `window_hours` ago, so "
            "the counts read whole slots of the analytics rollups. Null when the store did not "
            "answer."
        ),
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
    retention: RetentionReport | None = Field(
        None, description="The retention in force and the last purge pass; null: not read."
    )
    generated_at: datetime


# -- performance and bottlenecks -------------------------------------------------------------------
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
    #: Failed tasks whose completed steps were undone (docs/templates.md, "Compensation").
    compensated: int = 0
    in_flight: int
    completion_rate: float | None = Field(
        description="completed / finished (complete, error, cancelled, resolved, compensated)."
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


class ReportHeader(BaseModel):
    """What every analytics report starts with: the period, when it was made, its filters."""

    period_hours: int
    since: datetime
    generated_at: datetime
    filters: Filters


class Performance(ReportHeader):
    """Per template over a period: outcomes, rates, durations, throughput."""

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


Severity = Literal["critical", "warning", "info"]


class Recommendation(BaseModel):
    kind: str = Field(
        description=(
            "retries_exhausted, failing_step, slow_step, long_tail, unstable_system, lost_leases"
        )
    )
    severity: Severity
    subject: str
    message: str
    figures: dict[str, float | int | str | None]


class Scope(BaseModel):
    tasks: int
    step_attempts: int


class Bottlenecks(ReportHeader):
    """Slowest and most retried steps, error rates, and what to do about them."""

    scope: Scope
    slowest_steps: list[StepBottleneck]
    most_retried_steps: list[StepBottleneck]
    step_error_rates: list[StepBottleneck]
    system_error_rates: list[SystemErrors]
    error_classes: list[ErrorCount]
    recommendations: list[Recommendation]


# -- overview --------------------------------------------------------------------------------------
class MinuteCount(BaseModel):
    model_config = ConfigDict(frozen=True)

    minute: datetime = Field(description="Start of the minute (UTC).")
    completed: int = Field(description="Step attempts that completed in that minute.")
    failed: int = Field(description="Step attempts that failed (waiting_retry or error) in it.")


class FailureRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    task_id: int
    template: str = Field(description="`namespace/name@version`.")
    step: str
    error_class: str
    message: str = Field(description="Cut to 300 characters.")
    at: datetime


class Overview(BaseModel):
    """What an operator looks at first (`GET /overview`, the dashboard's first page)."""

    model_config = ConfigDict(frozen=True)

    tasks_by_status: dict[str, int] = Field(description="Every task state, 0 when none.")
    steps_waiting_retry: int
    completed_last_hour: int = Field(description="Tasks that finished complete in the last hour.")
    completed_last_day: int
    failed_last_hour: int = Field(description="Tasks that finished in error in the last hour.")
    failed_last_day: int
    per_minute: list[MinuteCount] = Field(
        description="60 minutes, oldest first, ending with the current one."
    )
    latest_failures: list[FailureRow] = Field(
        description="Failed step attempts, newest first, at most 10."
    )
    generated_at: datetime
