"""Health, status and analytics of one store: the use cases behind `/health/*` and `/analytics/*`.

Reports are plain JSON-ready dicts (datetimes stay datetimes) so the engine object, the API and the CLI
share them. Checks that touch the database run on a helper thread under a deadline: a database that
hangs makes a probe answer "not ready" in time instead of hanging the caller, and at most one probe per
store and kind is in flight, so a load balancer that keeps asking cannot pile up stuck threads.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, TypeVar

from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text

from tasker.domain.errors import TaskerInputError
from tasker.domain.states import StepState, TaskState
from tasker.store import analytics, rollups, systems
from tasker.store import workers as workers_store
from tasker.store.database import Database
from tasker.store.migrate import head_revision
from tasker.templates.model import NAME, SEMVER

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

T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


# -- bounded probes ------------------------------------------------------------------------------------
_inflight: weakref.WeakKeyDictionary[Database, dict[str, Future[Any]]] = weakref.WeakKeyDictionary()
_inflight_lock = threading.Lock()


def _bounded(db: Database, kind: str, fn: Callable[[], T], timeout: float) -> T:
    """Run `fn` on a helper thread and wait at most `timeout` seconds (raises `FutureTimeout`).

    A probe still running from an earlier call is joined rather than started again.
    """
    with _inflight_lock:
        running = _inflight.setdefault(db, {})
        future = running.get(kind)
        if future is None or future.done():
            future = Future()
            running[kind] = future
            threading.Thread(
                target=_fulfil, args=(future, fn), name=f"tasker-{kind}-probe", daemon=True
            ).start()
    result: T = future.result(timeout=timeout)
    return result


def _fulfil(future: Future[Any], fn: Callable[[], Any]) -> None:
    try:
        future.set_result(fn())
    except BaseException as exc:
        future.set_exception(exc)


@cache
def _head() -> str | None:
    return head_revision()


def _error_line(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:300]


def _probe(db: Database) -> dict[str, Any]:
    started = time.perf_counter()
    with db.reader.connect() as conn:
        conn.execute(text("SELECT 1"))
        current = MigrationContext.configure(conn).get_current_revision()
    return {
        "current": current,
        "response_time_ms": round((time.perf_counter() - started) * 1000, 3),
    }


def readiness(db: Database, *, timeout: float = READY_TIMEOUT_SECONDS) -> dict[str, Any]:
    """Ready when the database answers within `timeout` and its schema is at the latest migration."""
    head = _head()
    database: dict[str, Any]
    migrations: dict[str, Any] = {"status": "unknown", "current": None, "head": head}
    try:
        probe = _bounded(db, "ready", lambda: _probe(db), timeout)
    except FutureTimeout:
        database = {"status": "failing", "error": f"no answer within {timeout:g}s"}
    except Exception as exc:
        database = {"status": "failing", "error": _error_line(exc)}
    else:
        database = {"status": "ok", "response_time_ms": probe["response_time_ms"]}
        migrations["current"] = probe["current"]
        if probe["current"] == head:
            migrations["status"] = "ok"
        else:
            migrations["status"] = "failing"
            migrations["error"] = (
                f"schema at revision {probe['current'] or 'none'}, expected {head}; "
                "fix: run 'tasker db upgrade'"
            )
    checks = {"database": database, "migrations": migrations}
    failed = [name for name, check in checks.items() if check["status"] != "ok"]
    return {
        "status": "not_ready" if failed else "ready",
        "ready": not failed,
        "checks": checks,
        "failed_checks": failed,
        "timestamp": utcnow(),
    }


# -- status ----------------------------------------------------------------------------------------------
def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _collect_status(db: Database, window_hours: int) -> dict[str, Any]:
    now = utcnow()
    with db.reader.connect() as conn:
        outcomes = analytics.task_outcomes(
            conn, analytics.Scope(now - timedelta(hours=window_hours))
        )
        step_states = analytics.step_states(conn, now - timedelta(hours=window_hours))
        last_hour = analytics.Scope(now - timedelta(hours=1))
        hour_tasks = analytics.task_outcomes(conn, last_hour)
        hour_steps = analytics.step_counts(conn, last_hour)
        backlog = analytics.backlog(conn, now, now - timedelta(seconds=OVERDUE_SECONDS))
        workers = workers_store.recent(conn, now, WORKER_SEEN_SECONDS, limit=100)
        n_workers = workers_store.count_recent(conn, now, WORKER_SEEN_SECONDS)
        circuits = systems.report(conn)
    tasks = {s.value: 0 for s in TaskState}
    for o in outcomes.values():
        for status, n in o.by_status.items():
            tasks[status] = tasks.get(status, 0) + n
    steps = {s.value: 0 for s in StepState}
    steps.update(step_states)
    finished_states = ("complete", "error", "resolved_manually", "cancelled")
    finished = sum(o.by_status.get(s, 0) for o in hour_tasks.values() for s in finished_states)
    failed = sum(o.by_status.get("error", 0) for o in hour_tasks.values())
    attempts = sum(c.attempts for c in hour_steps.values())
    failed_attempts = sum(c.retries + c.errors for c in hour_steps.values())
    return {
        "window_hours": window_hours,
        "tasks": {**tasks, "total": sum(tasks.values())},
        "steps": {**steps, "total": sum(steps.values())},
        "backlog": {
            "due_steps": backlog.due_steps,
            "overdue_steps": backlog.overdue_steps,
            "oldest_due_seconds": (
                round((now - backlog.oldest_due_at).total_seconds(), 3)
                if backlog.oldest_due_at
                else None
            ),
            "scheduled_steps": backlog.scheduled_steps,
            "running_steps": backlog.running_steps,
            "active_tasks": backlog.active_tasks,
            "tasks_in_error": backlog.tasks_in_error,
        },
        "last_hour": {
            "finished_tasks": finished,
            "failed_tasks": failed,
            "task_error_rate": _rate(failed, finished),
            "step_attempts": attempts,
            "failed_attempts": failed_attempts,
            "step_failure_rate": _rate(failed_attempts, attempts),
        },
        "workers": {
            "seen_recently": n_workers,
            "window_seconds": WORKER_SEEN_SECONDS,
            "items": workers,
        },
        "circuits": circuits,
    }


def _judge(report: dict[str, Any]) -> tuple[str, list[str]]:
    """The health rule: unhealthy when most recent work fails, degraded when work waits or a circuit is open."""
    unhealthy: list[str] = []
    degraded: list[str] = []
    hour = report["last_hour"]
    if (
        hour["finished_tasks"] >= MIN_FINISHED_TASKS
        and hour["task_error_rate"] > MAX_TASK_ERROR_RATE
    ):
        unhealthy.append(
            f"{hour['failed_tasks']} of {hour['finished_tasks']} tasks finished in the last hour "
            f"are in error (more than {MAX_TASK_ERROR_RATE:.0%})"
        )
    if (
        hour["step_attempts"] >= MIN_STEP_ATTEMPTS
        and hour["step_failure_rate"] > MAX_STEP_FAILURE_RATE
    ):
        unhealthy.append(
            f"{hour['failed_attempts']} of {hour['step_attempts']} step attempts in the last hour "
            f"failed (more than {MAX_STEP_FAILURE_RATE:.0%})"
        )
    for c in report["circuits"]:
        if c["circuit_state"] != systems.CLOSED:
            degraded.append(
                f"the circuit of dependent system '{c['name']}' is"
                f" {c['circuit_state'].replace('_', '-')}"
            )
    backlog = report["backlog"]
    if backlog["overdue_steps"]:
        degraded.append(
            f"{backlog['overdue_steps']} steps have been due for more than {OVERDUE_SECONDS:g}s "
            f"(oldest {backlog['oldest_due_seconds']:.0f}s) with "
            f"{report['workers']['seen_recently']} workers seen recently"
        )
    if unhealthy:
        return "unhealthy", unhealthy + degraded
    return ("degraded", degraded) if degraded else ("healthy", [])


def status(
    db: Database, *, window_hours: int = 24, timeout: float = STATUS_TIMEOUT_SECONDS
) -> dict[str, Any]:
    """Counts by state, the live backlog, workers, circuits and a verdict: healthy, degraded or unhealthy."""
    _check_period("window_hours", window_hours)
    ready = readiness(db, timeout=min(timeout, READY_TIMEOUT_SECONDS))
    empty: dict[str, Any] = {
        "window_hours": window_hours,
        "tasks": None,
        "steps": None,
        "backlog": None,
        "last_hour": None,
        "workers": None,
        "circuits": None,
    }
    if not ready["ready"]:
        reasons = [
            f"{name}: {ready['checks'][name].get('error', 'failing')}"
            for name in ready["failed_checks"]
        ]
        return {
            "status": "unhealthy",
            "healthy": False,
            "reasons": reasons,
            "checks": ready["checks"],
            **empty,
            "generated_at": utcnow(),
        }
    try:
        report = _bounded(
            db, f"status-{window_hours}", lambda: _collect_status(db, window_hours), timeout
        )
    except FutureTimeout:
        return {
            "status": "unhealthy",
            "healthy": False,
            "reasons": [f"status queries took more than {timeout:g}s"],
            "checks": ready["checks"],
            **empty,
            "generated_at": utcnow(),
        }
    verdict, reasons = _judge(report)
    return {
        "status": verdict,
        "healthy": verdict != "unhealthy",
        "reasons": reasons,
        "checks": ready["checks"],
        **report,
        "generated_at": utcnow(),
    }


# -- analytics -------------------------------------------------------------------------------------------
def _check_period(field: str, hours: Any) -> None:
    if isinstance(hours, bool) or not isinstance(hours, int) or not 1 <= hours <= MAX_PERIOD_HOURS:
        raise TaskerInputError(
            f"{field} must be a whole number of hours from 1 to {MAX_PERIOD_HOURS}, not {hours!r}"
        )


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
    return analytics.Scope(
        utcnow() - timedelta(hours=period_hours), namespace or None, name or None, version or None
    )


def _dist(dist: analytics.Distribution | None, digits: int = 3) -> dict[str, Any]:
    d = dist or analytics.Distribution()

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, digits)

    return {"count": d.count, "avg": r(d.avg), "p50": r(d.p50), "p95": r(d.p95), "max": r(d.max)}


def _header(s: analytics.Scope, period_hours: int) -> dict[str, Any]:
    return {
        "period_hours": period_hours,
        "since": s.since,
        "generated_at": utcnow(),
        "filters": {"namespace": s.namespace, "name": s.name, "version": s.version},
    }


@contextmanager
def _report_snapshot(db: Database) -> Iterator[Connection]:
    """Bring the hourly rollups up to date, then read a report in one snapshot.

    The rollups, the rows not rolled up yet and the open tasks must be read at one instant, or a task
    finishing between two reads would be counted twice or not at all: PostgreSQL reads in a REPEATABLE
    READ transaction; a SQLite read transaction is a snapshot already.
    """
    rollups.catch_up(db.write)
    with db.reader.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


def performance(
    db: Database,
    period_hours: int = 24,
    *,
    namespace: str | None = None,
    name: str | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """Per template over the period: tasks started, completed, failed; completion rate; durations; throughput."""
    s = scope(period_hours, namespace, name, version)
    with _report_snapshot(db) as conn:
        outcomes, durations = rollups.task_report(conn, s)
        counts, _ = rollups.step_report(conn, s)
    return _performance(s, period_hours, outcomes, durations, counts)


def _performance(
    s: analytics.Scope,
    period_hours: int,
    outcomes: dict[analytics.TemplateKey, analytics.TaskOutcomes],
    durations: dict[analytics.TemplateKey, analytics.Distribution],
    counts: dict[analytics.StepKey, analytics.StepCounts],
) -> dict[str, Any]:
    """The performance report from the figures read (apart, so `reports` can share one read)."""
    per_template: dict[analytics.TemplateKey, list[analytics.StepCounts]] = {}
    for key, c in counts.items():
        per_template.setdefault((key[0], key[1], key[2]), []).append(c)
    rows = []
    for tkey in sorted(set(outcomes) | set(per_template)):
        o = outcomes.get(tkey, analytics.TaskOutcomes())
        rows.append(
            {
                "namespace": tkey[0],
                "name": tkey[1],
                "version": tkey[2],
                **_task_figures(o, period_hours),
                "duration_seconds": _dist(durations.get(tkey)),
                **_step_figures(per_template.get(tkey, []), period_hours),
            }
        )
    totals = analytics.TaskOutcomes()
    for o in outcomes.values():
        totals.created += o.created
        totals.started += o.started
        for status, n in o.by_status.items():
            totals.by_status[status] = totals.by_status.get(status, 0) + n
    return {
        **_header(s, period_hours),
        "totals": {
            **_task_figures(totals, period_hours),
            **_step_figures(list(counts.values()), period_hours),
        },
        "templates": rows,
    }


def _task_figures(o: analytics.TaskOutcomes, hours: int) -> dict[str, Any]:
    b = o.by_status
    completed, failed, cancelled = b.get("complete", 0), b.get("error", 0), b.get("cancelled", 0)
    resolved = b.get("resolved_manually", 0)
    finished = completed + failed + cancelled + resolved
    return {
        "created": o.created,
        "started": o.started,
        "completed": completed,
        "failed": failed,
        "cancelled": cancelled,
        "resolved_manually": resolved,
        "in_flight": o.created - finished,
        "completion_rate": _rate(completed, finished),
        "error_rate": _rate(failed, finished),
        "task_throughput_per_hour": round(completed / hours, 4),
    }


def _step_figures(counts: list[analytics.StepCounts], hours: int) -> dict[str, Any]:
    done = sum(c.completed for c in counts)
    return {
        "step_attempts": sum(c.attempts for c in counts),
        "steps_completed": done,
        "step_retries": sum(c.retries for c in counts),
        "step_errors": sum(c.errors for c in counts),
        "step_throughput_per_hour": round(done / hours, 4),
    }


def bottlenecks(
    db: Database,
    period_hours: int = 24,
    *,
    namespace: str | None = None,
    name: str | None = None,
    version: str | None = None,
    limit: int = 10,
) -> dict[str, Any]:
    """Slowest and most retried steps, error rates per step and per dependent system, and what to do."""
    _check_limit(limit)
    s = scope(period_hours, namespace, name, version)
    with _report_snapshot(db) as conn:
        tasks = sum(o.created for o in rollups.task_report(conn, s)[0].values())
        counts, durations = rollups.step_report(conn, s)
        circuits = {c["name"]: c["circuit_state"] for c in systems.report(conn)}
    return _bottlenecks(s, period_hours, tasks, counts, durations, circuits, limit)


def reports(
    db: Database,
    period_hours: int = 24,
    *,
    namespace: str | None = None,
    name: str | None = None,
    version: str | None = None,
    limit: int = 10,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`performance` and `bottlenecks` of one scope, as those answer, from one read.

    The dashboard shows both: apart, each would catch the rollups up and read the task and step
    figures (the dearer half of each report) on its own; here that happens once, in one snapshot,
    so the two reports also agree with each other.
    """
    _check_limit(limit)
    s = scope(period_hours, namespace, name, version)
    with _report_snapshot(db) as conn:
        outcomes, task_durations = rollups.task_report(conn, s)
        counts, durations = rollups.step_report(conn, s)
        circuits = {c["name"]: c["circuit_state"] for c in systems.report(conn)}
    tasks = sum(o.created for o in outcomes.values())
    return (
        _performance(s, period_hours, outcomes, task_durations, counts),
        _bottlenecks(s, period_hours, tasks, counts, durations, circuits, limit),
    )


