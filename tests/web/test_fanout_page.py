"""Fan-outs on the dashboard: a `foreach` step is one node however many instances it expands into,
drawn as a stack with its progress (`n/N done`), and one entry on the task page listing at most 50
of its instances, the failed and running first, with a line counting the others.

The partitions template: `discover` returns `context.partitions` partitions; `process` runs once
for each (at most 8 at once), one instance failing for good when the context says so; `report`
counts their results; `archive` runs only above 100 partitions, so it is skipped. The items
template fans out over its context at creation: 2,000 instances that no worker runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from playwright.sync_api import Page, expect

from tasker.domain.records import Step
from tasker.domain.states import StepState
from tasker.web.pages.task import INSTANCE_ROWS, FanOutView, instance_rows
from tests.web.conftest import FAST_RETRY, HANDLER, Dashboard
from tests.web.helpers import Confirmations, create_via_api, dag_states, wait_for_status

HANDLERS = "tests.web.handlers"
PROCESS_EACH = "results.discover.partitions"
ARCHIVE_WHEN = "results.report.count > 100"
PARTITIONS = {
    "name": "partitions",
    "namespace_name": "webtest",
    "version": "1.0.0",
    "description": "Process every partition found, then report",
    "retry": FAST_RETRY,
    "step_templates": [
        {"name": "discover", "handler_class": f"{HANDLERS}:Partitions"},
        {
            "name": "process",
            "handler_class": f"{HANDLERS}:Partition",
            "depends_on_step": "discover",
            "foreach": PROCESS_EACH,
            "max_parallel": 8,
        },
        {"name": "report", "handler_class": f"{HANDLERS}:Report", "depends_on_step": "process"},
        {
            "name": "archive",
            "handler_class": HANDLER,
            "depends_on_step": "report",
            "when": ARCHIVE_WHEN,
        },
    ],
}
ITEMS = {
    "name": "items",
    "namespace_name": "webtest",
    "version": "1.0.0",
    "retry": FAST_RETRY,
    "step_templates": [
        {"name": "each", "handler_class": HANDLER, "foreach": "context.items", "max_parallel": 4},
        {"name": "after", "handler_class": HANDLER, "depends_on_step": "each"},
    ],
}
#: Two cards behind a fan-out's node.
STACK = 2
#: The timeline draws this many instances of a fan-out at most.
TIMELINE_INSTANCES = 10


@pytest.fixture
def web_templates(web_templates: Path) -> Path:
    """The browser tests' templates, and the two that fan out."""
    for filename, data in (("partitions.yaml", PARTITIONS), ("items.yaml", ITEMS)):
        (web_templates / filename).write_text(yaml.safe_dump(data, sort_keys=False))
    return web_templates


def _partitions(dashboard: Dashboard, context: dict[str, Any]) -> int:
    return create_via_api(dashboard, context, "webtest/partitions")


def _indexes(page: Page, step: str) -> list[int]:
    """The item indexes of the instance rows listed under `step`, top to bottom."""
    found: list[int] = page.locator(
        f"section.step[data-step={step}] tr[data-instance]"
    ).evaluate_all("rows => rows.map(r => Number(r.dataset.index))")
    return found


