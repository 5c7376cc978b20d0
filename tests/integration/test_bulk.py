"""Bulk retry, cancel and purge by filter on both stores (`engine.bulk`, `tasker tasks retry|cancel|
purge` with filter options): each filter field picks what it says, a dry run counts and changes
nothing, a second run changes nothing, chunks and `limit`/`after` cover every task exactly once,
tasks that stop matching mid-run are skipped, a refused task is rolled back alone, and the SQL of
a filter agrees with `TaskFilter.matches` on random filters."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasker import Tasker
from tasker.cli.main import cli
from tasker.domain.bulk import BulkAction, FilterError, TaskFilter
from tasker.domain.errors import OperationError, TaskerInputError
from tasker.domain.states import StepState, TaskState
from tasker.engine import clock
from tasker.store import archive as archive_store
from tasker.store import bulk as bulk_store
from tasker.store import operations
from tests.fixture_types import LoadTemplate
from tests.integration import handlers as h
from tests.integration.support import step
from tests.integration.support import step_history as step_rows

PERMANENT = {"always_fail": "permanent"}
RETRYABLE = {"always_fail": "value"}


@dataclass
class Fleet:
    """Tasks of two templates in known states: `failed` (a `charge` step in error, PermanentError),
    `flaky` (`pack` in error after its retries, ValueError), `done` (complete), `pending` (not run)
    and `other` (another template, failed)."""

    ref: str
    other_ref: str
    failed: list[int]
    flaky: list[int]
    done: list[int]
    pending: list[int]
    other: list[int]


@pytest.fixture
def fleet(tasker: Tasker, load: LoadTemplate, key: str) -> Fleet:
    ref = load(
        "shop",
        [
            step("charge", "Toggle"),
            step("pack", after="charge"),
        ],
    )
    other_ref = load("other", [step("only", handler_config=PERMANENT)], namespace="elsewhere")
    h.set_fault(key, "charge")
    failed = tasker.create_tasks(ref, [{"key": key} for _ in range(5)])
    tasker.work()
    h.set_fault(key, "charge", on=False)
    flaky_key = f"{key}-flaky"
    flaky_ref = load(
        "shop",
        [step("charge", "Toggle"), step("pack", after="charge", handler_config=RETRYABLE)],
        version="1.1.0",
    )
    flaky = tasker.create_tasks(flaky_ref, [{"key": flaky_key} for _ in range(3)])
    tasker.work()
    done = [tasker.run(tasker.create_task(ref, {"key": key}, version="1.0.0").id).id]
    pending = tasker.create_tasks(ref, [{"key": key} for _ in range(2)], version="1.0.0")
    other = tasker.create_tasks(other_ref, [{"key": key} for _ in range(2)])
    tasker.work(namespaces=["elsewhere"])
    fleet = Fleet(ref, other_ref, failed, flaky, done, pending, other)
    statuses = {i: tasker.get_task(i).status for i in failed + flaky + done + pending + other}
    assert {statuses[i] for i in failed + flaky + other} == {TaskState.ERROR}
    assert statuses[done[0]] == TaskState.COMPLETE
    assert {statuses[i] for i in pending} == {TaskState.PENDING}
    return fleet


def _statuses(tasker: Tasker, ids: list[int]) -> list[str]:
    return [str(tasker.get_task(i).status) for i in ids]


def test_bulk_retry_picks_by_template_error_class_and_step(tasker: Tasker, fleet: Fleet) -> None:
    f = tasker.bulk.filter(template=f"{fleet.ref}@1.0.0", error_class="PermanentError")
    assert tasker.bulk.count("retry", f) == 5
    assert tasker.bulk.filter(template=fleet.ref, error_class="ValueError").describe() == (
        f"template {fleet.ref}, a step in error or waiting_retry with error class ValueError"
    )
    by_step = tasker.bulk.filter(template=fleet.ref, step="pack")
    assert tasker.bulk.count("retry", by_step) == 3  # the flaky ones failed on `pack`
    none = tasker.bulk.filter(template=fleet.ref, step="pack", error_class="PermanentError")
    assert tasker.bulk.count("retry", none) == 0  # both on the same step

    events: list[str] = []
    tasker.bus.subscribe(lambda e: events.append(e.name), "task.retried")
    report = tasker.bulk.retry(f, reason="gateway fixed", chunk=2)
    assert (report.matched, report.changed, report.skipped) == (5, 5, 0)
    assert report.last_id == max(fleet.failed) and not report.more
    assert events.count("task.retried") == 5
    assert set(_statuses(tasker, fleet.failed)) == {"pending"}
    assert set(_statuses(tasker, fleet.flaky + fleet.other)) == {"error"}
    rows = step_rows(tasker, fleet.failed[0], "charge")
    assert rows[-1]["to_state"] == "ready" and rows[-1]["reason"] == "bulk retry: gateway fixed"
    reasons = [t["reason"] for t in tasker.history.task_transitions(fleet.failed[0])]
    assert reasons[-1] == "bulk retry: gateway fixed"
    tasker.work()
    assert set(_statuses(tasker, fleet.failed)) == {"complete"}


def test_a_dry_run_counts_and_changes_nothing_and_a_second_run_changes_nothing(
    tasker: Tasker, fleet: Fleet
) -> None:
    f = TaskFilter(statuses=(TaskState.ERROR,))
    dry = tasker.bulk.retry(f, dry_run=True)
    assert (dry.matched, dry.changed, dry.dry_run) == (10, 0, True)
    assert "10 tasks would be retried" in dry.summary()
    assert set(_statuses(tasker, fleet.failed + fleet.flaky + fleet.other)) == {"error"}
    first = tasker.bulk.retry(f, chunk=3)
    assert (first.matched, first.changed) == (10, 10)
    again = tasker.bulk.retry(f, chunk=3)
    assert (again.matched, again.changed, again.skipped, again.last_id) == (0, 0, 0, None)


def test_chunks_limit_and_after_cover_every_task_once(tasker: Tasker, fleet: Fleet) -> None:
    f = tasker.bulk.filter(status="error")
    ordered = sorted(fleet.failed + fleet.flaky + fleet.other)
    seen: list[list[int]] = []
    real = bulk_store.next_chunk

    def spy(*args: Any) -> list[int]:
        ids = real(*args)
        seen.append(ids)
        return ids

    part = pytest.MonkeyPatch()
    part.setattr(bulk_store, "next_chunk", spy)
    try:
        first = tasker.bulk.retry(f, chunk=3, limit=7)
    finally:
        part.undo()
    assert [len(c) for c in seen[:3]] == [3, 3, 1]  # then one probe: is there more?
    assert [i for c in seen[:3] for i in c] == ordered[:7]
    assert (first.matched, first.changed, first.more, first.last_id) == (7, 7, True, ordered[6])
    assert "go on with after=" in first.summary()
    rest = tasker.bulk.retry(f, chunk=3, after=first.last_id or 0)
    assert (rest.matched, rest.changed, rest.more) == (3, 3, False)
    assert set(_statuses(tasker, ordered)) == {"pending"}


def test_tasks_that_stop_matching_mid_run_are_skipped(tasker: Tasker, fleet: Fleet) -> None:
    """Between the read that found a chunk and its transaction, someone retries one task by hand
    and cancels another: the run skips both and counts them."""
    f = tasker.bulk.filter(template=fleet.ref, status="error")
    real = bulk_store.next_chunk
    meddled: list[int] = []

    def racing(*args: Any) -> list[int]:
        ids = real(*args)
        if ids and not meddled:
            tasker.retry_task(ids[0])
            tasker.cancel_task(ids[1], reason="by hand")
            meddled.extend(ids[:2])
        return ids

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bulk_store, "next_chunk", racing)
        report = tasker.bulk.retry(f, chunk=4)
    assert (report.matched, report.changed, report.skipped) == (8, 6, 2)
    assert report.refusals == ()  # they no longer matched: skipped, not refused
    assert _statuses(tasker, meddled) == ["pending", "cancelled"]


def test_a_refused_task_is_rolled_back_alone(
    tasker: Tasker, fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operation that wrote and then refused: its writes and journal are undone (savepoint),
    the rest of the chunk goes on, and the refusal is reported."""
    real = operations.retry_task
    victim = fleet.failed[2]

    def half(conn: Any, journal: Any, task_id: int, *, lock: bool) -> int:
        n = real(conn, journal, task_id, lock=lock)
        if task_id == victim:
            raise OperationError(f"task {task_id} refused for the test")
        return n

    monkeypatch.setattr(operations, "retry_task", half)
    events: list[dict[str, Any]] = []
    tasker.bus.subscribe(lambda e: events.append(dict(e.payload)), "task.retried")
    report = tasker.bulk.retry(tasker.bulk.filter(template=fleet.ref, status="error"))
    assert (report.changed, report.skipped) == (7, 1)
    assert report.refusals == (f"task {victim}: task {victim} refused for the test",)
    assert tasker.get_task(victim).status == "error"
    assert step_rows(tasker, victim, "charge")[-1]["to_state"] == "error"  # no row written
    assert victim not in {e["task_id"] for e in events}


