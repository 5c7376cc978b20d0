"""Analytics on both stores: outcomes per template, exact percentiles, the period window, filters,
bottlenecks.

Durations that tests assert exactly are written into the rows after the run (timestamps of tasks,
`duration_ms` of step transitions), so the figures do not depend on how fast this machine is;
everything else (attempts, retries, failures) comes from real runs of the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import and_, insert, select, update

from tasker import Tasker, TaskerInputError
from tasker.domain.reports import StepBottleneck, SystemErrors
from tasker.engine import insight
from tasker.store import analytics, rollups
from tasker.store.rollups import BUCKET_ERROR
from tasker.store.schema import step_transitions, steps, tasks
from tests.integration.support import step

Load = Callable[..., str]


def _template(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in report["templates"] if t["name"] == name)


def _step(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(r for r in rows if r["step"] == name)


def _set_durations(tasker: Tasker, task_ids: list[int], seconds: list[float]) -> None:
    base = datetime.now(UTC) - timedelta(minutes=30)
    with tasker.db.write() as conn:
        for task_id, s in zip(task_ids, seconds):
            conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id)
                .values(started_at=base, finished_at=base + timedelta(seconds=s))
            )


def _set_step_durations(
    tasker: Tasker, task_ids: list[int], step_name: str, ms: list[float]
) -> None:
    """Give the attempt of `step_name` in each task the duration in `ms` (one attempt per task)."""
    with tasker.db.write() as conn:
        for task_id, value in zip(task_ids, ms):
            step_id = conn.execute(
                select(steps.c.id).where(steps.c.task_id == task_id, steps.c.name == step_name)
            ).scalar_one()
            conn.execute(
                update(step_transitions)
                .where(
                    and_(
                        step_transitions.c.step_id == step_id,
                        step_transitions.c.from_state == "in_progress",
                    )
                )
                .values(duration_ms=value)
            )


def test_performance_counts_outcomes_per_template(tasker: Tasker, load: Load, key: str) -> None:
    good = load("good", [step("a"), step("b", after="a")])
    bad = load("bad", [step("a", handler_config={"always_fail": "permanent"})])
    ok_ids = [tasker.create_task(good, {"key": key, "n": i}).id for i in range(3)]
    tasker.cancel_task(ok_ids[2])
    for i in range(2):
        tasker.create_task(bad, {"key": key, "n": i})
    tasker.work(until_idle=True)

    report = tasker.insight.performance(24).model_dump()

    g = _template(report, "good")
    assert (g["namespace"], g["version"]) == ("itest", "1.0.0")
    assert (
        g["created"],
        g["started"],
        g["completed"],
        g["failed"],
        g["cancelled"],
        g["in_flight"],
    ) == (3, 2, 2, 0, 1, 0)
    assert (g["completion_rate"], g["error_rate"]) == (0.6667, 0.0)
    assert (g["step_attempts"], g["steps_completed"], g["step_retries"], g["step_errors"]) == (
        4,
        4,
        0,
        0,
    )
    # Per hour of the window, which starts at the slot 24 hours ago (up to one slot longer).
    hours = (report["generated_at"] - report["since"]).total_seconds() / 3600
    assert 24 <= hours <= 24 + rollups.SLOT_MINUTES / 60
    assert g["step_throughput_per_hour"] == round(4 / hours, 4)
    assert g["duration_seconds"]["count"] == 2
    assert g["duration_seconds"]["p95"] is not None and g["duration_seconds"]["p95"] >= 0
    b = _template(report, "bad")
    assert (b["created"], b["started"], b["completed"], b["failed"]) == (2, 2, 0, 2)
    assert (b["completion_rate"], b["error_rate"]) == (0.0, 1.0)
    assert (b["step_attempts"], b["step_errors"]) == (2, 2)
    assert b["duration_seconds"] == {"count": 0, "avg": None, "p50": None, "p95": None, "max": None}
    totals = report["totals"]
    assert (totals["created"], totals["completed"], totals["failed"], totals["cancelled"]) == (
        5,
        2,
        2,
        1,
    )
    assert totals["step_attempts"] == 6


def _near(value: float) -> Any:
    """A percentile read from the rollups' histogram: within the documented bucket error."""
    return pytest.approx(value, rel=BUCKET_ERROR)


