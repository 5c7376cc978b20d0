"""Compensation on the task page, in a real browser: a task that stopped in error offers to undo
its completed steps; the undo runs, the task turns `compensated` without a reload, and each step
shows its undo's state beside its own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml
from playwright.sync_api import Page, expect

from tests.web.conftest import FAST_RETRY, HANDLER, Dashboard
from tests.web.helpers import Confirmations, create_via_api, wait_for_status

SAGA = {
    "name": "saga",
    "namespace_name": "webtest",
    "version": "1.0.0",
    "retry": FAST_RETRY,
    "on_failure": "stop",  # an operator decides to undo, from the page
    "step_templates": [
        {"name": "charge", "handler_class": HANDLER, "compensation": {"handler_class": HANDLER}},
        {
            "name": "reserve",
            "handler_class": HANDLER,
            "depends_on_step": "charge",
            "compensation": {"handler_class": HANDLER},
        },
        {"name": "ship", "handler_class": HANDLER, "depends_on_step": "reserve"},
    ],
}


def test_an_operator_undoes_a_failed_task_from_its_page(
    serve: Callable[..., Dashboard], page: Page, tmp_path: Path
) -> None:
    dashboard = serve(worker=True)
    path = tmp_path / "saga.yaml"
    path.write_text(yaml.safe_dump(SAGA, sort_keys=False))
    dashboard.engine.load_templates(path)
    task_id = create_via_api(dashboard, {"fail": "ship"}, template="webtest/saga")
    wait_for_status(dashboard.engine, task_id, "error")

    page.goto(dashboard.at(f"/tasks/{task_id}"))
    expect(page.locator("#task-status")).to_have_text("error")
    undo = page.locator("button[data-action=compensate-task]")
    expect(undo).to_be_visible()
    Confirmations(page, accept=True)
    undo.click()
    expect(page.locator("#flash")).to_contain_text("undoing its steps")
    expect(page.locator("#task-status")).to_have_text("compensated", timeout=20_000)
    wait_for_status(dashboard.engine, task_id, "compensated")

    page.reload()
    for step in ("charge", "reserve"):
        state = page.locator(f"section.step[data-step={step}] .undo-state .status")
        expect(state).to_have_text("complete")
    expect(page.locator("section.step[data-step=ship] .undo-state")).to_have_count(0)
    expect(page.locator("section.step[data-step='undo:charge'] .undoes")).to_have_text("charge")
    expect(page.locator("button[data-action=compensate-task]")).to_be_hidden()