def _check_limit(limit: Any) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
        raise TaskerInputError(f"limit must be a whole number from 1 to 100, not {limit!r}")


def _bottlenecks(
    s: analytics.Scope,
    period_hours: int,
    tasks: int,
    counts: dict[analytics.StepKey, analytics.StepCounts],
    durations: dict[analytics.StepKey, analytics.Distribution],
    circuits: dict[str, str],
    limit: int,
) -> dict[str, Any]:
    """The bottlenecks report from the figures read (apart, so `reports` can share one read)."""
    template_ms: dict[analytics.TemplateKey, float] = {}
    for key, dist in durations.items():
        tkey = (key[0], key[1], key[2])
        template_ms[tkey] = template_ms.get(tkey, 0.0) + (dist.total or 0.0)
    steps: list[dict[str, Any]] = []
    for key, c in counts.items():
        d = durations.get(key)
        whole = template_ms.get((key[0], key[1], key[2])) or 0.0
        failures = c.retries + c.errors
        steps.append(
            {
                "namespace": key[0],
                "name": key[1],
                "version": key[2],
                "step": key[3],
                "dependent_system": key[4],
                "steps": c.steps,
                "attempts": c.attempts,
                "completed": c.completed,
                "retries": c.retries,
                "errors": c.errors,
                "errors_after_retries": c.errors_after_retries,
                "retry_limit": c.retry_limit,
                "failure_rate": _rate(failures, c.attempts),
                "retries_per_step": _rate(c.retries, c.steps),
                "duration_ms": _dist(d, 1),
                "share_of_template_time": (
                    round((d.total or 0.0) / whole, 4) if d and whole else None
                ),
                "top_errors": _top(c.error_classes),
            }
        )
    by_system: dict[str, analytics.StepCounts] = {}
    for key, c in counts.items():
        total = by_system.setdefault(key[4], analytics.StepCounts())
        total.attempts += c.attempts
        total.retries += c.retries
        total.errors += c.errors
        for cls, n in c.error_classes.items():
            total.error_classes[cls] = total.error_classes.get(cls, 0) + n
    systems_out: list[dict[str, Any]] = []
    for system, total in by_system.items():
        failures = total.retries + total.errors
        systems_out.append(
            {
                "dependent_system": system,
                "attempts": total.attempts,
                "failures": failures,
                "retries": total.retries,
                "errors": total.errors,
                "failure_rate": _rate(failures, total.attempts),
                "circuit_state": circuits.get(system, systems.CLOSED),
                "top_errors": _top(total.error_classes),
            }
        )
    classes: dict[str, int] = {}
    for c in counts.values():
        for cls, n in c.error_classes.items():
            classes[cls] = classes.get(cls, 0) + n

    def timing(r: dict[str, Any]) -> tuple[float, float]:
        return (r["duration_ms"]["p95"] or 0.0, r["duration_ms"]["avg"] or 0.0)

    slowest = sorted((r for r in steps if r["duration_ms"]["count"]), key=timing, reverse=True)
    retried = sorted(
        (r for r in steps if r["retries"]),
        key=lambda r: (r["retries"], r["retries_per_step"] or 0),
        reverse=True,
    )
    erring = sorted(
        steps, key=lambda r: (r["failure_rate"] or 0.0, r["retries"] + r["errors"]), reverse=True
    )
    systems_out.sort(key=lambda r: (r["failure_rate"] or 0.0, r["failures"]), reverse=True)
    return {
        **_header(s, period_hours),
        "scope": {"tasks": tasks, "step_attempts": sum(c.attempts for c in counts.values())},
        "slowest_steps": slowest[:limit],
        "most_retried_steps": retried[:limit],
        "step_error_rates": erring[:limit],
        "system_error_rates": systems_out[:limit],
        "error_classes": _top(classes, limit),
        "recommendations": recommendations(steps, systems_out, classes)[:limit],
    }


