"""The overview on both stores: counts by status, retries waiting, recent outcomes, the chart per
minute and the latest failures, from real runs, timestamps moved by SQL to test windows exactly."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, event, select, update

from tasker import Tasker
from tasker.domain.states import TaskState
from tasker.store.overview import (
    CHART_MINUTES,
    MESSAGE_CHARS,
    SETTLED_MARGIN,
    SETTLED_RECOUNT,
    SETTLED_REFRESH,
    FinalCounts,
)
from tasker.store.schema import step_transitions, steps, tasks
from tests.integration.support import step

Load = Callable[..., str]


def test_an_empty_store_has_zeros_and_sixty_minutes_ending_now(tasker: Tasker) -> None:
    before = datetime.now(UTC).replace(second=0, microsecond=0)
    view = tasker.insight.overview()
    assert view.tasks_by_status == {s.value: 0 for s in TaskState}
    assert (
        view.steps_waiting_retry,
        view.completed_last_hour,
        view.completed_last_day,
        view.failed_last_hour,
        view.failed_last_day,
    ) == (0, 0, 0, 0, 0)
    assert view.latest_failures == []
    minutes = [m.minute for m in view.per_minute]
    assert len(minutes) == CHART_MINUTES
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(minutes))
    assert minutes[-1] >= before and minutes[-1] <= view.generated_at
    assert minutes[-1] == view.generated_at.replace(second=0, microsecond=0)
    assert all(m.tzinfo is not None and m.second == 0 for m in minutes)


def test_counts_outcomes_chart_and_failures_from_real_runs(
    tasker: Tasker, load: Load, key: str
) -> None:
    good = load("good", [step("a"), step("b", after="a")])
    bad = load("bad", [step("charge", handler_config={"always_fail": "permanent"})])
    flaky = load("flaky", [step("call", handler_config={"fail": ["retryable"]})])
    ok = [tasker.create_task(good, {"key": key, "n": i}).id for i in range(3)]
    failed = [tasker.create_task(bad, {"key": key, "n": i}).id for i in range(2)]
    retried = tasker.create_task(flaky, {"key": key}).id
    waiting = tasker.create_task(good, {"key": key, "n": 99}).id  # left pending, never run
    for task_id in [*ok, *failed, retried]:
        tasker.run(task_id)

    view = tasker.insight.overview()
    assert view.tasks_by_status["complete"] == 4 and view.tasks_by_status["error"] == 2
    assert view.tasks_by_status["pending"] == 1 and sum(view.tasks_by_status.values()) == 7
    assert (view.completed_last_hour, view.completed_last_day) == (4, 4)
    assert (view.failed_last_hour, view.failed_last_day) == (2, 2)
    # 3 tasks x 2 steps + the flaky one's success = 7 completed attempts; 2 errors + 1 retry failed.
    assert sum(m.completed for m in view.per_minute) == 7
    assert sum(m.failed for m in view.per_minute) == 3
    assert [f.task_id for f in view.latest_failures] == [retried, failed[1], failed[0]]
    charge = next(f for f in view.latest_failures if f.task_id == failed[0])
    assert charge.template == "itest/bad@1.0.0" and charge.step == "charge"
    assert charge.error_class == "PermanentError" and "charge failed on attempt 1" in charge.message
    call = next(f for f in view.latest_failures if f.task_id == retried)
    assert call.step == "call" and call.error_class == "RetryableError"
    assert all(a.at >= b.at for a, b in zip(view.latest_failures, view.latest_failures[1:]))

    # A step waiting for its retry.
    with tasker.db.write() as conn:
        conn.execute(
            update(steps)
            .where(steps.c.task_id == waiting, steps.c.name == "a")
            .values(state="waiting_retry")
        )
    assert tasker.insight.overview().steps_waiting_retry == 1


def test_windows_buckets_and_the_latest_ten(tasker: Tasker, load: Load, key: str) -> None:
    good = load("good", [step("a")])
    bad = load("bad", [step("a", handler_config={"always_fail": "permanent"})])
    done = [tasker.create_task(good, {"key": key, "n": i}).id for i in range(3)]
    lost = [tasker.create_task(bad, {"key": key, "n": i}).id for i in range(12)]
    tasker.work(until_idle=True)
    now = datetime.now(UTC)
    with tasker.db.write() as conn:
        # Finished 2 hours ago (day, not hour) and 2 days ago (neither).
        conn.execute(
            update(tasks).where(tasks.c.id == done[0]).values(finished_at=now - timedelta(hours=2))
        )
        conn.execute(
            update(tasks).where(tasks.c.id == done[1]).values(finished_at=now - timedelta(days=2))
        )
        conn.execute(
            update(tasks).where(tasks.c.id == lost[0]).values(finished_at=now - timedelta(hours=3))
        )
        # done[0]'s completed attempt five minutes ago, done[1]'s two hours ago (off the chart).
        for task_id, at in (
            (done[0], now - timedelta(minutes=5)),
            (done[1], now - timedelta(hours=2)),
        ):
            conn.execute(
                update(step_transitions)
                .where(
                    step_transitions.c.task_id == task_id, step_transitions.c.to_state == "complete"
                )
                .values(at=at)
            )
        # A long message, and the oldest failure made the newest.
        conn.execute(
            update(step_transitions)
            .where(step_transitions.c.task_id == lost[0], step_transitions.c.to_state == "error")
            .values(error_message="x" * 1000, at=now + timedelta(seconds=1))
        )
        total_failed = conn.execute(
            select(step_transitions.c.id).where(step_transitions.c.to_state == "error")
        ).all()
    view = tasker.insight.overview()
    assert (view.completed_last_hour, view.completed_last_day) == (1, 2)
    assert (view.failed_last_hour, view.failed_last_day) == (11, 12)
    assert len(total_failed) == 12
    assert sum(m.completed for m in view.per_minute) == 2  # done[2] now, done[0] five minutes ago
    five_ago = (now - timedelta(minutes=5)).replace(second=0, microsecond=0)
    bucket = next(m for m in view.per_minute if m.minute == five_ago)
    assert bucket.completed == 1
    assert len(view.latest_failures) == 10
    assert view.latest_failures[0].task_id == lost[0]
    assert view.latest_failures[0].message == "x" * MESSAGE_CHARS
    assert {f.task_id for f in view.latest_failures[1:]} <= set(lost[1:])


def test_final_counts_reuse_the_settled_part_and_stay_exact(
    tasker: Tasker, load: Load, key: str
) -> None:
    """Tasks finished long ago are counted once; later views add the recent ones and stay exact."""
    good = load("good", [step("a")])
    old = [tasker.create_task(good, {"key": key, "n": i}).id for i in range(3)]
    tasker.work(until_idle=True)
    now = datetime.now(UTC)
    with tasker.db.write() as conn:
        conn.execute(
            update(tasks).where(tasks.c.id.in_(old)).values(finished_at=now - timedelta(days=3))
        )
    final = FinalCounts()
    with tasker.db.read() as conn:
        assert final.counts(conn, now)["complete"] == 3
        cutoff = final.cutoff
    new = tasker.create_task(good, {"key": key, "n": 9}).id
    tasker.run(new)
    cancelled = tasker.cancel_task(tasker.create_task(good, {"key": key, "n": 10}).id).id
    with tasker.db.read() as conn:
        later = final.counts(conn, datetime.now(UTC))
        assert final.cutoff == cutoff  # the settled part was reused
        assert later["complete"] == 4 and later["cancelled"] == 1 and "pending" not in later
        # Past the refresh the cutoff moves on; the figures do not change.
        moved = final.counts(conn, datetime.now(UTC) + SETTLED_REFRESH + SETTLED_MARGIN)
        assert final.cutoff is not None and cutoff is not None and final.cutoff > cutoff
        assert moved == later
    assert tasker.insight.overview().tasks_by_status == {
        **{s.value: 0 for s in TaskState},
        "complete": 4,
        "cancelled": 1,
    }
    assert cancelled
    with tasker.db.write() as conn:  # deleted by hand: seen at the next whole recount
        conn.execute(delete(steps).where(steps.c.task_id == old[0]))
        conn.execute(delete(tasks).where(tasks.c.id == old[0]))
    with tasker.db.read() as conn:
        moved_on = datetime.now(UTC) + SETTLED_REFRESH + SETTLED_MARGIN
        assert final.counts(conn, moved_on)["complete"] == 4  # the settled part, moved forward
        recounted = final.counts(conn, moved_on + SETTLED_RECOUNT)
        assert recounted["complete"] == 3 and recounted["cancelled"] == 1


def test_the_overview_reads_transitions_through_the_outcome_index(tasker: Tasker) -> None:
    """SQLite uses a partial index only when the query repeats its predicate; PostgreSQL may prefer
    a scan on a table this small, so the plan is checked on SQLite (PostgreSQL's is in
    docs/plans.md, from benchmarks/explain_hot.py)."""
    if tasker.db.is_postgres:
        return
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "tasker_step_transitions" in statement:
            seen.append((statement, params))

    event.listen(tasker.db.reader, "before_cursor_execute", capture)
    try:
        tasker.insight.overview()
    finally:
        event.remove(tasker.db.reader, "before_cursor_execute", capture)
    assert len(seen) == 2  # attempts per minute, latest failures
    with tasker.db.reader.connect() as conn:
        for statement, params in seen:
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params).all()
            assert any("ix_tasker_step_transitions_outcomes" in str(row) for row in plan), plan
