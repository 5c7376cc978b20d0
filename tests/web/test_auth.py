"""The dashboard with the API's auth on: no session leads to the sign-in page; a read-only key sees
no action and a forged action answers 403; an action without (or with a wrong) CSRF token is
refused; logout ends the session; the session cookie never authorises an API write."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tasker.settings import Settings
from tests.web.conftest import Dashboard, Watch, sqlite_only
from tests.web.helpers import Confirmations, csrf_token, post_from_page, submit, wait_for_status

READ_ONLY = [
    "tasker.task:index",
    "tasker.task:show",
    "tasker.workflow_step:index",
    "tasker.workflow_step:show",
    "tasker.handler:index",
    "tasker.handler:show",
    "tasker.health_status:index",
    "tasker.metrics:index",
    "tasker.analytics:index",
    "tasker.events:index",
]
PAGES = [
    "/",
    "/tasks",
    "/tasks/{failed}",
    "/templates",
    "/templates/webtest/order",
    "/systems",
    "/analytics",
    "/events",
]


@pytest.fixture
def secured(serve: Callable[..., Dashboard]) -> tuple[Dashboard, dict[str, str], int]:
    """An app with auth on, an admin and a read-only key, and one task in error."""
    dashboard = serve(Settings(auth_enabled=True))
    engine = dashboard.engine
    keys = {
        name: engine.keys.create(name, grants)[1]
        for name, grants in (("admin", ["*"]), ("viewer", READ_ONLY))
    }
    failed = engine.create_task("webtest/order", {"email": "bob@example.com", "fail": "charge"}).id
    engine.run(failed)
    wait_for_status(engine, failed, "error")
    return dashboard, keys, failed


def sign_in(page: Page, dashboard: Dashboard, key: str, path: str = "/") -> None:
    page.goto(dashboard.at(path))
    expect(page.locator("form#login")).to_be_visible()
    page.locator("form#login input[name=credential]").fill(key)
    submit(page.locator("form#login"))
    expect(page.locator("form#logout")).to_be_attached()


@sqlite_only
def test_no_session_leads_to_sign_in(
    secured: tuple[Dashboard, dict[str, str], int], page: Page, watch: Watch
) -> None:
    dashboard, keys, failed = secured
    for path in PAGES:
        path = path.format(failed=failed)
        response = page.goto(dashboard.at(path))
        assert response is not None and response.status == 200, (
            f"{path}: {response and response.status}"
        )
        assert page.url.split("?")[0] == dashboard.at("/login"), (
            f"{path} showed {page.url}, not the sign-in page"
        )
        expect(page.locator("form#login input[name=credential]")).to_be_visible()
        expect(page.locator("#auth-off-banner")).to_have_count(0)
        expect(page.locator("button[data-action]")).to_have_count(0)
    # The API answers 401 without a credential, whatever the dashboard does.
    assert dashboard.api.get(f"/api/v1/tasks/{failed}").status_code == 401

    # A wrong key is refused on the form itself.
    watch.allow(401, 403)
    page.locator("form#login input[name=credential]").fill("tk_00000000_" + "x" * 43)
    submit(page.locator("form#login"))
    expect(page.locator("#login-error")).to_be_visible()
    expect(page.locator("form#logout")).to_have_count(0)
    assert all(where.startswith("POST") for _, where in watch.seen_allowed), watch.seen_allowed

    # The right key leads back to the page first asked for.
    page.goto(dashboard.at(f"/tasks/{failed}"))
    page.locator("form#login input[name=credential]").fill(keys["admin"])
    submit(page.locator("form#login"))
    expect(page).to_have_url(dashboard.at(f"/tasks/{failed}"))
    expect(page.locator("#task-status")).to_have_text("error")


@sqlite_only
def test_session_cookie_is_httponly_and_strict(
    secured: tuple[Dashboard, dict[str, str], int], page: Page, browser_context: BrowserContext
) -> None:
    dashboard, keys, _ = secured
    sign_in(page, dashboard, keys["viewer"])
    cookies = [c for c in browser_context.cookies() if c["value"]]
    assert cookies, "signing in set no cookie"
    for cookie in cookies:
        assert cookie["httpOnly"], cookie
        assert cookie["sameSite"] == "Strict", cookie
    assert keys["viewer"] not in str(cookies), "the key itself is stored in the cookie"
    assert page.evaluate("document.cookie") == "", "the session cookie is readable from JavaScript"


@sqlite_only
def test_read_only_key_sees_no_action_and_forged_action_is_403(
    secured: tuple[Dashboard, dict[str, str], int], page: Page, watch: Watch
) -> None:
    dashboard, keys, failed = secured
    sign_in(page, dashboard, keys["viewer"])
    for path in PAGES:
        path = path.format(failed=failed)
        response = page.goto(dashboard.at(path))
        assert response is not None and response.status == 200, (
            f"{path}: {response and response.status}"
        )
        expect(page.locator("main#main")).to_be_visible()
        expect(page.locator("main#main button[data-action]"), path).to_have_count(0)
        expect(page.locator("form.resolve-form"), path).to_have_count(0)
        expect(page.locator("form#create-task"), path).to_have_count(0)
        expect(page.locator("input[type=checkbox][name=ids]"), path).to_have_count(0)
    # Forged actions with the session cookie and a valid CSRF token: 403, and nothing changes.
    watch.allow(403)
    token = csrf_token(page)
    forged = {
        f"/tasks/{failed}/retry": {},
        f"/tasks/{failed}/cancel": {},
        f"/tasks/{failed}/steps/charge/retry": {},
        f"/tasks/{failed}/steps/charge/resolve": {"results": "{}"},
        "/tasks/bulk": {"action": "retry", "ids": str(failed)},
        "/templates/webtest/order/tasks": {
            "version": "1.0.0",
            "context": '{"email": "eve@example.com"}',
        },
        "/systems/payments/reset": {},
    }
    for path, fields in forged.items():
        status = post_from_page(page, path, {"csrf_token": token, **fields})
        assert status == 403, f"a read-only key POSTing {path} got {status}, not 403"
    task = dashboard.engine.get_task(failed)
    assert task.status == "error"
    assert next(s for s in task.steps if s.name == "charge").status == "error"
    assert dashboard.engine.listing.page(limit=10).tasks[0].id == failed, "a task was created"


@sqlite_only
def test_action_without_csrf_token_is_refused(
    secured: tuple[Dashboard, dict[str, str], int], page: Page, watch: Watch
) -> None:
    dashboard, keys, failed = secured
    sign_in(page, dashboard, keys["admin"], f"/tasks/{failed}")
    page.goto(dashboard.at(f"/tasks/{failed}"))
    Confirmations(page)
    watch.allow(403)
    token = csrf_token(page)
    for fields in ({}, {"csrf_token": ""}, {"csrf_token": token[::-1]}, {"csrf_token": "forged"}):
        status = post_from_page(page, f"/tasks/{failed}/retry", fields)
        assert status == 403, f"a retry with {fields or 'no token'} got {status}, not 403"
    assert dashboard.engine.get_task(failed).status == "error"

    # The same button, with its hidden token removed by a hostile page: refused.
    page.locator("form:has(button[data-action=retry-task]) input[name=csrf_token]").evaluate(
        "e => e.remove()"
    )
    page.locator("button[data-action=retry-task]").click()
    page.wait_for_load_state("load")
    assert any(
        where.startswith("POST") and where.endswith(f"/tasks/{failed}/retry")
        for _, where in watch.seen_allowed
    ), watch.seen_allowed
    assert dashboard.engine.get_task(failed).status == "error"

    # With the token the admin's retry goes through (the step fails again: it is still told to).
    page.goto(dashboard.at(f"/tasks/{failed}"))
    before = dashboard.engine.get_task(failed)
    assert post_from_page(page, f"/tasks/{failed}/retry", {"csrf_token": csrf_token(page)}) == 303
    after = dashboard.engine.get_task(failed)
    assert after.status in ("pending", "in_progress"), after.status
    assert before.status == "error"


@sqlite_only
def test_cookie_never_authorises_an_api_write(
    secured: tuple[Dashboard, dict[str, str], int], page: Page, watch: Watch
) -> None:
    dashboard, keys, failed = secured
    sign_in(page, dashboard, keys["admin"])
    read = page.evaluate("async (p) => (await fetch(p)).status", f"/api/v1/tasks/{failed}")
    assert read == 200, "the session cookie does not let the dashboard read the API"
    watch.allow(401, 403)
    write = page.evaluate(
        "async (p) => (await fetch(p, {method: 'POST'})).status", f"/api/v1/tasks/{failed}/retry"
    )
    assert write in (401, 403), f"an API write with the cookie alone got {write}"
    assert dashboard.engine.get_task(failed).status == "error"


@sqlite_only
def test_logout(secured: tuple[Dashboard, dict[str, str], int], page: Page) -> None:
    dashboard, keys, _ = secured
    sign_in(page, dashboard, keys["admin"])
    submit(page.locator("form#logout"))
    expect(page.locator("form#login")).to_be_visible()
    page.goto(dashboard.at("/tasks"))
    expect(page.locator("form#login")).to_be_visible()
    expect(page.locator("form#logout")).to_have_count(0)
