"""The tasks page over 100,000 tasks (inserted in bulk, see bulk.py), on SQLite and PostgreSQL: it
pages forward and back by keyset, filters by template, status and key (every filter in the URL), and
bulk-cancels selected rows."""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

from playwright.sync_api import Page, expect

from tests.web.bulk import bulk_tasks
from tests.web.conftest import Dashboard
from tests.web.helpers import Confirmations, row_ids, set_field, submit, wait_for_status

MANY = 100_000
ORDERS = 60
PAGE = 50
#: Seconds a page of the list may take to load, with the whole browser round trip: generous, since
#: the benchmark measures the real figures, but an OFFSET walk or a COUNT(*) per page at this size
#: shows.
SLOW = 5.0


def _fill(dashboard: Dashboard) -> dict[str, list[int]]:
    """60 orders made by the engine (the oldest; 2 run to complete), then 100,000 pings inserted in
    bulk."""
    engine = dashboard.engine
    orders = engine.create_tasks(
        "webtest/order", [{"email": f"o{i}@example.com", "amount": i} for i in range(ORDERS)]
    )
    for task_id in orders[:2]:
        engine.run(task_id)
        wait_for_status(engine, task_id, "complete")
    return {"orders": orders, "pings": bulk_tasks(engine, "other/ping", MANY)}


def _load(page: Page, action: Callable[[], object]) -> float:
    started = time.monotonic()
    with page.expect_navigation():
        action()
    page.wait_for_load_state("load")
    return time.monotonic() - started


def test_tasks_page_with_100k_tasks(dashboard: Dashboard, page: Page) -> None:
    ids = _fill(dashboard)
    newest = sorted(ids["orders"] + ids["pings"], reverse=True)

    started = time.monotonic()
    page.goto(dashboard.at("/tasks"))
    assert time.monotonic() - started < SLOW
    pages = [row_ids(page)]
    assert pages[0] == newest[:PAGE], "the first page is not the newest tasks, newest first"
    expect(page.locator("a#prev-page")).to_have_count(0)

    # Forward three pages, then back two: each page is the next slice of ids, with no gap or
    # overlap.
    for n in range(1, 4):
        took = _load(page, page.locator("a#next-page").click)
        assert took < SLOW, f"page {n + 1} took {took:.1f} s"
        pages.append(row_ids(page))
        assert pages[n] == newest[n * PAGE : (n + 1) * PAGE], (
            f"page {n + 1} is not the next {PAGE} tasks"
        )
        assert "after=" in page.url, page.url
    bookmark = page.url
    for n in (2, 1):
        took = _load(page, page.locator("a#prev-page").click)
        assert took < SLOW, f"going back to page {n + 1} took {took:.1f} s"
        assert row_ids(page) == pages[n], f"going back did not show page {n + 1} again"
    _load(page, page.locator("a#prev-page").click)
    assert row_ids(page) == pages[0]
    expect(page.locator("a#prev-page")).to_have_count(0)
    # A page is a bookmark: its URL alone shows it again.
    page.goto(bookmark)
    assert row_ids(page) == pages[3]

    # Filter by template through the form: 60 orders, 50 then 10, then no next page.
    page.goto(dashboard.at("/tasks"))
    form = page.locator("form#task-filters")
    set_field(form, "namespace", "webtest")
    set_field(form, "template", "order")
    took = _load(page, lambda: submit(form))
    assert took < SLOW, f"filtering by template took {took:.1f} s"
    query = parse_qs(urlsplit(page.url).query)
    assert query.get("template") == ["order"] and query.get("namespace") == ["webtest"], page.url
    orders = sorted(ids["orders"], reverse=True)
    assert row_ids(page) == orders[:PAGE]
    _load(page, page.locator("a#next-page").click)
    assert row_ids(page) == orders[PAGE:]
    expect(page.locator("a#next-page")).to_have_count(0)
    assert parse_qs(urlsplit(page.url).query).get("template") == ["order"], "paging lost the filter"
    _load(page, page.locator("a#prev-page").click)
    assert row_ids(page) == orders[:PAGE]

    # Filter by status: the two complete orders, found among 100,000 pending tasks.
    page.goto(dashboard.at("/tasks?status=complete"))
    assert sorted(row_ids(page)) == sorted(ids["orders"][:2])
    for task_id in ids["orders"][:2]:
        expect(page.locator(f"tr[data-task-id='{task_id}'] td.status")).to_have_text("complete")
    expect(page.locator("a#next-page")).to_have_count(0)

    # Filter by idempotency key: exactly one task.
    target = ids["pings"][12_345]
    key = dashboard.engine.get_task(target).idempotency_key
    page.goto(dashboard.at("/tasks"))
    set_field(page.locator("form#task-filters"), "key", key)
    _load(page, lambda: submit(page.locator("form#task-filters")))
    assert row_ids(page) == [target]
    # ... or by correlation id, through the URL.
    order = dashboard.engine.get_task(ids["orders"][7])
    page.goto(dashboard.at(f"/tasks?key={order.correlation_id}"))
    assert row_ids(page) == [order.id]

    # Bulk: select two pending pings on the first page and cancel them.
    page.goto(dashboard.at("/tasks?namespace=other&status=pending"))
    chosen = row_ids(page)[:2]
    for task_id in chosen:
        page.locator(f"input[type=checkbox][name=ids][value='{task_id}']").check()
    Confirmations(page)
    _load(page, page.locator("button[data-action=bulk-cancel]").click)
    expect(page.locator("#flash")).to_be_visible()
    for task_id in chosen:
        assert dashboard.engine.get_task(task_id).status == "cancelled"
    assert dashboard.engine.get_task(newest[5]).status == "pending", (
        "bulk cancel touched an unselected task"
    )