def _top(classes: dict[str, int], n: int = 3) -> list[dict[str, Any]]:
    ranked = sorted(classes.items(), key=lambda kv: (-kv[1], kv[0]))
    return [{"error_class": cls, "count": count} for cls, count in ranked[:n]]


# -- recommendations -------------------------------------------------------------------------------------
#: Fewer attempts than this say nothing about a rate: no recommendation is drawn from them.
MIN_SAMPLE = 5
FAILING_RATE, CRITICAL_RATE = 0.2, 0.5
#: A step is the bottleneck of its template when it takes at least half of the template's step time, at
#: least 3 times as much as the next slowest step, and at least 10 ms on average.
BOTTLENECK_SHARE, BOTTLENECK_RATIO, BOTTLENECK_MIN_MS = 0.5, 3.0, 10.0
#: A long tail: p95 at least 3 times the median and at least 100 ms, over at least 20 attempts.
LONG_TAIL_SAMPLE, LONG_TAIL_RATIO, LONG_TAIL_MIN_MS = 20, 3.0, 100.0
_SEVERITY = {"critical": 0, "warning": 1, "info": 2}


def _advice(kind: str, severity: str, subject: str, message: str, **figures: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "severity": severity,
        "subject": subject,
        "message": message,
        "figures": figures,
    }