def test_bulk_cancel_with_and_without_compensation(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    undo = {"handler_class": "tests.integration.handlers:Undo"}
    ref = load(
        "stopper",
        [
            step("charge", compensation=undo),
            step("ship", after="charge", handler_config=PERMANENT),
        ],
        on_failure="stop",
    )
    ids = tasker.create_tasks(ref, [{"key": key} for _ in range(4)])
    tasker.work()
    assert set(_statuses(tasker, ids)) == {"error"}
    undone = tasker.bulk.cancel(TaskFilter(ids=tuple(ids[:2])), compensate=True, reason="recall")
    assert (undone.matched, undone.changed) == (2, 2)
    assert set(_statuses(tasker, ids[:2])) == {"compensating"}
    tasker.work()
    assert set(_statuses(tasker, ids[:2])) == {"compensated"}
    assert sorted(c["forward"] for c in h.calls(key, kind="undo")) == ["charge", "charge"]
    queued = tasker.create_task(ref, {"key": key}).id  # pending: cancelled too
    plain = tasker.bulk.cancel(tasker.bulk.filter(template=ref), reason="recall")
    assert (plain.matched, plain.changed) == (3, 3)  # compensated ones are finished
    assert _statuses(tasker, [*ids[2:], queued]) == ["cancelled"] * 3
    assert len(h.calls(key, kind="undo")) == 2  # a plain cancel undoes nothing
    reasons = [t["reason"] for t in tasker.history.task_transitions(ids[3])]
    assert reasons[-1] == "bulk cancel: recall"
    again = tasker.bulk.cancel(tasker.bulk.filter(template=ref))
    assert again.matched == 0  # idempotent


def test_bulk_purge_deletes_finished_tasks_only(tasker: Tasker, fleet: Fleet) -> None:
    f = tasker.bulk.filter(template=fleet.ref)
    assert tasker.bulk.purge(f, dry_run=True).matched == 9  # 8 failed + 1 complete
    heard: list[dict[str, Any]] = []
    tasker.bus.subscribe(lambda e: heard.append(dict(e.payload)), "tasks.purged")
    report = tasker.bulk.purge(f, chunk=4, archive="table")
    assert (report.matched, report.changed, report.archived) == (9, 9, 9)
    # One `tasks.purged` per committed chunk, together the whole purge.
    assert [h["total"] for h in heard] == [4, 4, 1]
    assert {(h["trigger"], h["archive"], h["worker"]) for h in heard} == {
        ("bulk purge", "table", None)
    }
    assert sum(h["deleted"].get("error", 0) for h in heard) == 8
    assert sum(h["archived"] for h in heard) == 9
    assert "9 archived first" in report.summary()
    gone = fleet.failed + fleet.flaky + fleet.done
    assert tasker.get_tasks(gone) == []
    with tasker.db.read() as conn:
        archived = archive_store.read_table(conn, gone)
    assert sorted(a.id for a in archived) == sorted(gone)
    assert all(tasker.history.task_transitions(i) == [] for i in gone)
    assert set(_statuses(tasker, fleet.pending + fleet.other)) == {"pending", "error"}
    assert tasker.bulk.purge(f).matched == 0
    with pytest.raises(FilterError, match="never applies to tasks that are pending"):
        tasker.bulk.purge(tasker.bulk.filter(status="pending"))


def test_time_windows_key_and_ids(tasker: Tasker, fleet: Fleet) -> None:
    assert tasker.bulk.count("retry", tasker.bulk.filter(since="1h")) == 10
    assert tasker.bulk.count("retry", tasker.bulk.filter(until="1h")) == 0
    now = clock.now()
    window = tasker.bulk.filter(since=now - timedelta(hours=1), until=now + timedelta(seconds=5))
    assert tasker.bulk.count("cancel", window) == 12  # error and pending
    key = tasker.get_task(fleet.other[0]).idempotency_key
    assert tasker.bulk.count("retry", tasker.bulk.filter(key=key)) == 1
    picked = tasker.bulk.filter(ids=[*fleet.done, *fleet.other])
    assert tasker.bulk.count("retry", picked) == 2  # the complete one is not retried
    assert tasker.bulk.count("purge", picked) == 3


def test_the_engine_refuses_unusable_filters_with_the_field(tasker: Tasker, fleet: Fleet) -> None:
    with pytest.raises(FilterError, match="needs at least one of") as empty:
        tasker.bulk.retry(TaskFilter())
    assert empty.value.field == "filter"
    with pytest.raises(FilterError, match="never applies to tasks that are complete"):
        tasker.bulk.retry(tasker.bulk.filter(status=["error", "complete"]))
    with pytest.raises(FilterError) as chunk:
        tasker.bulk.cancel(tasker.bulk.filter(status="error"), chunk=0)
    assert chunk.value.field == "chunk"
    with pytest.raises(TaskerInputError, match="takes a TaskFilter"):
        tasker.bulk.purge({"status": "error"})  # type: ignore[arg-type]
    with pytest.raises(TaskerInputError, match="unknown bulk action"):
        tasker.bulk.run("delete", tasker.bulk.filter(status="error"))


def test_the_cli_retries_cancels_and_purges_by_filter(store_url: str, fleet: Fleet) -> None:
    runner = CliRunner()

    def run(*argv: str) -> Any:
        return runner.invoke(cli, ["--database-url", store_url, "tasks", *argv])

    out = run("retry", "--template", fleet.ref, "--error-class", "PermanentError", "--dry-run")
    assert out.exit_code == 0, out.output
    assert "5 tasks would be retried (dry run: nothing changed)" in out.output
    out = run("retry", "--template", fleet.ref, "--since", "1h", "--reason", "fix", "--json")
    assert out.exit_code == 0, out.output
    body = json.loads(out.output)
    assert (body["matched"], body["changed"], body["dry_run"]) == (8, 8, False)
    out = run("retry", "--status", "error", "--template", fleet.ref)
    assert out.exit_code == 0 and "0 of 0 matching tasks retried" in out.output
    out = run("cancel", "--namespace", "elsewhere", "--step", "only", "--step-state", "error")
    assert out.exit_code == 0 and "2 of 2 matching tasks cancelled" in out.output
    out = run("purge", "--namespace", "elsewhere", "--status", "cancelled", "--json")
    assert json.loads(out.output)["changed"] == 2
    # One task by id still works; both forms at once, or neither, are refused in one line.
    assert run("retry", str(fleet.flaky[0])).exit_code == 2  # pending after the bulk retry
    for argv, message in (
        (("retry",), "nothing to retry; fix: give a TASK_ID, or filter options"),
        (("retry", "1", "--status", "error"), "give a TASK_ID or filter options, not both"),
        (("cancel", "1", "--dry-run"), "--dry-run goes with filter options"),
        (("retry", "--since", "lately"), "--since: 'lately' is neither a duration nor a time"),
        (("retry", "--template", "a/b/c"), "--template: 'a/b/c' is not a template"),
        (("purge",), "nothing to purge; fix: give --older-than DURATION, or filter options"),
        (("purge", "--older-than", "1d", "--since", "2h"), "--older-than goes with --status"),
    ):
        bad = run(*argv)
        assert bad.exit_code == 2, (argv, bad.output)
        assert message in " ".join(bad.output.split()) and "Traceback" not in bad.output, argv


# -- the SQL of a filter and TaskFilter.matches agree ----------------------------------------------
_STEP_STATES = st.lists(st.sampled_from(list(StepState)), max_size=2, unique=True)
_FILTERS = st.builds(
    TaskFilter,
    namespace=st.sampled_from([None, "itest", "elsewhere"]),
    name=st.sampled_from([None, "shop", "other"]),
    version=st.sampled_from([None, "1.0.0", "1.1.0"]),
    statuses=st.lists(st.sampled_from(list(TaskState)), max_size=3, unique=True).map(tuple),
    error_class=st.sampled_from([None, "PermanentError", "ValueError", "Nope"]),
    step=st.sampled_from([None, "charge", "pack", "only"]),
    step_states=_STEP_STATES.map(tuple),
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(f=_FILTERS, action=st.sampled_from(list(BulkAction)))
def test_the_store_picks_what_matches_says(
    tasker: Tasker, fleet: Fleet, f: TaskFilter, action: BulkAction
) -> None:
    everyone = tasker.get_tasks(
        fleet.failed + fleet.flaky + fleet.done + fleet.pending + fleet.other
    )
    try:
        statuses = f.statuses_for(action)
    except FilterError:
        with pytest.raises(FilterError):
            tasker.bulk.count(action, f)
        return
    expected = {t.id for t in everyone if f.matches(t, statuses)}
    with tasker.db.read() as conn:
        found = set(bulk_store.next_chunk(conn, f, action, 0, 1000))
    assert found == expected, f.describe()
