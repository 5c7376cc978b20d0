"""Time on the dashboard, in a real browser: a waiting step says what it waits for, an operator
sends the signal from the task page (a bad payload is refused next to the field), the signal is
marked on the timeline and listed; the schedules page pauses, resumes, runs now and removes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml
from playwright.sync_api import Page, expect

from tests.web.conftest import FAST_RETRY, HANDLER, Dashboard, Watch
from tests.web.helpers import Confirmations, create_via_api, wait_for_status

APPROVAL = {
    "name": "approval",
    "namespace_name": "webtest",
    "version": "1.0.0",
    "retry": FAST_RETRY,
    "schedules": [{"name": "morning", "cron": "0 7 * * *", "timezone": "Europe/Berlin"}],
    "step_templates": [
        {"name": "request", "handler_class": HANDLER},
        {"name": "approved", "depends_on_step": "request", "wait_for": "approval"},
        {"name": "ship", "handler_class": HANDLER, "depends_on_step": "approved"},
    ],
}


def load(dashboard: Dashboard, tmp_path: Path) -> None:
    path = tmp_path / "approval.yaml"
    path.write_text(yaml.safe_dump(APPROVAL, sort_keys=False))
    dashboard.engine.load_templates(path)


def test_an_operator_sends_the_signal_a_step_waits_for(
    serve: Callable[..., Dashboard], page: Page, tmp_path: Path, watch: Watch
) -> None:
    dashboard = serve(worker=True)
    load(dashboard, tmp_path)
    task_id = create_via_api(dashboard, {}, template="webtest/approval")
    page.goto(dashboard.at(f"/tasks/{task_id}"))
    waiting = page.locator("section.step[data-step=approved] .decision[data-decision=wait]")
    expect(waiting).to_contain_text("waiting for signal 'approval'", timeout=20_000)
    expect(page.locator("#no-signals")).to_contain_text("approval")

    watch.allow(422)
    page.fill("#signal-payload", "{not json")
    page.click("button[data-action=send-signal]")
    expect(page.locator("#signal-error")).to_contain_text("not valid JSON")
    expect(page.locator("#signal-payload")).to_have_value("{not json")

    page.fill("#signal-payload", '{"by": "ana"}')
    page.click("button[data-action=send-signal]")
    expect(page.locator("#flash")).to_contain_text("signal 'approval' sent; it woke 1 step(s)")
    expect(page.locator("#task-status")).to_have_text("complete", timeout=20_000)
    wait_for_status(dashboard.engine, task_id, "complete")

    page.reload()
    expect(page.locator("#signals-table tr[data-signal=approval]")).to_contain_text('"by": "ana"')
    expect(page.locator("#timeline .signal-mark[data-signal=approval]")).to_have_count(1)
    note = page.locator("section.step[data-step=approved] .decision[data-decision=wait]")
    expect(note).to_contain_text("signal 'approval' received")
    expect(page.locator("#signal-form")).to_have_count(0)  # a finished task takes no signal


def test_the_schedules_page_pauses_resumes_runs_and_removes(
    serve: Callable[..., Dashboard], page: Page, tmp_path: Path
) -> None:
    dashboard = serve()
    load(dashboard, tmp_path)
    page.goto(dashboard.at("/schedules"))
    row = page.locator("#schedules-table tr[data-name=morning]")
    expect(row).to_contain_text("webtest/approval")
    expect(row).to_contain_text("Europe/Berlin")
    expect(row.locator(".schedule-state")).to_contain_text("active")

    row.locator("button[data-action=pause-schedule]").click()
    expect(page.locator("#flash")).to_contain_text("paused")
    expect(row.locator(".schedule-state")).to_contain_text("paused")
    expect(row.locator(".next-tick")).to_have_text("\u2013")
    row.locator("button[data-action=resume-schedule]").click()
    expect(row.locator(".schedule-state")).to_contain_text("active")

    Confirmations(page, accept=True)
    row.locator("button[data-action=trigger-schedule]").click()
    expect(page.locator("#flash")).to_contain_text("ran now: task")
    tasks, _ = dashboard.engine.list_tasks()
    assert [t.template_key for t in tasks] == ["webtest/approval@1.0.0"]

    row.locator("button[data-action=remove-schedule]").click()
    expect(page.locator("#flash")).to_contain_text("removed")
    expect(page.locator("#schedules-table tr.empty")).to_be_visible()