def test_a_fan_out_fills_in_live_and_lists_its_instances(
    serve: Callable[..., Dashboard], page: Page, tmp_path: Path
) -> None:
    dashboard = serve(worker=True)
    hold = tmp_path / "hold"  # discover waits until the page watches
    hold.touch()
    task_id = _partitions(dashboard, {"partitions": 30, "hold": str(hold)})

    page.goto(dashboard.at(f"/tasks/{task_id}"))
    dag = page.locator("svg#dag")
    expect(dag.locator("g.node")).to_have_count(4)
    process = dag.locator("g.node[data-step=process]")
    # Before it expands: a stack saying what it will do, no progress yet.
    expect(process).to_have_attribute("data-foreach", PROCESS_EACH)
    expect(process.locator("rect.stack")).to_have_count(STACK)
    expect(process.locator("text.progress")).to_have_text("for each, 8 at once")
    assert process.get_attribute("data-fanout") is None
    expect(page.locator("section.step[data-step=process] .fanout-progress")).to_have_text(
        "not expanded yet"
    )
    expect(page.locator("section.step[data-step=process] .decision")).to_have_count(0)
    expect(page.locator("section.step[data-step=archive] .decision")).to_have_count(0)
    legend = page.locator("section[aria-labelledby=dag-h] .legend")
    expect(legend.locator(".key.foreach-key")).to_have_count(1)
    page.evaluate("window.__sameDocument = true")
    hold.unlink()

    # Without a reload: the progress, the decisions and the states as they happen.
    expect(page.locator("#task-status")).to_have_text("complete", timeout=20_000)
    expect(process).to_have_attribute("data-fanout", "30")
    expect(process).to_have_attribute("data-done", "30")
    expect(process).to_have_attribute("data-failed", "0")
    expect(process.locator("text.progress")).to_have_text("30/30 done")
    # The tooltips keep the control flow when the state changes.
    expect(process.locator("> title")).to_have_text(
        f"process: complete, 30/30 done; for each item in {PROCESS_EACH}, at most 8 at once"
    )
    archive_node = dag.locator("g.node[data-step=archive]")
    expect(archive_node).to_have_attribute("data-state", "skipped")
    expect(archive_node.locator("> title")).to_have_text(
        f"archive: skipped; runs when {ARCHIVE_WHEN}"
    )
    assert dag_states(page) == {
        "discover": "complete",
        "process": "complete",
        "report": "complete",
        "archive": "skipped",
    }
    entry = page.locator("section.step[data-step=process]")
    expect(entry.locator(".fanout-progress")).to_have_text("30/30 done")
    expect(entry.locator(".decision[data-decision=held]")).to_have_text(
        "Decision: expanded into 30 instances, at most 8 at once"
    )
    # The fan-out's results: the count and the first 20 of the 30.
    expect(entry.locator(".results-note")).to_have_text(
        "the first 20 of 30 results; the API has them all"
    )
    expect(entry.locator(".results pre")).to_contain_text('"count": 30')
    archive = page.locator("section.step[data-step=archive]")
    expect(archive.locator(".step-status")).to_have_text("skipped")
    expect(archive.locator(".decision[data-decision=skipped]")).to_have_text(
        f"Skipped: when {ARCHIVE_WHEN} was false"
    )
    expect(archive.locator(".decision code")).to_have_text(ARCHIVE_WHEN)
    report = page.locator("section.step[data-step=report]")
    expect(report.locator(".step-status")).to_have_text("complete")
    expect(report.locator(".results pre")).to_contain_text('"count": 30')
    assert page.evaluate("window.__sameDocument === true"), "the page reloaded instead of updating"

    # As served: the instances are grouped under their fan-out, not steps of their own.
    page.reload()
    task = dashboard.engine.get_task(task_id)
    fanout = task.step("process")
    expect(process.locator("text.progress")).to_have_text(task.fanout_progress(fanout))
    expect(process).to_have_attribute("data-done", "30")
    expect(page.locator("section.step")).to_have_count(4)
    expect(page.locator("section.step[data-step*='[']")).to_have_count(0)
    rows = entry.locator("tr[data-instance]")
    expect(rows).to_have_count(30)
    assert _indexes(page, "process") == list(range(30))
    expect(page.locator("tr[data-instance]")).to_have_count(30)
    seventh = entry.locator("tr[data-instance='process[7]']")
    expect(seventh.locator("td.item")).to_have_text('{"name": "part-007", "rows": 700}')
    expect(seventh.locator(".instance-status")).to_have_text("complete")
    expect(seventh.locator(".instance-attempts")).to_have_text("1 of 3")
    expect(seventh.locator("button[data-action=retry-instance]")).to_be_hidden()
    expect(entry.locator(".instances .more")).to_be_hidden()
    expect(entry.locator(".decision[data-decision=held]")).to_have_text(
        "Decision: expanded into 30 instances, at most 8 at once"
    )
    expect(entry.locator("dd.foreach code")).to_have_text(PROCESS_EACH)
    expect(entry.locator(".results-note")).to_be_visible()
    expect(archive.locator(".decision[data-decision=skipped]")).to_be_visible()
    # The timeline draws the first instances, and says so.
    expect(page.locator("#timeline text[text-anchor=end]")).to_have_count(4 + TIMELINE_INSTANCES)
    expect(page.locator(".timeline-note[data-step=process]")).to_contain_text(
        f"{TIMELINE_INSTANCES} of its 30 instances drawn"
    )