def test_task_duration_percentiles_are_nearest_rank_within_the_bucket_error(
    tasker: Tasker, load: Load, key: str
) -> None:
    ref = load("timed", [step("a")])
    ids = [tasker.create_task(ref, {"key": key, "n": i}).id for i in range(20)]
    tasker.work(until_idle=True)
    _set_durations(
        tasker, ids, [float(s) for s in range(20, 0, -1)]
    )  # 1..20 s, stored out of order
    tasker.create_task(ref, {"key": key, "n": "still pending"})  # not finished: no duration

    d = _template(tasker.insight.performance(1).model_dump(), "timed")["duration_seconds"]

    # nearest rank: p50 is the 10th of 20 sorted values, p95 the 19th; count, avg and max are exact
    assert d == {"count": 20, "avg": 10.5, "p50": _near(10.0), "p95": _near(19.0), "max": 20.0}


def test_single_sample_is_its_own_percentiles(tasker: Tasker, load: Load, key: str) -> None:
    ref = load("once", [step("a")])
    task_id = tasker.create_task(ref, {"key": key}).id
    tasker.work(until_idle=True)
    _set_durations(tasker, [task_id], [2.5])

    d = _template(tasker.insight.performance(1).model_dump(), "once")["duration_seconds"]

    assert d == {"count": 1, "avg": 2.5, "p50": 2.5, "p95": 2.5, "max": 2.5}


def test_period_counts_tasks_created_in_it(tasker: Tasker, load: Load, key: str) -> None:
    ref = load("windowed", [step("a")])
    old = tasker.create_task(ref, {"key": key, "n": "old"}).id
    tasker.create_task(ref, {"key": key, "n": "new"})
    tasker.work(until_idle=True)
    with tasker.db.write() as conn:
        conn.execute(
            update(tasks)
            .where(tasks.c.id == old)
            .values(created_at=datetime.now(UTC) - timedelta(hours=3))
        )

    assert _template(tasker.insight.performance(1).model_dump(), "windowed")["created"] == 1
    assert _template(tasker.insight.performance(4).model_dump(), "windowed")["created"] == 2
    assert tasker.insight.bottlenecks(1).model_dump()["scope"] == {"tasks": 1, "step_attempts": 1}
    assert tasker.insight.bottlenecks(4).model_dump()["scope"] == {"tasks": 2, "step_attempts": 2}


def test_filters_select_one_template(tasker: Tasker, load: Load, key: str) -> None:
    one = load("alpha", [step("a")])
    load("alpha", [step("a")], version="2.0.0")
    two = load("beta", [step("a")], namespace="other")
    tasker.create_task(one, {"key": key, "n": 1}, version="1.0.0")
    tasker.create_task(one, {"key": key, "n": 2}, version="2.0.0")
    tasker.create_task(two, {"key": key, "n": 3})
    tasker.work(until_idle=True)

    def names(**filters: Any) -> list[tuple[str, str, str]]:
        return [
            (t["namespace"], t["name"], t["version"])
            for t in tasker.insight.performance(24, **filters).model_dump()["templates"]
        ]

    assert names() == [
        ("itest", "alpha", "1.0.0"),
        ("itest", "alpha", "2.0.0"),
        ("other", "beta", "1.0.0"),
    ]
    assert names(namespace="other") == [("other", "beta", "1.0.0")]
    assert names(name="alpha", version="2.0.0") == [("itest", "alpha", "2.0.0")]
    assert names(namespace="", name="", version="") == names()  # empty means no filter
    assert names(namespace="nobody") == []
    report = tasker.insight.bottlenecks(24, namespace="other").model_dump()
    assert report["filters"] == {"namespace": "other", "name": None, "version": None}
    assert [(r["namespace"], r["step"]) for r in report["slowest_steps"]] == [("other", "a")]