def recommendations(
    steps: list[dict[str, Any]], systems_out: list[dict[str, Any]], classes: dict[str, int]
) -> list[dict[str, Any]]:
    """What the figures suggest doing, most urgent first; each item cites the figures it comes from."""
    out: list[dict[str, Any]] = []
    shares: dict[tuple[str, str, str], list[float]] = {}
    for r in steps:
        key = (r["namespace"], r["name"], r["version"])
        shares.setdefault(key, []).append(r["share_of_template_time"] or 0.0)
    for r in steps:
        ref = f"{r['namespace']}/{r['name']}@{r['version']}"
        subject = f"{ref}:{r['step']}"
        top = r["top_errors"][0]["error_class"] if r["top_errors"] else None
        if r["errors_after_retries"]:
            out.append(
                _advice(
                    "retries_exhausted",
                    "critical",
                    subject,
                    f"step '{r['step']}' of {ref} ended in error after being retried in"
                    f" {r['errors_after_retries']} task(s) (retry limit {r['retry_limit']}, mostly"
                    f" {top}): its failures outlast the retries; raise default_retry_limit or the"
                    f" backoff, or fix '{r['dependent_system']}'",
                    errors_after_retries=r["errors_after_retries"],
                    retry_limit=r["retry_limit"],
                )
            )
        rate = r["failure_rate"] or 0.0
        if r["attempts"] >= MIN_SAMPLE and rate >= FAILING_RATE:
            failures = r["retries"] + r["errors"]
            if top == "StepTimeoutError":
                hint = (
                    "most failures are timeouts: raise handler_config.timeout_seconds or make the"
                    " call faster"
                )
            elif r["retries"] == 0:
                hint = (
                    "the failures are permanent (never retried): check the input data or the"
                    " handler"
                )
            else:
                hint = f"retries absorb them, but check '{r['dependent_system']}'"
            out.append(
                _advice(
                    "failing_step",
                    "critical" if rate >= CRITICAL_RATE else "warning",
                    subject,
                    f"step '{r['step']}' of {ref} failed {failures} of its {r['attempts']} attempts"
                    f" ({rate:.0%}, mostly {top}): {hint}",
                    failure_rate=rate,
                    failures=failures,
                    attempts=r["attempts"],
                )
            )
        d = r["duration_ms"]
        share = r["share_of_template_time"]
        ranked = sorted(shares[(r["namespace"], r["name"], r["version"])], reverse=True)
        if (
            share is not None
            and share >= BOTTLENECK_SHARE
            and len(ranked) > 1
            and share >= BOTTLENECK_RATIO * ranked[1]
            and d["count"] >= MIN_SAMPLE
            and (d["avg"] or 0.0) >= BOTTLENECK_MIN_MS
        ):
            out.append(
                _advice(
                    "slow_step",
                    "warning",
                    subject,
                    f"step '{r['step']}' takes {share:.0%} of the step time of {ref} (p95"
                    f" {d['p95']:.0f} ms, average {d['avg']:.0f} ms): it is the bottleneck; make it"
                    " faster, cache its calls, or split it into steps that run in parallel",
                    share_of_template_time=share,
                    p95_ms=d["p95"],
                )
            )
        if (
            d["count"] >= LONG_TAIL_SAMPLE
            and d["p50"]
            and d["p95"] >= LONG_TAIL_RATIO * d["p50"]
            and d["p95"] >= LONG_TAIL_MIN_MS
        ):
            out.append(
                _advice(
                    "long_tail",
                    "info",
                    subject,
                    f"step '{r['step']}' of {ref} has a long tail: p95 {d['p95']:.0f} ms is"
                    f" {d['p95'] / d['p50']:.1f}x the median {d['p50']:.0f} ms; give its calls a"
                    " client timeout shorter than handler_config.timeout_seconds",
                    p50_ms=d["p50"],
                    p95_ms=d["p95"],
                )
            )
    users: dict[str, int] = {}
    for r in steps:
        users[r["dependent_system"]] = users.get(r["dependent_system"], 0) + 1
    for sysrow in systems_out:
        rate = sysrow["failure_rate"] or 0.0
        name = sysrow["dependent_system"]
        circuit = sysrow["circuit_state"]
        if sysrow["attempts"] < MIN_SAMPLE or rate < FAILING_RATE:
            continue
        if users.get(name, 0) < 2 and circuit == systems.CLOSED:
            continue  # one step uses it: that step's own recommendation already names the system
        top = sysrow["top_errors"][0]["error_class"] if sysrow["top_errors"] else None
        out.append(
            _advice(
                "unstable_system",
                "critical" if circuit != systems.CLOSED or rate >= CRITICAL_RATE else "warning",
                name,
                f"dependent system '{name}' failed {sysrow['failures']} of {sysrow['attempts']}"
                f" attempts ({rate:.0%}, mostly {top}); its circuit is {circuit.replace('_', '-')};"
                f" tune it with 'tasker systems set {name} --failure-threshold N"
                " --cooldown-seconds S'",
                failure_rate=rate,
                attempts=sysrow["attempts"],
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
    out.sort(key=lambda a: _SEVERITY[a["severity"]])
    return out
