"""Control flow on the dashboard: a decision point (`when:` conditions and a `join: any`) drawn on
the step graph of the task and template pages, and each step's decision shown on the task page.

The approval template: `check` returns the context's amount; `review` runs above 100 and
`auto_approve` at 100 or below; `pay` follows whichever ran (`join: any`); `audit` follows `review`
alone, so it is skipped with it. A task of amount 50 therefore skips review and audit and completes
auto_approve and pay.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from playwright.sync_api import Locator, Page, expect

from tasker.web.dag import WHEN_CHAR_W, WHEN_CHARS, layout
from tests.web.conftest import FAST_RETRY, HANDLER, Dashboard, sqlite_only
from tests.web.helpers import dag_states, wait_for_status

#: What a cell without a condition or join shows (an en dash).
NONE = "\u2013"
REVIEW_WHEN = "results.check.amount > 100"
AUTO_WHEN = "results.check.amount <= 100"
APPROVAL = {
    "name": "approval",
    "namespace_name": "webtest",
    "version": "1.0.0",
    "description": "Pay small amounts at once, review large ones first",
    "schema": {
        "type": "object",
        "required": ["amount"],
        "properties": {"amount": {"type": "number", "minimum": 0}},
    },
    "retry": FAST_RETRY,
    "step_templates": [
        {"name": "check", "handler_class": HANDLER},
        {
            "name": "review",
            "handler_class": HANDLER,
            "depends_on_step": "check",
            "when": REVIEW_WHEN,
        },
        {
            "name": "auto_approve",
            "handler_class": HANDLER,
            "depends_on_step": "check",
            "when": AUTO_WHEN,
        },
        {
            "name": "pay",
            "handler_class": HANDLER,
            "depends_on_steps": ["review", "auto_approve"],
            "join": "any",
        },
        {"name": "audit", "handler_class": HANDLER, "depends_on_step": "review"},
    ],
}
#: A step gated with no parent (its condition is on its node) and a condition too long for its
#: edge (cut there, whole in the tooltip).
START_WHEN = "context.amount >= 0"
LONG_WHEN = "has(results.start.amount) && results.start.amount > 1000"
GATE = {
    "name": "gate",
    "namespace_name": "webtest",
    "version": "1.0.0",
    "retry": FAST_RETRY,
    "step_templates": [
        {"name": "start", "handler_class": HANDLER, "when": START_WHEN},
        {"name": "notify", "handler_class": HANDLER, "depends_on_step": "start", "when": LONG_WHEN},
    ],
}


@pytest.fixture
def web_templates(web_templates: Path) -> Path:
    """The browser tests' templates, and the two with control flow."""
    for filename, data in (("approval.yaml", APPROVAL), ("gate.yaml", GATE)):
        (web_templates / filename).write_text(yaml.safe_dump(data, sort_keys=False))
    return web_templates


def _dash(locator: Locator) -> str:
    """How the browser strokes an SVG path: 'none' for a solid line."""
    dash: str = locator.evaluate("e => getComputedStyle(e).strokeDasharray")
    return dash


def test_decision_point_on_the_task_page(dashboard: Dashboard, page: Page) -> None:
    engine = dashboard.engine
    task_id = engine.create_task("webtest/approval", {"amount": 50}).id
    engine.run(task_id)
    wait_for_status(engine, task_id, "complete")

    page.goto(dashboard.at(f"/tasks/{task_id}"))
    expect(page.locator("#task-status")).to_have_text("complete")
    assert dag_states(page) == {
        "check": "complete",
        "review": "skipped",
        "auto_approve": "complete",
        "pay": "complete",
        "audit": "skipped",
    }

    # The graph: dashed edges carry the conditions; pay is marked as a join: any.
    dag = page.locator("svg#dag")
    for target, condition in (("review", REVIEW_WHEN), ("auto_approve", AUTO_WHEN)):
        edge = dag.locator(f"path.edge[data-from=check][data-to={target}]")
        expect(edge).to_have_attribute("data-when", condition)
        expect(edge.locator("title")).to_have_text(f"{target} runs when {condition}")
        assert _dash(edge) != "none", f"the edge into {target} is not dashed"
        expect(dag.locator(f".edge-label[data-to={target}] text")).to_have_text(condition)
    expect(dag.locator("path.edge[data-when]")).to_have_count(2)
    for target in ("pay", "audit"):
        plain = dag.locator(f"path.edge[data-to={target}]").first
        assert plain.get_attribute("data-when") is None and _dash(plain) == "none", target
    expect(dag.locator("g.node[data-join=any]")).to_have_count(1)
    pay = dag.locator("g.node[data-step=pay]")
    expect(pay).to_have_attribute("data-join", "any")
    expect(pay.locator(".join-badge text")).to_have_text("any")
    expect(pay.locator("rect.ring")).to_have_count(1)
    legend = page.locator("section[aria-labelledby=dag-h] .legend")
    expect(legend.locator(".key.edge-key")).to_have_count(1)
    expect(legend.locator(".key.join-key")).to_have_count(1)
    expect(legend.locator(".key[data-state=skipped]")).to_have_count(1)

    # The steps: why review and audit were skipped, in place of an error.
    review = page.locator("section.step[data-step=review]")
    expect(review.locator(".step-status")).to_have_text("skipped")
    expect(review.locator(".decision[data-decision=skipped]")).to_be_visible()
    expect(review.locator(".decision[data-decision=skipped]")).to_have_text(
        f"Skipped: when {REVIEW_WHEN} was false"
    )
    expect(review.locator(".decision code")).to_have_text(REVIEW_WHEN)
    expect(review.locator(".last-error")).to_be_hidden()
    expect(review.locator("dd.condition")).to_have_text(REVIEW_WHEN)
    audit = page.locator("section.step[data-step=audit]")
    expect(audit.locator(".step-status")).to_have_text("skipped")
    expect(audit.locator(".decision[data-decision=skipped]")).to_have_text(
        "Skipped: parent 'review' skipped (join: all)"
    )
    # auto_approve ran because its condition held; pay ran after one of its parents.
    auto = page.locator("section.step[data-step=auto_approve]")
    expect(auto.locator(".step-status")).to_have_text("complete")
    expect(auto.locator(".decision[data-decision=held]")).to_have_text(
        f"Decision: when {AUTO_WHEN} was true"
    )
    expect(auto.locator(".decision[data-decision=skipped]")).to_have_count(0)
    expect(auto.locator(".last-error")).to_be_hidden()
    pay_step = page.locator("section.step[data-step=pay]")
    expect(pay_step.locator(".step-status")).to_have_text("complete")
    expect(pay_step.locator(".join-any")).to_have_text("(join: any)")
    expect(pay_step.locator(".decision")).to_have_count(0)
    expect(page.locator("section.step .decision[data-decision=skipped]")).to_have_count(2)


