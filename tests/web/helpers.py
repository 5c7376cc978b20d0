"""Small helpers of the browser tests: waiting on the store, confirmations, forms, and DOM reads."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from tasker import Tasker

if TYPE_CHECKING:
    from playwright.sync_api import Dialog, Locator, Page

    from tests.web.conftest import Dashboard

NAV = ("overview", "tasks", "templates", "systems", "analytics", "events")


def wait_for_status(engine: Tasker, task_id: int, status: str, timeout: float = 20.0) -> None:
    """Wait until the task is in `status` in the store; fail with the state it is in otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        task = engine.get_task(task_id)
        if task.status == status:
            return
        if time.monotonic() > deadline:
            steps = {s.name: s.status for s in task.steps}
            raise AssertionError(
                f"task {task_id} is {task.status} (steps {steps}), not {status}, after {timeout} s"
            )
        time.sleep(0.05)


def create_via_api(
    dashboard: Dashboard, context: dict[str, Any], template: str = "webtest/order"
) -> int:
    response = dashboard.api.post("/api/v1/tasks", json={"template": template, "context": context})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


class Confirmations:
    """Answers every `window.confirm` the page asks with `accept`, remembering the questions."""

    def __init__(self, page: Page, accept: bool = True):
        self.accept = accept
        self.asked: list[str] = []
        page.on("dialog", self._answer)

    def _answer(self, dialog: Dialog) -> None:
        self.asked.append(f"{dialog.type}: {dialog.message}")
        if self.accept and dialog.type == "confirm":
            dialog.accept()
        else:
            dialog.dismiss()


def submit(form: Locator) -> None:
    """Press the form's submit button (every action form has one `button[type=submit]`)."""
    form.locator("button[type=submit]").first.click()


def set_field(form: Locator, name: str, value: str) -> None:
    """Set a filter field whatever its control: text input, select, or a group of checkboxes."""
    control = form.locator(f"[name={name}]")
    first = control.first
    tag = first.evaluate("e => e.tagName.toLowerCase()")
    kind = (first.get_attribute("type") or "").lower()
    if tag == "select":
        first.select_option(value)
    elif kind in ("checkbox", "radio"):
        form.locator(f"[name={name}][value='{value}']").check()
    else:
        first.fill(value)


def row_ids(page: Page) -> list[int]:
    """The task ids of the tasks table's rows, top to bottom."""
    return [
        int(v)
        for v in page.locator("table#tasks-table tr[data-task-id]").evaluate_all(
            "rows => rows.map(r => r.dataset.taskId)"
        )
    ]


def dag_states(page: Page) -> dict[str, str]:
    """Step name -> state, as the DAG on the task page draws it."""
    states: dict[str, str] = page.locator("svg#dag g.node").evaluate_all(
        "nodes => Object.fromEntries(nodes.map(n => [n.dataset.step, n.dataset.state]))"
    )
    return states


def csrf_token(page: Page) -> str:
    """The page's CSRF token, read from a form that carries one (the logout form does, when signed
    in)."""
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert token, "no csrf_token field on the page"
    return token


def post_from_page(page: Page, path: str, fields: dict[str, str]) -> int:
    """POST a urlencoded form from inside the page (its cookies, its origin); returns the HTTP
    status."""
    status: int = page.evaluate(
        """async ([path, fields]) => {
            const r = await fetch(
                path, {method: 'POST', body: new URLSearchParams(fields), redirect: 'manual'});
            return r.type === 'opaqueredirect' ? 303 : r.status;
        }""",
        [path, fields],
    )
    return status