def test_empty_store_reports_zeros_not_errors(tasker: Tasker) -> None:
    perf = tasker.insight.performance(24).model_dump()
    assert perf["templates"] == []
    assert (perf["totals"]["created"], perf["totals"]["completion_rate"]) == (0, None)
    b = tasker.insight.bottlenecks(24).model_dump()
    assert b["scope"] == {"tasks": 0, "step_attempts": 0}
    assert b["slowest_steps"] == b["recommendations"] == b["error_classes"] == []


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda t: t.insight.performance(0), "period_hours"),
        (lambda t: t.insight.performance(2161), "period_hours"),
        (lambda t: t.insight.performance(1.5), "period_hours"),
        (lambda t: t.insight.performance(True), "period_hours"),
        (lambda t: t.insight.performance(24, namespace="bad name"), "namespace"),
        (lambda t: t.insight.performance(24, name="x" * 129), "name"),
        (lambda t: t.insight.bottlenecks(24, version="1.x"), "version"),
        (lambda t: t.insight.bottlenecks(24, limit=0), "limit"),
        (lambda t: t.insight.status(window_hours=0), "window_hours"),
    ],
)
def test_bad_parameters_are_input_errors_naming_the_field(
    tasker: Tasker, call: Callable[[Tasker], Any], field: str
) -> None:
    with pytest.raises(TaskerInputError) as info:
        call(tasker)
    assert str(info.value).startswith(field)
    assert "\n" not in str(info.value)


def test_bottlenecks_find_slow_retried_and_failing_steps(
    tasker: Tasker, load: Load, key: str
) -> None:
    ref = load(
        "shop",
        [
            step("fast", dependent_system="sys_fast"),
            step(
                "flaky",
                dependent_system="sys_flaky",
                handler_config={"fail": ["retryable", "retryable"]},
                default_retry_limit=3,
            ),
            step(
                "doomed",
                dependent_system="sys_doomed",
                handler_config={"always_fail": "retryable"},
                default_retry_limit=2,
            ),
            step("bad", dependent_system="sys_bad", handler_config={"always_fail": "permanent"}),
        ],
    )
    for system in ("sys_fast", "sys_flaky", "sys_doomed", "sys_bad"):
        tasker.systems.configure(
            system, failure_threshold=1000
        )  # keep the circuits out of this test
    # and the outage hold: "doomed" fails its two attempts and stops, as if sys_doomed answered
    tasker.systems.configure("sys_doomed", max_outage_seconds=0.001)
    ids = [tasker.create_task(ref, {"key": key, "n": i}).id for i in range(5)]
    tasker.work(until_idle=True, concurrency=8)
    _set_step_durations(tasker, ids, "fast", [5000.0, 100.0, 400.0, 200.0, 300.0])

    report = tasker.insight.bottlenecks(24).model_dump()

    assert report["scope"] == {"tasks": 5, "step_attempts": 5 + 15 + 10 + 5}
    slowest = report["slowest_steps"][0]
    assert slowest["step"] == "fast"
    # p95 is the largest of 5 values, so exact; p50 comes from its histogram bucket
    assert slowest["duration_ms"] == {
        "count": 5,
        "avg": 1200.0,
        "p50": _near(300.0),
        "p95": 5000.0,
        "max": 5000.0,
    }
    assert slowest["share_of_template_time"] is not None and slowest["share_of_template_time"] > 0.5

    retried = [
        (r["step"], r["retries"], r["retries_per_step"]) for r in report["most_retried_steps"]
    ]
    assert retried == [("flaky", 10, 2.0), ("doomed", 5, 1.0)]

    rates = {r["step"]: r for r in report["step_error_rates"]}
    assert (rates["bad"]["failure_rate"], rates["bad"]["errors"], rates["bad"]["retries"]) == (
        1.0,
        5,
        0,
    )
    assert (rates["doomed"]["failure_rate"], rates["doomed"]["errors_after_retries"]) == (1.0, 5)
    assert (rates["flaky"]["failure_rate"], rates["flaky"]["completed"]) == (round(10 / 15, 4), 5)
    assert rates["fast"]["failure_rate"] == 0.0
    assert rates["bad"]["top_errors"] == [{"error_class": "PermanentError", "count": 5}]
    assert [r["step"] for r in report["step_error_rates"]][-1] == "fast"

    systems = {r["dependent_system"]: r for r in report["system_error_rates"]}
    assert (systems["sys_doomed"]["attempts"], systems["sys_doomed"]["failures"]) == (10, 10)
    assert systems["sys_flaky"]["failure_rate"] == round(10 / 15, 4)
    assert systems["sys_fast"]["failures"] == 0
    assert {s["circuit_state"] for s in systems.values()} == {"closed"}
    assert report["error_classes"] == [
        {"error_class": "RetryableError", "count": 20},
        {"error_class": "PermanentError", "count": 5},
    ]

    advice = {(a["kind"], a["subject"].rsplit(":", 1)[-1]): a for a in report["recommendations"]}
    assert advice[("retries_exhausted", "doomed")]["severity"] == "critical"
    assert "retry limit 2" in advice[("retries_exhausted", "doomed")]["message"]
    assert "permanent" in advice[("failing_step", "bad")]["message"]
    assert advice[("failing_step", "flaky")]["figures"]["failures"] == 10
    assert advice[("slow_step", "fast")]["figures"]["p95_ms"] == 5000.0
    assert ("failing_step", "fast") not in advice
    severities = [a["severity"] for a in report["recommendations"]]
    assert severities == sorted(severities, key=["critical", "warning", "info"].index)