@sqlite_only
def test_template_page_lists_conditions_and_joins(dashboard: Dashboard, page: Page) -> None:
    page.goto(dashboard.at("/templates/webtest/approval"))
    table = page.locator("#template-steps")
    expect(table.locator("thead")).to_contain_text("Runs when")
    expected = {
        "check": NONE,
        "review": f"when {REVIEW_WHEN}",
        "auto_approve": f"when {AUTO_WHEN}",
        "pay": "join: any",
        "audit": NONE,
    }
    for step, text in expected.items():
        expect(table.locator(f"tr[data-step={step}] td.control"), step).to_have_text(text)
    expect(table.locator("tr[data-step=review] code.condition")).to_have_text(REVIEW_WHEN)
    diagram = page.locator("svg#template-diagram")
    expect(diagram.locator("path.edge[data-to=review]")).to_have_attribute("data-when", REVIEW_WHEN)
    expect(diagram.locator("g.node[data-step=pay]")).to_have_attribute("data-join", "any")
    expect(diagram.locator("g.node[data-step=pay] > title")).to_contain_text("join: any")
    expect(diagram.locator("g.node[data-step=review] > title")).to_contain_text(
        f"runs when {REVIEW_WHEN}"
    )
    expect(page.locator("section[aria-labelledby=diagram-h] .legend .key")).to_have_count(2)

    # A root step carries its condition on its node; a long condition is cut on its edge.
    page.goto(dashboard.at("/templates/webtest/gate"))
    diagram = page.locator("svg#template-diagram")
    start = diagram.locator("g.node[data-step=start]")
    expect(start).to_have_attribute("data-when", START_WHEN)
    expect(start.locator("> title")).to_contain_text(f"runs when {START_WHEN}")
    expect(start.locator(".when-badge text")).to_have_text("when")
    expect(start.locator(".when-badge title")).to_have_text(f"runs when {START_WHEN}")
    edge = diagram.locator("path.edge[data-to=notify]")
    expect(edge).to_have_attribute("data-when", LONG_WHEN)
    expect(edge.locator("title")).to_have_text(f"notify runs when {LONG_WHEN}")
    shown = diagram.locator(".edge-label[data-to=notify] text")
    expect(shown).to_have_text(LONG_WHEN[: WHEN_CHARS - 1] + "\u2026")
    expect(diagram.locator(".edge-label[data-to=notify] title")).to_have_text(
        f"notify runs when {LONG_WHEN}"
    )
    expect(diagram.locator("g.node[data-step=notify] .when-badge")).to_have_count(0)

    # A template without control flow shows none of it.
    page.goto(dashboard.at("/templates/webtest/order"))
    expect(page.locator("#template-steps thead")).not_to_contain_text("Runs when")
    expect(page.locator("svg#template-diagram path.edge")).to_have_count(4)
    expect(
        page.locator("svg#template-diagram [data-when], svg#template-diagram [data-join]")
    ).to_have_count(0)
    expect(page.locator("section[aria-labelledby=diagram-h] .legend")).to_have_count(0)


def test_condition_labels_never_cover_a_node() -> None:
    """The gap before a conditioned step is widened to its label, so the label sits between the
    columns; without conditions the layout is what it always was."""
    steps = [("a", []), ("b", ["a"]), ("c", ["a", "b"])]
    plain = layout(steps)
    gated = layout(steps, when={"c": LONG_WHEN}, join_any={"c"})
    assert [(n.x, n.y) for n in plain.nodes[:2]] == [(n.x, n.y) for n in gated.nodes[:2]]
    assert gated.width > plain.width and gated.conditional and gated.joins_any
    nodes = {n.name: n for n in gated.nodes}
    into_c = [e for e in gated.edges if e.target == "c"]
    assert len(into_c) == 2 and all(e.when == LONG_WHEN for e in into_c)
    for e in into_c:
        half = e.label_w / 2
        assert half >= len(e.when_label) * WHEN_CHAR_W / 2
        assert nodes["b"].x + nodes["b"].w < e.label_x - half
        assert e.label_x + half < nodes["c"].x
    assert not plain.conditional and not plain.joins_any
    assert all(e.when is None for e in plain.edges)