def test_a_failed_instance_comes_first_and_its_retry_finishes_the_fan_out(
    serve: Callable[..., Dashboard], page: Page, tmp_path: Path
) -> None:
    dashboard = serve(worker=True)
    flag = tmp_path / "partition-7-is-corrupt"
    flag.touch()
    task_id = _partitions(dashboard, {"partitions": 30, "fail_index": 7, "fail_flag": str(flag)})
    wait_for_status(dashboard.engine, task_id, "error")
    # At most 8 at once: each instance waits for the one 8 before it, so the two after the
    # failed one (15 and 23) never start; 27 are done.
    task = dashboard.engine.get_task(task_id)
    assert task.fanout_progress(task.step("process")) == "27/30 done"

    page.goto(dashboard.at(f"/tasks/{task_id}"))
    expect(page.locator("#task-status")).to_have_text("error")
    process = page.locator("svg#dag g.node[data-step=process]")
    expect(process).to_have_attribute("data-fanout", "30")
    expect(process).to_have_attribute("data-done", "27")
    expect(process).to_have_attribute("data-failed", "1")
    expect(process.locator("text.progress")).to_have_text("27/30 done, 1 failed")
    # The stack turns the colour of an error while an instance is in error.
    red = page.locator(".legend .key[data-state=error]").evaluate(
        "e => getComputedStyle(e).borderTopColor"
    )
    stacks = process.locator("rect.stack").evaluate_all(
        "rs => rs.map(r => getComputedStyle(r).stroke)"
    )
    assert stacks == [red] * STACK, (stacks, red)
    # The fan-out waits for its instances; what follows it waits too.
    assert dag_states(page) == {
        "discover": "complete",
        "process": "pending",
        "report": "pending",
        "archive": "pending",
    }

    entry = page.locator("section.step[data-step=process]")
    expect(entry.locator(".step-status")).to_have_text("pending")
    expect(entry.locator(".fanout-progress")).to_have_text("27/30 done, 1 failed")
    assert _indexes(page, "process") == [7] + [i for i in range(30) if i != 7]
    failed = entry.locator("tr[data-instance]").first
    expect(failed).to_have_attribute("data-instance", "process[7]")
    expect(failed.locator(".instance-status")).to_have_text("error")
    expect(failed.locator("td.item")).to_have_text('{"name": "part-007", "rows": 700}')
    expect(failed.locator(".instance-error")).to_have_text(
        "PermanentError: partition part-007 is corrupt"
    )
    expect(entry.locator("tr[data-state=error]")).to_have_count(1)
    expect(entry.locator("tr[data-state=complete]")).to_have_count(27)
    expect(entry.locator("tr[data-state=pending]")).to_have_count(2)
    expect(entry.locator("button[data-action=retry-instance]")).to_have_count(30)
    expect(entry.locator("button[data-action=retry-instance]:visible")).to_have_count(1)

    # The partition is mended; retrying the instance from its row finishes the fan-out.
    flag.unlink()
    Confirmations(page)
    failed.locator("button[data-action=retry-instance]").click()
    expect(page.locator("#flash")).to_contain_text("step 'process[7]' is being retried")
    expect(page.locator("#task-status")).to_have_text("complete", timeout=20_000)
    expect(process).to_have_attribute("data-done", "30")
    expect(process).to_have_attribute("data-failed", "0")
    expect(process.locator("text.progress")).to_have_text("30/30 done")
    expect(page.locator("section.step[data-step=report] .step-status")).to_have_text("complete")
    wait_for_status(dashboard.engine, task_id, "complete")
    page.reload()
    assert _indexes(page, "process") == list(range(30))
    expect(entry.locator("tr[data-state=complete]")).to_have_count(30)


def test_a_large_fan_out_lists_fifty_instances_and_counts_the_rest(
    dashboard: Dashboard, page: Page
) -> None:
    count = 2000
    task_id = dashboard.engine.create_task("webtest/items", {"items": list(range(count))}).id

    # The page is served fast, and its size does not grow with the instances it does not list.
    started = time.monotonic()
    answer = dashboard.api.get(f"/tasks/{task_id}")
    seconds = time.monotonic() - started
    assert answer.status_code == 200
    assert seconds < 5, f"the task page took {seconds:.1f} s with {count} instances"
    html = answer.text
    assert html.count("<tr data-instance=") == INSTANCE_ROWS
    assert html.count('<section class="step"') == 2
    assert len(html) < 200_000, len(html)

    page.goto(dashboard.at(f"/tasks/{task_id}"))
    node = page.locator("svg#dag g.node[data-step=each]")
    expect(node).to_have_attribute("data-fanout", str(count))
    expect(node).to_have_attribute("data-done", "0")
    expect(node.locator("text.progress")).to_have_text(f"0/{count} done")
    expect(page.locator("svg#dag g.node")).to_have_count(2)
    entry = page.locator("section.step[data-step=each]")
    expect(entry.locator("tr[data-instance]")).to_have_count(INSTANCE_ROWS)
    assert _indexes(page, "each") == list(range(INSTANCE_ROWS))
    # At most 4 at once: the first 4 are ready, the others wait for them.
    expect(entry.locator("tr[data-state=ready]")).to_have_count(4)
    expect(entry.locator("tr[data-instance='each[12]'] td.item")).to_have_text("12")
    expect(entry.locator(".instances .more")).to_have_text(
        f"and {count - INSTANCE_ROWS:,} more ({count - INSTANCE_ROWS:,} pending)"
    )
    expect(entry.locator("caption")).to_contain_text("the first 50")
    expect(page.locator("#timeline text[text-anchor=end]")).to_have_count(2 + TIMELINE_INSTANCES)
    # The live refresh reads the 2,002 steps without an error (the watch would see one) and
    # leaves the counts as they were.
    page.wait_for_timeout(3_500)
    expect(node).to_have_attribute("data-fanout", str(count))
    expect(entry.locator(".instances .more")).to_have_text(
        f"and {count - INSTANCE_ROWS:,} more ({count - INSTANCE_ROWS:,} pending)"
    )


