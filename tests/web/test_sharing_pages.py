"""Priorities and rate limits on the dashboard, in a real browser: the task list shows each task's
priority, filters by it and sorts highest first; the task page shows the priority and the
fair-share key; the systems page shows a rate limit's use and its deferrals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml
from playwright.sync_api import Page, expect

from tests.web.conftest import HANDLER, Dashboard, Watch

SHARED = {
    "name": "shared",
    "namespace_name": "webtest",
    "version": "1.0.0",
    "concurrency_key": "context.tenant",
    "max_in_flight_per_key": 2,
    "dependent_systems": {"mailer": {"rate_limit": {"limit": 20, "per": "minute"}}},
    "step_templates": [{"name": "send", "handler_class": HANDLER, "dependent_system": "mailer"}],
}


def test_the_task_list_filters_and_sorts_by_priority(
    serve: Callable[..., Dashboard], page: Page, tmp_path: Path, watch: Watch
) -> None:
    dashboard = serve()
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(SHARED, sort_keys=False))
    engine = dashboard.engine
    engine.load_templates(path)
    ids = {
        level: engine.create_task("webtest/shared", {"tenant": "acme"}, priority=level).id
        for level in (3, 0, 9)
    }
    page.goto(dashboard.at("/tasks"))
    expect(page.locator(f"#tasks-table tr[data-task-id='{ids[9]}'] td.priority")).to_have_text("9")
    page.select_option("#f-sort", "priority")
    page.fill("#f-min_priority", "1")
    page.click("#task-filters button[type=submit]")
    rows = page.locator("#tasks-table tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_have_attribute("data-task-id", str(ids[9]))
    expect(rows.nth(1)).to_have_attribute("data-task-id", str(ids[3]))
    expect(page.locator("#select-matching")).to_have_count(0)  # bulk "all" has no priority filter

    watch.allow(422)
    page.goto(dashboard.at("/tasks?min_priority=high"))
    expect(page.locator("#e-min_priority")).to_contain_text("is not a priority")

    page.goto(dashboard.at(f"/tasks/{ids[9]}"))
    expect(page.locator("#task-priority")).to_have_text("9")
    expect(page.locator("#task-concurrency-key")).to_have_text("webtest/shared@1.0.0:acme")


def test_the_systems_page_shows_a_rate_limit(
    serve: Callable[..., Dashboard], page: Page, tmp_path: Path
) -> None:
    dashboard = serve()
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(SHARED, sort_keys=False))
    dashboard.engine.load_templates(path)
    page.goto(dashboard.at("/systems"))
    row = page.locator("#systems-table tr[data-system=mailer]")
    expect(row.locator(".rate-limit")).to_have_text("0 / 20/minute")
    expect(row.locator(".rate-deferrals")).to_have_text("0")
    page.goto(dashboard.at("/systems/mailer"))
    expect(page.locator(".rate-limit")).to_contain_text("0 started of 20/minute, 0 deferred")
