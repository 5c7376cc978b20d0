"""Bulk actions on the tasks list and the re-run button of the task page, in a real browser, on
SQLite and PostgreSQL.

The tasks list: selected rows are retried after a confirmation that carries the dry run's count
(the selected task that cannot be retried is counted out), then "all N matching this filter" is
cancelled and purged the same way, and the result is the flash message after each. Saying no
changes nothing. The task page: a task in error offers "re-run from a step", preselects the step
that failed, shows the refusal of a step whose parents did not complete, and re-runs from the
failed step once the bug is fixed, with the reason recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.web.conftest import Dashboard
from tests.web.helpers import Confirmations, create_via_api, row_ids, wait_for_status


def _failed_orders(dashboard: Dashboard, n: int) -> list[int]:
    engine = dashboard.engine
    ids = engine.create_tasks(
        "webtest/order", [{"email": f"o{i}@example.com", "fail": "charge"} for i in range(n)]
    )
    for task_id in ids:
        engine.run(task_id)
    assert {engine.get_task(i).status for i in ids} == {"error"}
    return ids


def test_bulk_retry_cancel_and_purge_with_dry_run_counts(dashboard: Dashboard, page: Page) -> None:
    engine = dashboard.engine
    failed = _failed_orders(dashboard, 3)
    complete = engine.run(engine.create_task("webtest/order", {"email": "ok@example.com"}).id).id
    pings = engine.create_tasks("other/ping", [{} for _ in range(3)])

    # Selected rows: two failed orders and the complete one. The dry run counts two.
    page.goto(dashboard.at("/tasks?namespace=webtest"))
    assert set(row_ids(page)) == {*failed, complete}
    answers = Confirmations(page, accept=False)
    for task_id in (failed[0], failed[1], complete):
        page.locator(f"input[name=ids][value='{task_id}']").check()
    expect(page.locator("#selected-count")).to_have_text("3 selected")
    page.locator("button[data-action=bulk-retry]").click()
    _wait_for_question(page, answers)
    assert "Retry 3 selected task(s)?" in answers.asked[0]
    assert "Dry run: 2 task(s) would be retried" in answers.asked[0], answers.asked
    assert {engine.get_task(i).status for i in failed} == {"error"}  # said no: nothing changed

    answers.accept = True
    with page.expect_navigation():
        page.locator("button[data-action=bulk-retry]").click()
    expect(page.locator("#flash")).to_contain_text("2 of 3 selected tasks retried; 1 skipped")
    assert [engine.get_task(i).status for i in failed] == ["pending", "pending", "error"]
    assert engine.get_task(complete).status == "complete"

    # Every task matching the filter: the label counts them, the confirmation the dry run.
    page.goto(dashboard.at("/tasks?namespace=other&status=pending"))
    expect(page.locator("#matching-label")).to_have_text("All 3 task(s) matching this filter")
    page.locator("#select-matching").check()
    expect(page.locator("#selected-count")).to_have_text("All 3 matching task(s) selected.")
    asked = len(answers.asked)
    with page.expect_navigation():
        page.locator("button[data-action=bulk-cancel]").click()
    question = answers.asked[asked]
    assert "Cancel every task matching this filter (namespace other, status pending)?" in question
    assert "Dry run: 3 task(s) would be cancelled." in question
    expect(page.locator("#flash")).to_contain_text("3 of 3 matching tasks cancelled")
    assert {engine.get_task(i).status for i in pings} == {"cancelled"}

    page.goto(dashboard.at("/tasks?namespace=other&status=cancelled"))
    page.locator("#select-matching").check()
    asked = len(answers.asked)
    with page.expect_navigation():
        page.locator("button[data-action=bulk-purge]").click()
    assert "Dry run: 3 task(s) would be purged (deleted for good)." in answers.asked[asked]
    expect(page.locator("#flash")).to_contain_text("3 of 3 matching tasks purged")
    assert engine.get_tasks(pings) == []
    expect(page.locator("tr.empty")).to_be_visible()


def _wait_for_question(page: Page, answers: Confirmations) -> None:
    """The confirmation comes after the dry run's answer: wait for it to have been asked."""
    for _ in range(100):
        if answers.asked:
            return
        page.wait_for_timeout(50)
    raise AssertionError("the bulk action asked no confirmation")


def test_rerun_from_a_step_shows_refusals_then_reruns(
    serve: Callable[..., Dashboard], page: Page, tmp_path: Path
) -> None:
    dashboard = serve(worker=True)
    engine = dashboard.engine
    flag = tmp_path / "charge-is-broken"
    flag.touch()
    task_id = create_via_api(
        dashboard, {"email": "ada@example.com", "fail": "charge", "fail_flag": str(flag)}
    )
    wait_for_status(engine, task_id, "error")
    Confirmations(page)

    page.goto(dashboard.at(f"/tasks/{task_id}"))
    form = page.locator("form#rerun-form")
    expect(form).to_be_visible()
    expect(form.locator("select[name=step]")).to_have_value("charge")  # the step that failed

    # `ship` waits for `charge`, which did not complete: refused, saying what to do instead.
    form.locator("select[name=step]").select_option("ship")
    with page.expect_navigation():
        form.locator("button[data-action=rerun-task]").click()
    flash = page.locator("#flash .flash-error")
    expect(flash).to_contain_text("waits for charge, which did not complete")
    expect(flash).to_contain_text("fix: re-run from charge")
    assert engine.get_task(task_id).status == "error"

    flag.unlink()  # the fix is deployed
    form = page.locator("form#rerun-form")
    form.locator("select[name=step]").select_option("charge")
    form.locator("input[name=reason]").fill("deployed the charge fix")
    with page.expect_navigation():
        form.locator("button[data-action=rerun-task]").click()
    expect(page.locator("#flash")).to_contain_text(f"task {task_id} is re-running from step")
    expect(page.locator("#task-status")).to_have_text("complete", timeout=20_000)
    expect(page.locator("form#rerun-form")).to_be_hidden()
    wait_for_status(engine, task_id, "complete")
    reasons = [t["reason"] for t in engine.history.task_transitions(task_id)]
    assert "re-run from 'charge': deployed the charge fix" in reasons
