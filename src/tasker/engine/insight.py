"""Health, status, analytics and the overview of one store: the `engine.insight` part of `Tasker`.

Every report is a typed model of `tasker.domain.reports`, which the REST API serves as it is and the
CLI and the dashboard render. The figures are read by the store (`tasker.store.health`,
`tasker.store.rollups`, `tasker.store.overview`), each in one transaction it owns; this module
validates the filters, judges health and turns the figures into reports and advice. Checks that
touch the database run under a deadline (`tasker.store.health.Probes`), so a database that hangs
makes a probe answer "not ready" in time instead of hanging the caller.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from tasker.domain.errors import TaskerInputError
from tasker.domain.reports import (
    Backlog,
    Bottlenecks,
    Checks,
    DatabaseCheck,
    Distribution,
    ErrorCount,
    Filters,
    LastHour,
    MigrationCheck,
    Overview,
    Performance,
    Ready,
    Recommendation,
    ReportHeader,
    Scope,
    Severity,
    Status,
    StepBottleneck,
    StepCounts,
    SystemErrors,
    TaskCounts,
    TaskFigures,
    TemplatePerformance,
    Verdict,
    Workers,
)
from tasker.domain.states import FINISHED_TASK_STATES, StepState, TaskState
from tasker.domain.templates import NAME, SEMVER
from tasker.engine import clock
from tasker.store import analytics, health, overview, rollups
from tasker.store import workers as workers_store
from tasker.store.database import Database
from tasker.store.systems import CLOSED

#: The health rule (docs/analytics.md). Over the tasks created in the last hour: at least this many
#: finished tasks, more than this share of them in `error` -> unhealthy.
MIN_FINISHED_TASKS, MAX_TASK_ERROR_RATE = 10, 0.5
#: ... at least this many step attempts, more than this share of them failed -> unhealthy.
MIN_STEP_ATTEMPTS, MAX_STEP_FAILURE_RATE = 20, 0.5
#: A step due for longer than this with nobody claiming it makes the engine degraded.
OVERDUE_SECONDS = 60.0
#: A worker counts as alive when it heartbeated this recently and has not stopped.
WORKER_SEEN_SECONDS = workers_store.ALIVE_WITHIN_SECONDS
READY_TIMEOUT_SECONDS = 5.0
STATUS_TIMEOUT_SECONDS = 10.0
MAX_PERIOD_HOURS = 2160  # 90 days


def utcnow() -> datetime:
    return clock.now()


class Insight:
    """Reports on one store: readiness, status, performance, bottlenecks and the overview.

    Holds what the reports keep between calls, per engine: the probes in flight and the overview's
    settled counts.
    """

    def __init__(self, db: Database):
        self.db = db
        self._probes = health.Probes()
        self._final_counts = overview.FinalCounts()

    def readiness(self, *, timeout: float = READY_TIMEOUT_SECONDS) -> Ready:
        """Ready when the database answers within `timeout` and its schema is at the latest
        migration."""
        head = health.head_revision()
        migrations = MigrationCheck(status="unknown", current=None, head=head)
        try:
            probe = self._probes.run("ready", lambda: health.probe(self.db), timeout)
        except TimeoutError:
            database = DatabaseCheck(status="failing", error=f"no answer within {timeout:g}s")
        except Exception as exc:
            database = DatabaseCheck(status="failing", error=_error_line(exc))
        else:
            database = DatabaseCheck(status="ok", response_time_ms=probe.response_time_ms)
            migrations.current = probe.current
            if probe.current == head:
                migrations.status = "ok"
            else:
                migrations.status = "failing"
                migrations.error = (
                    f"schema at revision {probe.current or 'none'}, expected {head}; "
                    "fix: run 'tasker db upgrade'"
                )
        failed: list[Any] = [
            name
            for name, check in (("database", database), ("migrations", migrations))
            if check.status != "ok"
        ]
        return Ready(
            status="not_ready" if failed else "ready",
            ready=not failed,
            checks=Checks(database=database, migrations=migrations),
            failed_checks=failed,
            timestamp=utcnow(),
        )

    def status(self, *, window_hours: int = 24, timeout: float = STATUS_TIMEOUT_SECONDS) -> Status:
        """Counts by state, the live backlog, workers, circuits and a verdict: healthy, degraded
        or unhealthy."""
        _check_period("window_hours", window_hours)
        ready = self.readiness(timeout=min(timeout, READY_TIMEOUT_SECONDS))
        if not ready.ready:
            checks = ready.checks
            reasons = [
                f"{name}: {getattr(checks, name).error or 'failing'}"
                for name in ready.failed_checks
            ]
            return _unanswered(window_hours, reasons, checks)
        try:
            report = self._probes.run(
                f"status-{window_hours}", lambda: _collect_status(self.db, window_hours), timeout
            )
        except TimeoutError:
            reasons = [f"status queries took more than {timeout:g}s"]
            return _unanswered(window_hours, reasons, ready.checks)
        verdict, reasons = _judge(report)
        report.status, report.healthy, report.reasons = verdict, verdict != "unhealthy", reasons
        report.checks = ready.checks
        report.generated_at = utcnow()
        return report

    def performance(
        self,
        period_hours: int = 24,
        *,
        namespace: str | None = None,
        name: str | None = None,
        version: str | None = None,
    ) -> Performance:
        """Per template over the period: tasks started, completed, failed; completion rate;
        durations; throughput."""
        s = scope(period_hours, namespace, name, version)
        figures = rollups.read_reports(self.db, s)
        return _performance(s, period_hours, figures)

    def bottlenecks(
        self,
        period_hours: int = 24,
        *,
        namespace: str | None = None,
        name: str | None = None,
        version: str | None = None,
        limit: int = 10,
    ) -> Bottlenecks:
        """Slowest and most retried steps, error rates per step and per dependent system, and
        what to do."""
        _check_limit(limit)
        s = scope(period_hours, namespace, name, version)
        figures = rollups.read_reports(self.db, s)
        return _bottlenecks(s, period_hours, figures, limit)

    def analytics(
        self,
        period_hours: int = 24,
        *,
        namespace: str | None = None,
        name: str | None = None,
        version: str | None = None,
        limit: int = 10,
    ) -> tuple[Performance, Bottlenecks]:
        """`performance` and `bottlenecks` of one scope, as those answer, from one read.

        The dashboard shows both: apart, each would catch the rollups up and read the task and step
        figures (the dearer half of each report) on its own; here that happens once, in one
        snapshot, so the two reports also agree with each other.
        """
        _check_limit(limit)
        s = scope(period_hours, namespace, name, version)
        figures = rollups.read_reports(self.db, s)
        return (
            _performance(s, period_hours, figures),
            _bottlenecks(s, period_hours, figures, limit),
        )

    def overview(self) -> Overview:
        """Tasks by status, retries waiting, recent outcomes, attempts per minute, latest
        failures."""
        return overview.overview(self.db, self._final_counts)


def _error_line(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:300]


# -- status ----------------------------------------------------------------------------------------
def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _unanswered(window_hours: int, reasons: list[str], checks: Checks) -> Status:
    return Status(
        status="unhealthy",
        healthy=False,
        reasons=reasons,
        checks=checks,
        window_hours=window_hours,
        tasks=None,
        steps=None,
        backlog=None,
        last_hour=None,
        workers=None,
        circuits=None,
        generated_at=utcnow(),
    )


def _collect_status(db: Database, window_hours: int) -> Status:
    """The figures of a status report; its verdict and checks are filled in by the caller."""
    now = utcnow()
    f = health.status_figures(
        db,
        now,
        window_hours=window_hours,
        overdue_seconds=OVERDUE_SECONDS,
        worker_seen_seconds=WORKER_SEEN_SECONDS,
    )
    tasks = {s.value: 0 for s in TaskState}
    for o in f.outcomes.values():
        for status, n in o.by_status.items():
            tasks[status] = tasks.get(status, 0) + n
    steps = {s.value: 0 for s in StepState}
    for o in f.outcomes.values():
        for state, n in o.steps.items():
            steps[state] = steps.get(state, 0) + n
    hour = _sum_outcomes(f.hour_tasks.values())
    finished = sum(hour.by_status.get(s, 0) for s in FINISHED_TASK_STATES)
    failed = hour.by_status.get(TaskState.ERROR, 0)
    attempts = sum(c.attempts for c in f.hour_steps.values())
    failed_attempts = sum(c.retries + c.errors for c in f.hour_steps.values())
    b = f.backlog
    return Status(
        status="healthy",
        healthy=True,
        reasons=[],
        checks=Checks(
            database=DatabaseCheck(status="ok"),
            migrations=MigrationCheck(status="ok", current=None, head=None),
        ),
        window_hours=window_hours,
        since=f.since,
        tasks=TaskCounts(**tasks, total=sum(tasks.values())),
        steps=StepCounts(**steps, total=sum(steps.values())),
        backlog=Backlog(
            due_steps=b.due_steps,
            overdue_steps=b.overdue_steps,
            oldest_due_seconds=(
                round((now - b.oldest_due_at).total_seconds(), 3) if b.oldest_due_at else None
            ),
            scheduled_steps=b.scheduled_steps,
            running_steps=b.running_steps,
            active_tasks=b.active_tasks,
            tasks_in_error=b.tasks_in_error,
        ),
        last_hour=LastHour(
            finished_tasks=finished,
            failed_tasks=failed,
            task_error_rate=_rate(failed, finished),
            step_attempts=attempts,
            failed_attempts=failed_attempts,
            step_failure_rate=_rate(failed_attempts, attempts),
        ),
        workers=Workers(
            seen_recently=f.workers_seen, window_seconds=WORKER_SEEN_SECONDS, items=f.workers
        ),
        circuits=f.circuits,
        generated_at=now,
    )


def _judge(report: Status) -> tuple[Verdict, list[str]]:
    """The health rule: unhealthy when most recent work fails, degraded when work waits or a circuit
    is open."""
    unhealthy: list[str] = []
    degraded: list[str] = []
    hour, backlog, workers = report.last_hour, report.backlog, report.workers
    assert hour is not None and backlog is not None and workers is not None
    if (
        hour.finished_tasks >= MIN_FINISHED_TASKS
        and (hour.task_error_rate or 0.0) > MAX_TASK_ERROR_RATE
    ):
        unhealthy.append(
            f"{hour.failed_tasks} of {hour.finished_tasks} tasks finished in the last hour "
            f"are in error (more than {MAX_TASK_ERROR_RATE:.0%})"
        )
    if (
        hour.step_attempts >= MIN_STEP_ATTEMPTS
        and (hour.step_failure_rate or 0.0) > MAX_STEP_FAILURE_RATE
    ):
        unhealthy.append(
            f"{hour.failed_attempts} of {hour.step_attempts} step attempts in the last hour "
            f"failed (more than {MAX_STEP_FAILURE_RATE:.0%})"
        )
    for c in report.circuits or []:
        if c.circuit_state != CLOSED:
            degraded.append(
                f"the circuit of dependent system '{c.name}' is {c.circuit_state.replace('_', '-')}"
            )
    if backlog.overdue_steps:
        degraded.append(
            f"{backlog.overdue_steps} steps have been due for more than {OVERDUE_SECONDS:g}s "
            f"(oldest {backlog.oldest_due_seconds or 0.0:.0f}s) with "
            f"{workers.seen_recently} workers seen recently"
        )
    if unhealthy:
        return "unhealthy", unhealthy + degraded
    return ("degraded", degraded) if degraded else ("healthy", [])


# -- analytics -------------------------------------------------------------------------------------
def _check_period(field: str, hours: Any) -> None:
    if isinstance(hours, bool) or not isinstance(hours, int) or not 1 <= hours <= MAX_PERIOD_HOURS:
        raise TaskerInputError(
            f"{field} must be a whole number of hours from 1 to {MAX_PERIOD_HOURS}, not {hours!r}"
        )


def _check_limit(limit: Any) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
        raise TaskerInputError(f"limit must be a whole number from 1 to 100, not {limit!r}")


def scope(
    period_hours: int, namespace: str | None, name: str | None, version: str | None
) -> analytics.Scope:
    """Validate the filters of a report (empty strings mean no filter) and build its scope."""
    _check_period("period_hours", period_hours)
    for field, value, limit, pattern in (
        ("namespace", namespace, 64, NAME),
        ("name", name, 128, NAME),
        ("version", version, 64, SEMVER),
    ):
        if value and (not isinstance(value, str) or len(value) > limit or not pattern.match(value)):
            what = (
                "a semantic version like 1.2.0"
                if pattern is SEMVER
                else f"a name of at most {limit} characters"
            )
            raise TaskerInputError(
                f"{field} {value!r} is not {what}; fix: correct it or leave it out"
            )
    # The window starts at the beginning of the rollup slot `period_hours` ago: a report then reads
    # whole slots of the rollups and never the raw rows of a partial first slot, whose size grows
    # with the rate of work (docs/analytics.md, "Windows").
    since = rollups.slot_start(utcnow() - timedelta(hours=period_hours))
    return analytics.Scope(since, namespace or None, name or None, version or None)


def _dist(dist: analytics.Distribution | None, digits: int = 3) -> Distribution:
    d = dist or analytics.Distribution()

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, digits)

    return Distribution(count=d.count, avg=r(d.avg), p50=r(d.p50), p95=r(d.p95), max=r(d.max))


def _header(s: analytics.Scope, period_hours: int, now: datetime | None = None) -> ReportHeader:
    return ReportHeader(
        period_hours=period_hours,
        since=s.since,
        generated_at=now or utcnow(),
        filters=Filters(namespace=s.namespace, name=s.name, version=s.version),
    )


def _sum_outcomes(outcomes: Any) -> analytics.TaskOutcomes:
    totals = analytics.TaskOutcomes()
    for o in outcomes:
        totals.created += o.created
        totals.started += o.started
        for status, n in o.by_status.items():
            totals.by_status[status] = totals.by_status.get(status, 0) + n
    return totals


def _performance(
    s: analytics.Scope, period_hours: int, figures: rollups.ReportFigures
) -> Performance:
    """The performance report from the figures read (apart, so `analytics` can share one read)."""
    now = utcnow()
    per_template: dict[analytics.TemplateKey, list[analytics.StepCounts]] = {}
    for key, c in figures.step_counts.items():
        per_template.setdefault((key[0], key[1], key[2]), []).append(c)
    rows = []
    for tkey in sorted(set(figures.outcomes) | set(per_template)):
        o = figures.outcomes.get(tkey, analytics.TaskOutcomes())
        rows.append(
            TemplatePerformance(
                namespace=tkey[0],
                name=tkey[1],
                version=tkey[2],
                duration_seconds=_dist(figures.task_durations.get(tkey)),
                **_figures(o, per_template.get(tkey, []), _hours(s, now)).model_dump(),
            )
        )
    totals = _sum_outcomes(figures.outcomes.values())
    return Performance(
        **dict(_header(s, period_hours, now)),
        totals=_figures(totals, list(figures.step_counts.values()), _hours(s, now)),
        templates=rows,
    )


def _hours(s: analytics.Scope, now: datetime) -> float:
    """How long the window of a report is at `now` (its `generated_at`): throughput is per hour of
    it, the window being up to one slot longer than `period_hours`."""
    return max((now - s.since).total_seconds() / 3600, 1 / 60)


def _figures(
    o: analytics.TaskOutcomes, counts: list[analytics.StepCounts], hours: float
) -> TaskFigures:
    b = o.by_status
    completed, failed = b.get(TaskState.COMPLETE, 0), b.get(TaskState.ERROR, 0)
    cancelled, resolved = b.get(TaskState.CANCELLED, 0), b.get(TaskState.RESOLVED_MANUALLY, 0)
    compensated = b.get(TaskState.COMPENSATED, 0)
    finished = completed + failed + cancelled + resolved + compensated
    done = sum(c.completed for c in counts)
    return TaskFigures(
        created=o.created,
        started=o.started,
        completed=completed,
        failed=failed,
        cancelled=cancelled,
        resolved_manually=resolved,
        compensated=compensated,
        in_flight=o.created - finished,
        completion_rate=_rate(completed, finished),
        error_rate=_rate(failed, finished),
        task_throughput_per_hour=round(completed / hours, 4),
        step_attempts=sum(c.attempts for c in counts),
        steps_completed=done,
        step_retries=sum(c.retries for c in counts),
        step_errors=sum(c.errors for c in counts),
        step_throughput_per_hour=round(done / hours, 4),
    )


def _bottlenecks(
    s: analytics.Scope, period_hours: int, figures: rollups.ReportFigures, limit: int
) -> Bottlenecks:
    """The bottlenecks report from the figures read (apart, so `analytics` can share one read)."""
    counts, durations, circuits = figures.step_counts, figures.step_durations, figures.circuits
    tasks = sum(o.created for o in figures.outcomes.values())
    template_ms: dict[analytics.TemplateKey, float] = {}
    for key, dist in durations.items():
        tkey = (key[0], key[1], key[2])
        template_ms[tkey] = template_ms.get(tkey, 0.0) + (dist.total or 0.0)
    steps: list[StepBottleneck] = []
    for key, c in counts.items():
        d = durations.get(key)
        whole = template_ms.get((key[0], key[1], key[2])) or 0.0
        failures = c.retries + c.errors
        steps.append(
            StepBottleneck(
                namespace=key[0],
                name=key[1],
                version=key[2],
                step=key[3],
                dependent_system=key[4],
                steps=c.steps,
                attempts=c.attempts,
                completed=c.completed,
                retries=c.retries,
                errors=c.errors,
                errors_after_retries=c.errors_after_retries,
                retry_limit=c.retry_limit,
                failure_rate=_rate(failures, c.attempts),
                retries_per_step=_rate(c.retries, c.steps),
                duration_ms=_dist(d, 1),
                share_of_template_time=(
                    round((d.total or 0.0) / whole, 4) if d and whole else None
                ),
                top_errors=_top(c.error_classes),
            )
        )
    by_system: dict[str, analytics.StepCounts] = {}
    for key, c in counts.items():
        total = by_system.setdefault(key[4], analytics.StepCounts())
        total.attempts += c.attempts
        total.retries += c.retries
        total.errors += c.errors
        for cls, n in c.error_classes.items():
            total.error_classes[cls] = total.error_classes.get(cls, 0) + n
    systems_out: list[SystemErrors] = []
    for system, total in by_system.items():
        failures = total.retries + total.errors
        systems_out.append(
            SystemErrors(
                dependent_system=system,
                attempts=total.attempts,
                failures=failures,
                retries=total.retries,
                errors=total.errors,
                failure_rate=_rate(failures, total.attempts),
                circuit_state=circuits.get(system, CLOSED),
                top_errors=_top(total.error_classes),
            )
        )
    classes: dict[str, int] = {}
    for c in counts.values():
        for cls, n in c.error_classes.items():
            classes[cls] = classes.get(cls, 0) + n

    def timing(r: StepBottleneck) -> tuple[float, float]:
        return (r.duration_ms.p95 or 0.0, r.duration_ms.avg or 0.0)

    slowest = sorted((r for r in steps if r.duration_ms.count), key=timing, reverse=True)
    retried = sorted(
        (r for r in steps if r.retries),
        key=lambda r: (r.retries, r.retries_per_step or 0),
        reverse=True,
    )
    erring = sorted(
        steps, key=lambda r: (r.failure_rate or 0.0, r.retries + r.errors), reverse=True
    )
    systems_out.sort(key=lambda r: (r.failure_rate or 0.0, r.failures), reverse=True)
    return Bottlenecks(
        **dict(_header(s, period_hours)),
        scope=Scope(tasks=tasks, step_attempts=sum(c.attempts for c in counts.values())),
        slowest_steps=slowest[:limit],
        most_retried_steps=retried[:limit],
        step_error_rates=erring[:limit],
        system_error_rates=systems_out[:limit],
        error_classes=_top(classes, limit),
        recommendations=recommendations(steps, systems_out, classes)[:limit],
    )


def _top(classes: dict[str, int], n: int = 3) -> list[ErrorCount]:
    ranked = sorted(classes.items(), key=lambda kv: (-kv[1], kv[0]))
    return [ErrorCount(error_class=cls, count=count) for cls, count in ranked[:n]]


# -- recommendations -------------------------------------------------------------------------------
#: Fewer attempts than this say nothing about a rate: no recommendation is drawn from them.
MIN_SAMPLE = 5
FAILING_RATE, CRITICAL_RATE = 0.2, 0.5
#: A step is the bottleneck of its template when it takes at least half of the template's step time,
#: at least 3 times as much as the next slowest step, and at least 10 ms on average.
BOTTLENECK_SHARE, BOTTLENECK_RATIO, BOTTLENECK_MIN_MS = 0.5, 3.0, 10.0
#: A long tail: p95 at least 3 times the median and at least 100 ms, over at least 20 attempts.
LONG_TAIL_SAMPLE, LONG_TAIL_RATIO, LONG_TAIL_MIN_MS = 20, 3.0, 100.0
_SEVERITY: dict[Severity, int] = {"critical": 0, "warning": 1, "info": 2}


def _advice(
    kind: str, severity: Severity, subject: str, message: str, **figures: float | int | str | None
) -> Recommendation:
    return Recommendation(
        kind=kind, severity=severity, subject=subject, message=message, figures=figures
    )


def recommendations(
    steps: list[StepBottleneck], systems_out: list[SystemErrors], classes: dict[str, int]
) -> list[Recommendation]:
    """What the figures suggest doing, most urgent first; each item cites the figures it comes
    from."""
    out: list[Recommendation] = []
    shares: dict[tuple[str, str, str], list[float]] = {}
    for r in steps:
        key = (r.namespace, r.name, r.version)
        shares.setdefault(key, []).append(r.share_of_template_time or 0.0)
    for r in steps:
        ref = f"{r.namespace}/{r.name}@{r.version}"
        subject = f"{ref}:{r.step}"
        top = r.top_errors[0].error_class if r.top_errors else None
        if r.errors_after_retries:
            out.append(
                _advice(
                    "retries_exhausted",
                    "critical",
                    subject,
                    f"step '{r.step}' of {ref} ended in error after being retried in"
                    f" {r.errors_after_retries} task(s) (retry limit {r.retry_limit}, mostly"
                    f" {top}): its failures outlast the retries; raise default_retry_limit or the"
                    f" backoff, or fix '{r.dependent_system}'",
                    errors_after_retries=r.errors_after_retries,
                    retry_limit=r.retry_limit,
                )
            )
        rate = r.failure_rate or 0.0
        if r.attempts >= MIN_SAMPLE and rate >= FAILING_RATE:
            failures = r.retries + r.errors
            if top == "StepTimeoutError":
                hint = (
                    "most failures are timeouts: raise handler_config.timeout_seconds or make the"
                    " call faster"
                )
            elif r.retries == 0:
                hint = (
                    "the failures are permanent (never retried): check the input data or the"
                    " handler"
                )
            else:
                hint = f"retries absorb them, but check '{r.dependent_system}'"
            out.append(
                _advice(
                    "failing_step",
                    "critical" if rate >= CRITICAL_RATE else "warning",
                    subject,
                    f"step '{r.step}' of {ref} failed {failures} of its {r.attempts} attempts"
                    f" ({rate:.0%}, mostly {top}): {hint}",
                    failure_rate=rate,
                    failures=failures,
                    attempts=r.attempts,
                )
            )
        d = r.duration_ms
        share = r.share_of_template_time
        ranked = sorted(shares[(r.namespace, r.name, r.version)], reverse=True)
        if (
            share is not None
            and share >= BOTTLENECK_SHARE
            and len(ranked) > 1
            and share >= BOTTLENECK_RATIO * ranked[1]
            and d.count >= MIN_SAMPLE
            and (d.avg or 0.0) >= BOTTLENECK_MIN_MS
        ):
            out.append(
                _advice(
                    "slow_step",
                    "warning",
                    subject,
                    f"step '{r.step}' takes {share:.0%} of the step time of {ref} (p95"
                    f" {d.p95:.0f} ms, average {d.avg:.0f} ms): it is the bottleneck; make it"
                    " faster, cache its calls, or split it into steps that run in parallel",
                    share_of_template_time=share,
                    p95_ms=d.p95,
                )
            )
        if (
            d.count >= LONG_TAIL_SAMPLE
            and d.p50
            and d.p95 is not None
            and d.p95 >= LONG_TAIL_RATIO * d.p50
            and d.p95 >= LONG_TAIL_MIN_MS
        ):
            out.append(
                _advice(
                    "long_tail",
                    "info",
                    subject,
                    f"step '{r.step}' of {ref} has a long tail: p95 {d.p95:.0f} ms is"
                    f" {d.p95 / d.p50:.1f}x the median {d.p50:.0f} ms; give its calls a"
                    " client timeout shorter than handler_config.timeout_seconds",
                    p50_ms=d.p50,
                    p95_ms=d.p95,
                )
            )
    users: dict[str, int] = {}
    for r in steps:
        users[r.dependent_system] = users.get(r.dependent_system, 0) + 1
    for sysrow in systems_out:
        rate = sysrow.failure_rate or 0.0
        name = sysrow.dependent_system
        circuit = sysrow.circuit_state
        if sysrow.attempts < MIN_SAMPLE or rate < FAILING_RATE:
            continue
        if users.get(name, 0) < 2 and circuit == CLOSED:
            continue  # one step uses it: that step's own recommendation already names the system
        top = sysrow.top_errors[0].error_class if sysrow.top_errors else None
        out.append(
            _advice(
                "unstable_system",
                "critical" if circuit != CLOSED or rate >= CRITICAL_RATE else "warning",
                name,
                f"dependent system '{name}' failed {sysrow.failures} of {sysrow.attempts}"
                f" attempts ({rate:.0%}, mostly {top}); its circuit is {circuit.replace('_', '-')};"
                f" tune it with 'tasker systems set {name} --failure-threshold N"
                " --cooldown-seconds S'",
                failure_rate=rate,
                attempts=sysrow.attempts,
            )
        )
    lost = classes.get("LeaseExpired", 0)
    if lost:
        out.append(
            _advice(
                "lost_leases",
                "warning",
                "workers",
                f"{lost} attempts were lost to expired leases: a worker crashed, was killed or"
                " stalled for longer than lease_seconds; check the workers' health and logs",
                lost_attempts=lost,
            )
        )
    out.sort(key=lambda a: _SEVERITY[a.severity])
    return out