def test_bottlenecks_limit_bounds_every_list(tasker: Tasker, load: Load, key: str) -> None:
    ref = load("wide", [step(f"s{i}", handler_config={"fail": ["retryable"]}) for i in range(4)])
    tasker.systems.configure("default", failure_threshold=1000)
    tasker.create_task(ref, {"key": key})
    tasker.work(until_idle=True)

    report = tasker.insight.bottlenecks(24, limit=2).model_dump()

    assert (
        len(report["slowest_steps"])
        == len(report["most_retried_steps"])
        == len(report["step_error_rates"])
        == 2
    )
    assert len(tasker.insight.bottlenecks(24).model_dump()["step_error_rates"]) == 4


def recommendations(
    steps: list[dict[str, Any]], systems: list[dict[str, Any]], classes: dict[str, int]
) -> list[dict[str, Any]]:
    """`insight.recommendations` on rows written as the API serves them, advice as it serves it."""
    advice = insight.recommendations(
        [StepBottleneck.model_validate(r) for r in steps],
        [SystemErrors.model_validate(r) for r in systems],
        classes,
    )
    return [a.model_dump() for a in advice]


def _figures(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "namespace": "ns",
        "name": "t",
        "version": "1.0.0",
        "step": "s",
        "dependent_system": "api",
        "steps": 10,
        "attempts": 10,
        "completed": 10,
        "retries": 0,
        "errors": 0,
        "errors_after_retries": 0,
        "retry_limit": 3,
        "failure_rate": 0.0,
        "retries_per_step": 0.0,
        "duration_ms": {"count": 10, "avg": 10.0, "p50": 10.0, "p95": 12.0, "max": 12.0},
        "share_of_template_time": 1.0,
        "top_errors": [],
    }
    row.update(overrides)
    return row


def test_recommendations_follow_the_figures() -> None:
    timeouts = _figures(
        step="slowpoke",
        attempts=10,
        retries=4,
        failure_rate=0.4,
        top_errors=[{"error_class": "StepTimeoutError", "count": 4}],
    )
    tail = _figures(
        step="tail",
        dependent_system="other",
        share_of_template_time=0.1,
        duration_ms={"count": 40, "avg": 50.0, "p50": 20.0, "p95": 200.0, "max": 900.0},
    )
    system = {
        "dependent_system": "api",
        "attempts": 20,
        "failures": 8,
        "retries": 8,
        "errors": 0,
        "failure_rate": 0.4,
        "circuit_state": "open",
        "top_errors": [],
    }

    advice = recommendations([timeouts, tail], [system], {"LeaseExpired": 3})

    kinds = {(a["kind"], a["subject"]) for a in advice}
    assert ("failing_step", "ns/t@1.0.0:slowpoke") in kinds
    assert "timeout" in next(a["message"] for a in advice if a["kind"] == "failing_step")
    assert ("long_tail", "ns/t@1.0.0:tail") in kinds
    assert ("unstable_system", "api") in kinds and ("lost_leases", "workers") in kinds
    assert (
        next(a for a in advice if a["kind"] == "unstable_system")["severity"] == "critical"
    )  # circuit open
    assert ("slow_step", "ns/t@1.0.0:tail") not in kinds  # 10% of the time is no bottleneck