def test_the_template_page_marks_fan_outs(dashboard: Dashboard, page: Page) -> None:
    page.goto(dashboard.at("/templates/webtest/partitions"))
    table = page.locator("#template-steps")
    expect(table.locator("thead")).to_contain_text("Runs when")
    process = table.locator("tr[data-step=process] td.control")
    expect(process.locator("code.foreach-expr")).to_have_text(PROCESS_EACH)
    expect(process.locator(".foreach")).to_have_text(f"foreach: {PROCESS_EACH}")
    expect(process.locator(".max-parallel")).to_have_text("max_parallel: 8")
    expect(table.locator("tr[data-step=archive] td.control")).to_have_text(f"when {ARCHIVE_WHEN}")
    expect(table.locator("tr[data-step=report] td.control")).to_have_text("\u2013")

    diagram = page.locator("svg#template-diagram")
    node = diagram.locator("g.node[data-step=process]")
    expect(node).to_have_attribute("data-foreach", PROCESS_EACH)
    expect(node.locator("rect.stack")).to_have_count(STACK)
    expect(node.locator("> title")).to_contain_text(
        f"for each item in {PROCESS_EACH}, at most 8 at once"
    )
    expect(node.locator("text.progress")).to_have_text("for each, 8 at once")
    assert node.get_attribute("data-fanout") is None
    expect(diagram.locator("g.node[data-foreach]")).to_have_count(1)
    expect(diagram.locator("rect.stack")).to_have_count(STACK)
    legend = page.locator("section[aria-labelledby=diagram-h] .legend")
    expect(legend.locator(".key.foreach-key")).to_have_count(1)
    expect(legend.locator(".key.edge-key")).to_have_count(1)

    # A template without a fan-out shows none of it.
    page.goto(dashboard.at("/templates/webtest/order"))
    expect(page.locator("svg#template-diagram rect.stack")).to_have_count(0)
    expect(page.locator("svg#template-diagram [data-foreach]")).to_have_count(0)


def _instance(index: int, status: StepState, item: Any = None) -> Step:
    now = datetime.now(UTC)
    return Step(
        id=100 + index,
        task_id=1,
        name=f"process[{index}]",
        status=status,
        attempts=1,
        retry_limit=3,
        retryable=True,
        dependent_system="default",
        results=None,
        last_error=None,
        run_at=None,
        started_at=None,
        finished_at=None,
        created_at=now,
        position=1,
        idempotency_key=f"k{index}",
        instance_of=1,
        item_index=index,
        item=item,
    )


def test_instances_listed_failed_then_retrying_then_running_then_by_index() -> None:
    """The table's order and the line under it, without a browser: only the listed instances'
    items are summarised, cut to 60 characters."""
    states = [StepState.COMPLETE] * 10
    states[6] = StepState.IN_PROGRESS
    states[8] = StepState.ERROR
    states[3] = StepState.WAITING_RETRY
    states[9] = StepState.READY
    items = [{"name": f"partition-{i}", "payload": "x" * 80} for i in range(10)]
    instances = [_instance(i, s, items[i]) for i, s in reversed(list(enumerate(states)))]
    rows, hidden = instance_rows(instances, limit=5)
    assert [r.step.item_index for r in rows] == [8, 3, 6, 0, 1]
    assert hidden == [("ready", 1), ("complete", 4)]
    first = rows[0].item
    assert first is not None and len(first) == 60 and first.endswith("\u2026")
    assert first.startswith('{"name": "partition-8", "payload": "xxx')
    view = FanOutView("context.items", None, None, None, rows, hidden)
    assert view.more == "and 5 more (1 ready, 4 complete)"
    assert FanOutView("context.items", None, None, None, rows, []).more == ""
    big = [_instance(i, StepState.COMPLETE) for i in range(10_000)]
    rows, hidden = instance_rows(big)
    assert len(rows) == INSTANCE_ROWS and all(r.item is None for r in rows)
    assert FanOutView("x", None, None, None, rows, hidden).more == (
        "and 9,950 more (9,950 complete)"
    )
