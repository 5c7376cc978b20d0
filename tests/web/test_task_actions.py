"""The task pages against a running worker, on SQLite and PostgreSQL: a task created through the API
shows up and its DAG turns complete step by step without a reload; a failed task shows its error and
"retry" makes it complete; the resolve form refuses bad JSON inline and, with good JSON, resolves
the step so that the task runs to its end."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.web.conftest import ORDER_STEPS, Dashboard, Watch, sqlite_only
from tests.web.helpers import Confirmations, create_via_api, dag_states, submit, wait_for_status

#: Records every distinct set of DAG states the page shows, whether the nodes are redrawn or
#: updated.
RECORD_DAG = """() => {
    window.__sameDocument = true;
    window.__dagSeen = [];
    const snap = () => {
        const nodes = document.querySelectorAll('svg#dag g.node');
        const states = Object.fromEntries([...nodes].map(n => [n.dataset.step, n.dataset.state]));
        const key = JSON.stringify(states);
        const seen = window.__dagSeen;
        if (!seen.length || seen[seen.length - 1] !== key) seen.push(key);
    };
    snap();
    window.__dagTimer = setInterval(snap, 25);
}"""


def test_dag_turns_complete_live(
    serve: Callable[..., Dashboard], page: Page, tmp_path: Path
) -> None:
    dashboard = serve(worker=True)
    hold = tmp_path / "hold"  # the steps wait until the page watches
    hold.touch()
    task_id = create_via_api(
        dashboard, {"email": "ada@example.com", "amount": 3, "sleep": 0.4, "hold": str(hold)}
    )

    page.goto(dashboard.at("/tasks"))
    row = page.locator(f"table#tasks-table tr[data-task-id='{task_id}']")
    expect(row).to_be_visible()
    row.locator(f"a[href$='/tasks/{task_id}']").first.click()
    expect(page).to_have_url(dashboard.at(f"/tasks/{task_id}"))
    expect(page.locator("svg#dag g.node")).to_have_count(len(ORDER_STEPS))
    page.evaluate(RECORD_DAG)
    assert set(dag_states(page)) == set(ORDER_STEPS)
    assert "complete" not in dag_states(page).values(), dag_states(page)
    hold.unlink()

    expect(page.locator("#task-status")).to_have_text("complete", timeout=20_000)
    expect(page.locator("svg#dag g.node[data-state=complete]")).to_have_count(len(ORDER_STEPS))
    assert page.evaluate("window.__sameDocument === true"), (
        "the page reloaded instead of updating live"
    )
    seen = [json.loads(s) for s in page.evaluate("window.__dagSeen")]
    done_counts = [sum(state == "complete" for state in states.values()) for states in seen]
    assert done_counts == sorted(done_counts), f"steps went back from complete: {seen}"
    partial = [c for c in done_counts if 0 < c < len(ORDER_STEPS)]
    assert partial, f"the DAG never showed a partly complete task, only {seen}"
    # In order of the dependencies: validate first, ship last.
    for states in seen:
        if states["ship"] == "complete":
            assert all(v == "complete" for v in states.values()), states
        if states["charge"] == "complete" or states["reserve"] == "complete":
            assert states["validate"] == "complete", states
    assert any(
        states["validate"] == "complete" and states["ship"] != "complete" for states in seen
    ), seen
    # The timeline and the live event list follow too.
    expect(page.locator("#timeline")).to_be_visible()
    expect(page.locator("#task-events li", has_text="task.completed").first).to_be_attached()
    wait_for_status(dashboard.engine, task_id, "complete")


def test_failed_task_shows_error_and_retry_completes_it(
    serve: Callable[..., Dashboard], page: Page, tmp_path: Path
) -> None:
    dashboard = serve(worker=True)
    flag = tmp_path / "charge-is-broken"
    flag.touch()
    task_id = create_via_api(
        dashboard, {"email": "ada@example.com", "fail": "charge", "fail_flag": str(flag)}
    )
    wait_for_status(dashboard.engine, task_id, "error")

    page.goto(dashboard.at(f"/tasks/{task_id}"))
    expect(page.locator("#task-status")).to_have_text("error")
    expect(page.locator("svg#dag g.node[data-step=charge]")).to_have_attribute(
        "data-state", "error"
    )
    error = page.locator("section.step[data-step=charge] .last-error")
    expect(error).to_contain_text("charge was told to fail")
    expect(error).to_contain_text("PermanentError")

    # Saying no to the confirmation changes nothing.
    answers = Confirmations(page, accept=False)
    page.locator("button[data-action=retry-task]").click()
    page.wait_for_timeout(500)
    assert answers.asked and answers.asked[0].startswith("confirm"), (
        f"retry did not ask first: {answers.asked}"
    )
    assert dashboard.engine.get_task(task_id).status == "error"

    flag.unlink()  # the bug is fixed; now retry for real
    answers.accept = True
    page.locator("button[data-action=retry-task]").click()
    expect(page.locator("#flash")).to_be_visible()
    expect(page.locator("#task-status")).to_have_text("complete", timeout=20_000)
    expect(page.locator("svg#dag g.node[data-step=ship]")).to_have_attribute(
        "data-state", "complete"
    )
    wait_for_status(dashboard.engine, task_id, "complete")


def test_retry_one_step(serve: Callable[..., Dashboard], page: Page, tmp_path: Path) -> None:
    dashboard = serve(worker=True)
    flag = tmp_path / "charge-is-broken"
    flag.touch()
    task_id = create_via_api(
        dashboard, {"email": "ada@example.com", "fail": "charge", "fail_flag": str(flag)}
    )
    wait_for_status(dashboard.engine, task_id, "error")
    page.goto(dashboard.at(f"/tasks/{task_id}"))
    Confirmations(page)
    flag.unlink()
    page.locator("button[data-action=retry-step][data-step=charge]").click()
    expect(page.locator("#task-status")).to_have_text("complete", timeout=20_000)
    wait_for_status(dashboard.engine, task_id, "complete")


def test_resolve_form_refuses_bad_json_then_resolves(
    serve: Callable[..., Dashboard], page: Page, watch: Watch
) -> None:
    watch.allow(422)
    dashboard = serve(worker=True)
    task_id = create_via_api(dashboard, {"email": "ada@example.com", "fail": "charge"})
    wait_for_status(dashboard.engine, task_id, "error")
    page.goto(dashboard.at(f"/tasks/{task_id}"))
    Confirmations(page)

    form = page.locator("form.resolve-form[data-step=charge]")
    form.locator("textarea[name=results]").fill('{"charge_id": "ch_1",')
    submit(form)
    form = page.locator("form.resolve-form[data-step=charge]")
    expect(form.locator(".field-error")).to_be_visible()
    expect(form.locator(".field-error")).not_to_be_empty()
    # The bad input stays in the field so it can be fixed.
    expect(form.locator("textarea[name=results]")).to_have_value('{"charge_id": "ch_1",')
    assert dashboard.engine.get_task(task_id).status == "error"

    form.locator("textarea[name=results]").fill("[1, 2]")  # JSON, but not an object
    submit(form)
    form = page.locator("form.resolve-form[data-step=charge]")
    expect(form.locator(".field-error")).to_be_visible()
    assert dashboard.engine.get_task(task_id).status == "error"
    assert any(status == 422 for status, _ in watch.seen_allowed), (
        "the refused form did not answer 422"
    )

    # Good JSON: the step is resolved by hand, its dependent `ship` runs, and the task finishes
    # (as `resolved_manually`, the engine's name for a task completed with an operator's help).
    form.locator("textarea[name=results]").fill('{"charge_id": "ch_42"}')
    submit(form)
    expect(page.locator("#flash")).to_be_visible()
    expect(page.locator("svg#dag g.node[data-step=charge]")).to_have_attribute(
        "data-state", "resolved_manually"
    )
    expect(page.locator("svg#dag g.node[data-step=ship]")).to_have_attribute(
        "data-state", "complete", timeout=20_000
    )
    expect(page.locator("#task-status")).to_have_text("resolved_manually")
    expect(page.locator("section.step[data-step=charge] .results")).to_contain_text("ch_42")
    wait_for_status(dashboard.engine, task_id, "resolved_manually")
    task = dashboard.engine.get_task(task_id)
    steps = {s.name: s for s in task.steps}
    assert steps["charge"].results == {"charge_id": "ch_42"}, steps["charge"]
    assert steps["ship"].status == "complete"


def test_cancel_from_the_page(serve: Callable[..., Dashboard], page: Page) -> None:
    dashboard = serve()  # no worker: the task waits
    task_id = create_via_api(dashboard, {"email": "ada@example.com"})
    page.goto(dashboard.at(f"/tasks/{task_id}"))
    Confirmations(page)
    page.locator("button[data-action=cancel-task]").click()
    expect(page.locator("#task-status")).to_have_text("cancelled")
    deadline = time.monotonic() + 5
    while dashboard.engine.get_task(task_id).status != "cancelled" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dashboard.engine.get_task(task_id).status == "cancelled"


@sqlite_only
def test_reset_an_open_circuit(serve: Callable[..., Dashboard], page: Page, tmp_path: Path) -> None:
    dashboard = serve(worker=True)
    engine = dashboard.engine
    engine.systems.configure("payments", failure_threshold=1, cooldown_seconds=3600)
    down = tmp_path / "payments-is-down"
    down.touch()
    task_id = create_via_api(
        dashboard, {"email": "ada@example.com", "transient": "charge", "transient_flag": str(down)}
    )
    deadline = time.monotonic() + 20
    while not any(
        s["name"] == "payments" and s["circuit_state"] == "open" for s in engine.systems.report()
    ):
        assert time.monotonic() < deadline, (
            f"the circuit of payments never opened: {engine.systems.report()}"
        )
        time.sleep(0.05)
    down.unlink()  # the system is back; its circuit stays open for an hour unless reset

    page.goto(dashboard.at("/systems"))
    row = page.locator("table#systems-table tr[data-system=payments]")
    expect(row.locator(".circuit-state")).to_contain_text("open")
    Confirmations(page)
    row.locator("button[data-action=reset-circuit]").click()
    expect(page.locator("#flash")).to_be_visible()
    expect(
        page.locator("table#systems-table tr[data-system=payments] .circuit-state")
    ).to_contain_text("closed")
    wait_for_status(engine, task_id, "complete")
    page.goto(dashboard.at("/systems/payments"))
    expect(page.locator("#circuit-history")).to_contain_text("open")