def test_a_dominant_step_is_the_bottleneck() -> None:
    dominant = _figures(
        step="slow",
        share_of_template_time=0.8,
        duration_ms={"count": 10, "avg": 400.0, "p50": 380.0, "p95": 600.0, "max": 700.0},
    )
    advice = recommendations([dominant, _figures(step="quick", share_of_template_time=0.2)], [], {})
    assert [(a["kind"], a["subject"], a["figures"]["share_of_template_time"]) for a in advice] == [
        ("slow_step", "ns/t@1.0.0:slow", 0.8)
    ]


def test_healthy_figures_give_no_recommendations() -> None:
    even = [
        _figures(share_of_template_time=0.55),
        _figures(step="other", share_of_template_time=0.45),
    ]
    assert recommendations(even, [], {}) == []
    one_step = [_figures(share_of_template_time=1.0)]  # nothing to compare it with: no bottleneck
    assert recommendations(one_step, [], {}) == []


def test_small_samples_give_no_rate_advice() -> None:
    few = _figures(
        attempts=3,
        retries=3,
        failure_rate=1.0,
        steps=1,
        duration_ms={"count": 3, "avg": 1.0, "p50": 1.0, "p95": 1.0, "max": 1.0},
    )
    assert [a["kind"] for a in recommendations([few], [], {})] == []


# -- rollups: the hourly rows agree with the raw tables --------------------------------------------
def _raw_counts(tasker: Tasker, hours: int) -> tuple[Any, Any]:
    scope = analytics.Scope(datetime.now(UTC) - timedelta(hours=hours))
    with tasker.db.read() as conn:
        return analytics.task_outcomes(conn, scope), analytics.step_counts(conn, scope)


def _rolled_counts(tasker: Tasker, hours: int) -> tuple[Any, Any]:
    tasker.insight.bottlenecks(hours).model_dump()  # catches up
    scope = analytics.Scope(datetime.now(UTC) - timedelta(hours=hours))
    with tasker.db.read() as conn:
        return rollups.task_report(conn, scope)[0], rollups.step_report(conn, scope)[0]


def test_rollups_add_up_across_catch_ups_and_hours(tasker: Tasker, load: Load, key: str) -> None:
    ref = load("rolled", [step("a"), step("b", after="a", handler_config={"fail": ["retryable"]})])
    tasker.systems.configure("default", failure_threshold=1000)
    first = [tasker.create_task(ref, {"key": key, "n": i}).id for i in range(3)]
    tasker.work(until_idle=True)
    with tasker.db.write() as conn:  # spread them over whole and partial hours of the periods below
        for i, task_id in enumerate(first):
            conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id)
                .values(created_at=datetime.now(UTC) - timedelta(minutes=50 + 40 * i))
            )
    assert _rolled_counts(tasker, 3) == _raw_counts(tasker, 3)
    for i in range(2):  # more attempts of the same hours and steps: merged into the existing rows
        tasker.create_task(ref, {"key": key, "n": f"more {i}"})
    tasker.work(until_idle=True)

    for hours in (1, 2, 3, 24):
        assert _rolled_counts(tasker, hours) == _raw_counts(tasker, hours)
    assert _template(tasker.insight.performance(24).model_dump(), "rolled")["created"] == 5


