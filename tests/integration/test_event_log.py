"""The durable event log: lifecycle and custom events read back from the database, with resumable
cursors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from tasker import Tasker, TaskerInputError
from tasker.store.event_log import Cursor, _Pending, _until_hole
from tests.fixture_types import LoadTemplate
from tests.integration.support import step


def _run_publishing_task(tasker: Tasker, load: LoadTemplate, key: str) -> int:
    ref = load(
        "logged",
        [
            step(
                "charge",
                "Publisher",
                handler_config={"events": ["payment.charged"]},
                custom_events=["payment.charged"],
            ),
            step(
                "ship",
                "Scripted",
                after="charge",
                handler_config={"fail": ["retryable"]},
                default_retry_limit=3,
            ),
        ],
    )
    task_id = tasker.create_task(ref, {"key": key}).id
    assert tasker.run(task_id).status == "complete"
    return task_id


def test_the_log_holds_a_tasks_lifecycle_and_custom_events_in_order(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    task_id = _run_publishing_task(tasker, load, key)
    page = tasker.history.read_events(task_id=task_id)
    names = [(e["event"], e["step"]) for e in page.events]
    assert names[0] == ("task.created", None)
    assert ("payment.charged", "charge") in names
    assert names.index(("step.completed", "charge")) < names.index(("step.started", "ship"))
    ship = [n for n, s in names if s == "ship"]
    assert ship == [
        "step.ready",
        "step.started",
        "step.retry_scheduled",
        "step.started",
        "step.completed",
    ]
    assert names[-1] == ("task.completed", None)
    custom = next(e for e in page.events if e["event"] == "payment.charged")
    assert custom["data"]["amount"] == 42 and custom["data"]["key"] == key
    assert custom["template"] == "itest/logged@1.0.0" and custom["namespace"] == "itest"
    retry = next(e for e in page.events if e["event"] == "step.retry_scheduled")
    assert retry["attempt"] == 1 and retry["data"]["error"]["class"]
    assert all(e["at"].tzinfo is not None for e in page.events)
    assert [e["at"] for e in page.events] == sorted(e["at"] for e in page.events)


def test_small_pages_resume_from_their_cursor_without_loss_or_repeat(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    task_id = _run_publishing_task(tasker, load, key)
    whole = [e["id"] for e in tasker.history.read_events(task_id=task_id).events]
    pieces: list[str] = []
    cursor = None
    for _ in range(100):
        page = tasker.history.read_events(cursor, task_id=task_id, limit=3)
        pieces += [e["id"] for e in page.events]
        if not page.events and not page.more:
            break
        # every event's own cursor resumes right after it
        if page.events:
            assert page.events[-1]["cursor"] == page.cursor or page.more
        cursor = page.cursor
    assert pieces == whole


def test_filters_by_name_pattern_task_and_namespace(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    task_id = _run_publishing_task(tasker, load, key)
    steps_only = tasker.history.read_events(task_id=task_id, names=["step.*"]).events
    assert steps_only and all(e["event"].startswith("step.") for e in steps_only)
    completed = tasker.history.read_events(names=["*.completed"]).events
    assert {e["event"] for e in completed} == {"step.completed", "task.completed"}
    custom = tasker.history.read_events(names=["payment.*"]).events
    assert [e["event"] for e in custom] == ["payment.charged"]
    assert tasker.history.read_events(namespace="nowhere").events == []
    assert tasker.history.read_events(task_id=task_id + 1000).events == []


def test_tail_starts_after_everything_so_far(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    first = _run_publishing_task(tasker, load, key)
    tail = tasker.history.events_tail()
    assert tasker.history.read_events(tail).events == []
    second = tasker.create_task("itest/logged", {"key": key + "-2"}).id
    seen = tasker.history.read_events(tail).events
    assert {e["task_id"] for e in seen} == {second} and first != second


@pytest.mark.parametrize(
    "bad", ["x", "1-2-3", "1-2-3-a", "-1-2-3-4", "1-2-3-4-5", "9" * 30 + "-0-0-0"]
)
def test_a_malformed_cursor_is_refused_with_a_fix(tasker: Tasker, bad: str) -> None:
    with pytest.raises(TaskerInputError, match="invalid event cursor"):
        tasker.history.read_events(bad)


def test_a_fresh_hole_stops_the_page_and_an_old_one_is_skipped() -> None:
    now = datetime.now(UTC)
    old, fresh = now - timedelta(seconds=10), now

    def rows(*spec: tuple[int, datetime]) -> list[_Pending]:
        return [cast(_Pending, {"_id": i, "at": at}) for i, at in spec]

    settled = now - timedelta(seconds=2)
    # 3 is missing and 4 was written just now: 3 may still be committing, so stop before 4
    assert [r["_id"] for r in _until_hole(rows((1, old), (2, old), (4, fresh)), 0, settled)] == [
        1,
        2,
    ]
    # the rows after the hole are old: the hole was a rolled-back insert
    assert [r["_id"] for r in _until_hole(rows((1, old), (4, old), (5, fresh)), 0, settled)] == [
        1,
        4,
        5,
    ]
    assert str(Cursor.parse("1-2-3-4")) == "1-2-3-4" and str(Cursor.parse(None)) == "0-0-0-0"
