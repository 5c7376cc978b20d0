"""Sub-workflows on the dashboard: a `task:` step is drawn as one, its entry links to the child task
it created (with the child's status), the child's page links back to its parent, and the template
page names the template the step runs and the context it passes.

The refunds template: `check` returns the context's amount; `refund` runs the refund_child
template as a child task, with a context built from the parent's (`context:`); `after` follows it.
The child's two steps (`pay`, `confirm`) wait while `context.hold` names a file that exists and
fail when `context.fail` names them, which the parent passes on as `child_hold` and `child_fail`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from playwright.sync_api import Page, expect

from tests.web.conftest import FAST_RETRY, HANDLER, Dashboard, sqlite_only
from tests.web.helpers import create_via_api, dag_states, wait_for_status

CHILD_REF = "webtest/refund_child"
CHILD_KEY = f"{CHILD_REF}@1.0.0"
CHILD_CONTEXT = {
    "amount": "results.check.amount",
    "email": "context.email",
    "hold": "context.child_hold",
    "fail": "context.child_fail",
    "reason": "'refund'",
    "priority": 2,
}
REFUNDS = {
    "name": "refunds",
    "namespace_name": "webtest",
    "version": "1.0.0",
    "description": "Check a claim, refund it through the refund workflow, then tell the customer",
    "retry": FAST_RETRY,
    "step_templates": [
        {"name": "check", "handler_class": HANDLER},
        {
            "name": "refund",
            "depends_on_step": "check",
            "task": CHILD_REF,
            "context": CHILD_CONTEXT,
        },
        {"name": "after", "handler_class": HANDLER, "depends_on_step": "refund"},
    ],
}
REFUND_CHILD = {
    "name": "refund_child",
    "namespace_name": "webtest",
    "version": "1.0.0",
    "description": "Pay a refund and confirm it",
    "retry": FAST_RETRY,
    "step_templates": [
        {"name": "pay", "handler_class": HANDLER, "default_retry_limit": 1},
        {"name": "confirm", "handler_class": HANDLER, "depends_on_step": "pay"},
    ],
}


@pytest.fixture
def web_templates(web_templates: Path) -> Path:
    """The browser tests' templates, and a parent whose `refund` step runs a child task."""
    for filename, data in (("refunds.yaml", REFUNDS), ("refund-child.yaml", REFUND_CHILD)):
        (web_templates / filename).write_text(yaml.safe_dump(data, sort_keys=False))
    return web_templates