def test_an_id_committed_late_is_rolled_up_when_it_appears(
    tasker: Tasker, load: Load, key: str
) -> None:
    if not tasker.db.is_postgres:
        pytest.skip("SQLite has one writer: ids become visible in order")
    ref = load("late", [step("a")])
    task_id = tasker.create_task(ref, {"key": key}).id
    tasker.work(until_idle=True)
    step_id = tasker.get_task(task_id).steps[0].id
    row = {
        "step_id": step_id,
        "task_id": task_id,
        "from_state": "in_progress",
        "to_state": "waiting_retry",
        "attempt": 9,
        "at": datetime.now(UTC),
        "error_class": "LateError",
        "duration_ms": 1.0,
    }
    with tasker.db.writer.connect() as slow:
        slow.execute(insert(step_transitions), row)  # takes an id, not committed yet
        tasker.create_task(ref, {"key": key, "n": 2})
        tasker.work(until_idle=True)  # commits larger ids
        before = tasker.insight.bottlenecks(24).model_dump()["error_classes"]
        slow.commit()
    after = tasker.insight.bottlenecks(24).model_dump()["error_classes"]

    assert before == []
    assert after == [{"error_class": "LateError", "count": 1}]


def _mixed_store(tasker: Tasker, load: Load, key: str) -> None:
    """Tasks in every kind of state: complete, error, cancelled, pending, with skipped work."""
    good = load("mixgood", [step("a"), step("b", after="a")])
    bad = load("mixbad", [step("a"), step("b", after="a", handler_config={"always_fail": "x"})])
    ids = [tasker.create_task(good, {"key": key, "n": i}).id for i in range(3)]
    tasker.cancel_task(ids[0])
    for i in range(2):
        tasker.create_task(bad, {"key": key, "n": i})
    tasker.work(until_idle=True)


def test_task_rollups_count_steps_by_state_as_the_raw_tables(
    tasker: Tasker, load: Load, key: str
) -> None:
    _mixed_store(tasker, load, key)
    scope = analytics.Scope(datetime.now(UTC) - timedelta(hours=2))

    def both() -> tuple[Any, Any]:
        with tasker.db.read() as conn:
            return rollups.task_report(conn, scope)[0], analytics.task_outcomes(conn, scope)

    rolled, raw = both()  # nothing rolled up yet: all of it is read as the tail
    assert rolled == raw
    assert raw[("itest", "mixgood", "1.0.0")].steps == {"complete": 4, "cancelled": 2}
    assert raw[("itest", "mixbad", "1.0.0")].steps == {"complete": 2, "error": 2}
    rollups.catch_up(tasker.db.write)
    tasker.create_task("itest/mixgood", {"key": key, "n": "open"})  # pending: the live part
    rolled, raw = both()
    assert rolled == raw
    assert raw[("itest", "mixgood", "1.0.0")].steps == {
        "complete": 4,
        "cancelled": 2,
        "ready": 1,
        "pending": 1,
    }


def test_status_counts_what_the_raw_tables_hold_from_its_window(
    tasker: Tasker, load: Load, key: str
) -> None:
    _mixed_store(tasker, load, key)
    tasker.create_task("itest/mixgood", {"key": key, "n": "open"})
    for round_ in range(2):  # the second call finds nothing new to roll up: the same answer
        report = tasker.insight.status().model_dump()
        assert report["since"] <= datetime.now(UTC) - timedelta(hours=24)
        with tasker.db.read() as conn:
            raw = analytics.task_outcomes(conn, analytics.Scope(report["since"]))
        tasks_by, steps_by = analytics.TaskOutcomes(), analytics.TaskOutcomes()
        for o in raw.values():
            rollups.add_counts(tasks_by.by_status, o.by_status)
            rollups.add_counts(steps_by.steps, o.steps)
        assert {k: v for k, v in report["tasks"].items() if v and k != "total"} == (
            tasks_by.by_status
        ), round_
        assert {k: v for k, v in report["steps"].items() if v and k != "total"} == steps_by.steps
        assert report["steps"]["total"] == 12
        assert report["last_hour"]["finished_tasks"] == 5  # complete, in error and cancelled