@pytest.fixture
def holds(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """The files the parent's `check` and the child's steps wait on, both there at first; gone at
    teardown (before the worker stops), so that a failed test leaves no step waiting."""
    found = (tmp_path / "hold", tmp_path / "child-hold")
    for path in found:
        path.touch()
    yield found
    for path in found:
        path.unlink(missing_ok=True)


def _refunds(dashboard: Dashboard, **context: Any) -> int:
    """A task of the refunds template, with every key the child's context reads."""
    defaults = {"email": "ada@example.com", "amount": 30, "child_hold": "", "child_fail": ""}
    return create_via_api(dashboard, {**defaults, **context}, "webtest/refunds")


def _child_text(child_id: int, status: str) -> str:
    return f"child task {child_id} ({CHILD_KEY}), {status}"


def test_parent_and_child_pages_link_each_other(dashboard: Dashboard, page: Page) -> None:
    engine = dashboard.engine
    parent_id = _refunds(dashboard)
    engine.run(parent_id)
    wait_for_status(engine, parent_id, "complete")
    (child_id,) = engine.child_tasks(parent_id)

    page.goto(dashboard.at(f"/tasks/{parent_id}"))
    expect(page.locator("#task-status")).to_have_text("complete")
    expect(page.locator("#parent-task")).to_have_count(0)
    assert dag_states(page) == {"check": "complete", "refund": "complete", "after": "complete"}

    # The graph: the refund node is a sub-workflow, its badge links to the child.
    dag = page.locator("svg#dag")
    refund_node = dag.locator("g.node[data-step=refund]")
    expect(refund_node).to_have_attribute("data-task", CHILD_REF)
    expect(refund_node).to_have_attribute("data-child", str(child_id))
    expect(dag.locator("g.node[data-task]")).to_have_count(1)
    expect(refund_node.locator(".task-badge text")).to_have_text("task")
    expect(refund_node.locator("> title")).to_have_text(
        f"refund: complete; runs task {CHILD_REF}; {_child_text(child_id, 'complete')}"
    )
    badge_link = refund_node.locator("a.child-link")
    expect(badge_link).to_have_attribute("href", f"/tasks/{child_id}")
    expect(badge_link.locator("title")).to_have_text(f"open {_child_text(child_id, 'complete')}")
    expect(dag.locator("g.node[data-step=check] .task-badge")).to_have_count(0)
    legend = page.locator("section[aria-labelledby=dag-h] .legend")
    expect(legend.locator(".badge-key")).to_have_text("task")

    # The refund entry: the template it runs, and its child with the child's status.
    entry = page.locator("section.step[data-step=refund]")
    expect(entry).to_have_attribute("data-task", CHILD_REF)
    expect(entry.locator("dd.subflow")).to_have_text(f"task: {CHILD_REF}")
    expect(entry.locator("dd.child-task")).to_have_text(_child_text(child_id, "complete"))
    expect(entry.locator(".child-status")).to_have_attribute("data-state", "complete")
    # The step's decision ("waiting for child task ...") is what the child line says.
    expect(entry.locator(".decision")).to_have_count(0)
    expect(entry.locator(".results pre")).to_contain_text('"confirm"')
    expect(page.locator("section.step[data-step=check] dd.child-task")).to_have_count(0)

    # The link opens the child, which says whose child it is and links back.
    entry.locator("a.child-link").click()
    expect(page).to_have_url(dashboard.at(f"/tasks/{child_id}"))
    expect(page.locator("h1")).to_contain_text(f"Task #{child_id}")
    parent_line = page.locator("#parent-task")
    expect(parent_line).to_have_text(f"Child of task {parent_id}, step 'refund'")
    child = engine.get_task(child_id)
    parent = engine.get_task(parent_id)
    assert child.correlation_id == parent.correlation_id
    expect(page.locator("dl.meta").first).to_contain_text(parent.correlation_id)
    assert dag_states(page) == {"pay": "complete", "confirm": "complete"}
    expect(page.locator("svg#dag g.node[data-task]")).to_have_count(0)
    parent_line.locator("a").click()
    expect(page).to_have_url(dashboard.at(f"/tasks/{parent_id}"))
    expect(page.locator("#task-status")).to_have_text("complete")


def test_the_child_link_appears_live_and_keeps_the_child_status(
    serve: Callable[..., Dashboard], holds: tuple[Path, Path], page: Page
) -> None:
    """Opened before the child exists: the link, the badge's link and the child's status fill in
    without a reload, and the refreshes that follow keep them; a child that fails fails the step
    with its error."""
    dashboard = serve(worker=True)
    hold, child_hold = holds
    parent_id = _refunds(dashboard, hold=str(hold), child_hold=str(child_hold), child_fail="pay")

    page.goto(dashboard.at(f"/tasks/{parent_id}"))
    entry = page.locator("section.step[data-step=refund]")
    refund_node = page.locator("svg#dag g.node[data-step=refund]")
    expect(entry.locator("dd.child-task")).to_have_text("created when the step runs")
    expect(entry.locator("a.child-link")).to_have_count(0)
    expect(refund_node).to_have_attribute("data-task", CHILD_REF)
    assert refund_node.get_attribute("data-child") is None
    expect(refund_node.locator("a.child-link")).to_have_count(0)
    expect(refund_node.locator(".task-badge text")).to_have_text("task")
    page.evaluate("window.__sameDocument = true")
    hold.unlink()

    # The check completes and the refund step creates its child, which waits.
    link = entry.locator("a.child-link")
    expect(link).to_have_attribute("href", re.compile(r"^/tasks/\d+$"))
    child_id = int((link.get_attribute("href") or "").rsplit("/", 1)[1])
    assert dashboard.engine.child_tasks(parent_id) == [child_id]
    expect(link).to_have_text(f"child task {child_id} ({CHILD_KEY})")
    expect(entry.locator(".child-status")).to_have_text(re.compile(r"^(pending|in_progress)$"))
    expect(entry.locator(".step-status")).to_have_text("waiting_retry")
    expect(entry.locator(".decision")).to_have_count(0)
    expect(refund_node).to_have_attribute("data-child", str(child_id))
    expect(refund_node.locator("a.child-link")).to_have_attribute("href", f"/tasks/{child_id}")
    expect(refund_node.locator(".task-badge text")).to_have_text("task")

    # The child fails: the step fails with its error, and the page says the child's status.
    child_hold.unlink()
    expect(page.locator("#task-status")).to_have_text("error", timeout=20_000)
    expect(entry.locator(".step-status")).to_have_text("error")
    expect(entry.locator("dd.child-task")).to_have_text(_child_text(child_id, "error"))
    expect(entry.locator(".last-error .error-class")).to_have_text("ChildTaskFailed")
    expect(entry.locator(".last-error .error-message")).to_contain_text(
        f"child task {child_id} ({CHILD_KEY}) failed: step 'pay'"
    )
    # The refreshes kept the badge, its link and the child in the tooltip.
    expect(refund_node.locator("> title")).to_have_text(
        f"refund: error; runs task {CHILD_REF}; {_child_text(child_id, 'error')}"
    )
    expect(refund_node.locator(".task-badge text")).to_have_text("task")
    expect(refund_node.locator("a.child-link title")).to_have_text(
        f"open {_child_text(child_id, 'error')}"
    )
    assert page.evaluate("window.__sameDocument === true"), "the page reloaded instead of updating"

    # From the graph to the child, which shows its failed step.
    refund_node.locator("a.child-link").click()
    expect(page).to_have_url(dashboard.at(f"/tasks/{child_id}"))
    expect(page.locator("#task-status")).to_have_text("error")
    expect(page.locator("#parent-task")).to_have_text(f"Child of task {parent_id}, step 'refund'")
    expect(page.locator("section.step[data-step=pay] .error-message")).to_have_text(
        "pay was told to fail"
    )
    wait_for_status(dashboard.engine, child_id, "error")


@sqlite_only
def test_template_page_names_the_template_a_step_runs(dashboard: Dashboard, page: Page) -> None:
    page.goto(dashboard.at("/templates/webtest/refunds"))
    table = page.locator("#template-steps")
    refund = table.locator("tr[data-step=refund] td.handler")
    expect(refund.locator(".subflow")).to_have_text(f"task: {CHILD_REF}")
    expect(refund.locator(".subflow a")).to_have_attribute("href", f"/templates/{CHILD_REF}")
    mapping = refund.locator(".child-context li")
    expect(mapping).to_have_count(len(CHILD_CONTEXT))
    for key, value in CHILD_CONTEXT.items():
        shown = value if isinstance(value, str) else str(value)
        expect(refund.locator(f".child-context li[data-key={key}]")).to_have_text(
            f"{key} = {shown}"
        )
    expect(table.locator("tr[data-step=check] td.handler")).to_have_text(HANDLER)
    expect(table.locator("tr[data-step=check] .subflow")).to_have_count(0)
    diagram = page.locator("svg#template-diagram")
    node = diagram.locator("g.node[data-step=refund]")
    expect(node).to_have_attribute("data-task", CHILD_REF)
    expect(node.locator("> title")).to_have_text(f"refund: pending; runs task {CHILD_REF}")
    expect(node.locator(".task-badge text")).to_have_text("task")
    expect(node.locator("a.child-link")).to_have_count(0)
    expect(page.locator("section[aria-labelledby=diagram-h] .legend .badge-key")).to_have_count(1)

    # The link opens the child's template, which has no sub-workflow of its own.
    refund.locator(".subflow a").click()
    expect(page).to_have_url(dashboard.at(f"/templates/{CHILD_REF}"))
    expect(page.locator("svg#template-diagram g.node[data-task]")).to_have_count(0)
    expect(page.locator("#template-steps .subflow")).to_have_count(0)
