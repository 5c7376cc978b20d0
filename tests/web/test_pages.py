"""Every page of the dashboard loads in Chromium with no console error, no failed request and no
request leaving the machine; the navigation works from the keyboard; the events page streams
live."""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.sync_api import Page, Request, expect

from tests.web.conftest import Dashboard, Watch, sqlite_only
from tests.web.helpers import NAV, Confirmations, create_via_api, submit, wait_for_status

#: (path, the hooks that page must show) for every page; {task}/{failed} are filled in.
PAGES = [
    (
        "/",
        [
            "#overview-counts",
            "#throughput-chart",
            "#workers",
            "#systems",
            "#latest-failures",
            "#retention",
        ],
    ),
    ("/tasks", ["form#task-filters", "table#tasks-table"]),
    ("/tasks?namespace=webtest&status=error", ["form#task-filters", "table#tasks-table"]),
    ("/tasks/{task}", ["#task-status", "svg#dag", "#timeline", "#context", "#task-events"]),
    ("/tasks/{failed}", ["#task-status", "svg#dag", "section.step[data-step=charge] .last-error"]),
    ("/templates", ["table#templates-table"]),
    (
        "/templates/webtest/order",
        ["#template-diagram", "#template-steps", "#template-schema", "form#create-task"],
    ),
    ("/templates/webtest/order?version=1.0.0", ["#template-diagram", "form#create-task"]),
    ("/systems", ["table#systems-table", "#namespace-limits"]),
    ("/systems/payments", ["#circuit-history"]),
    ("/analytics", ["form#analytics-filters", "#performance-table", "#bottlenecks"]),
    ("/analytics?hours=1&namespace=webtest", ["#performance-table", "#bottlenecks"]),
    ("/events", ["form#event-filters", "ul#event-log"]),
    ("/events?namespace=webtest&event=task.*", ["form#event-filters", "ul#event-log"]),
]


def _seed(dashboard: Dashboard) -> dict[str, int]:
    """One complete task and one task in error, run to the end in this process."""
    engine = dashboard.engine
    done = engine.create_task("webtest/order", {"email": "ada@example.com", "amount": 5}).id
    failed = engine.create_task("webtest/order", {"email": "bob@example.com", "fail": "charge"}).id
    engine.run(done)
    engine.run(failed)
    wait_for_status(engine, done, "complete")
    wait_for_status(engine, failed, "error")
    return {"task": done, "failed": failed}


@sqlite_only
def test_every_page_loads_clean(dashboard: Dashboard, page: Page) -> None:
    ids = _seed(dashboard)
    outside: list[str] = []

    def local_only(request: Request) -> None:
        if urlsplit(request.url).netloc != urlsplit(
            dashboard.url
        ).netloc and not request.url.startswith("data:"):
            outside.append(request.url)

    page.on("request", local_only)
    for path, hooks in PAGES:
        path = path.format(**ids)
        response = page.goto(dashboard.at(path))
        assert response is not None and response.status == 200, (
            f"{path}: {response and response.status}"
        )
        page.wait_for_load_state("load")
        expect(page.locator("nav#nav"), path).to_be_visible()
        expect(page.locator("main#main"), path).to_be_visible()
        expect(page.locator("h1").first, path).not_to_be_empty()
        expect(page.locator("#auth-off-banner"), path).to_be_visible()
        for name in NAV:
            expect(
                page.locator(f"nav#nav a[data-nav={name}]"), f"{path}: nav {name}"
            ).to_have_count(1)
        for hook in hooks:
            expect(page.locator(hook).first, f"{path}: {hook}").to_be_attached()
    assert not outside, f"requests left the machine: {outside}"


@sqlite_only
def test_pages_show_the_store(dashboard: Dashboard, page: Page) -> None:
    ids = _seed(dashboard)
    page.goto(dashboard.at("/"))
    expect(page.locator("#overview-counts [data-count=complete]")).to_contain_text("1")
    expect(page.locator("#overview-counts [data-count=error]")).to_contain_text("1")
    failure = page.locator(f"#latest-failures a[href$='/tasks/{ids['failed']}']").first
    expect(failure).to_be_visible()
    failure.click()
    expect(page).to_have_url(dashboard.at(f"/tasks/{ids['failed']}"))
    expect(page.locator("#task-status")).to_have_text("error")
    expect(page.locator("section.step[data-step=charge] .last-error")).to_contain_text(
        "charge was told to fail"
    )

    page.goto(dashboard.at("/tasks"))
    expect(page.locator(f"tr[data-task-id='{ids['task']}'] td.status")).to_have_text("complete")
    expect(page.locator(f"tr[data-task-id='{ids['failed']}'] td.status")).to_have_text("error")

    page.goto(dashboard.at("/templates"))
    expect(page.locator("table#templates-table")).to_contain_text("order")
    expect(page.locator("table#templates-table")).to_contain_text("ping")
    page.goto(dashboard.at("/templates/webtest/order"))
    for step in ("validate", "charge", "reserve", "ship"):
        expect(page.locator("#template-steps")).to_contain_text(step)
    prefilled = page.locator("form#create-task textarea[name=context]").input_value()
    assert '"currency"' in prefilled and '"EUR"' in prefilled, (
        f"context not prefilled with defaults: {prefilled}"
    )

    page.goto(dashboard.at("/systems"))
    expect(
        page.locator("table#systems-table tr[data-system=payments] .circuit-state")
    ).to_be_visible()


@sqlite_only
def test_navigation_by_keyboard(dashboard: Dashboard, page: Page) -> None:
    page.goto(dashboard.at("/"))
    for name in NAV:
        link = page.locator(f"nav#nav a[data-nav={name}]")
        link.focus()
        expect(link).to_be_focused()
        page.keyboard.press("Enter")
        page.wait_for_load_state("load")
        expect(page.locator("main#main")).to_be_visible()
    expect(page).to_have_url(dashboard.at("/events"))
    # Tab reaches the navigation from the top of a page (a skip link may come first).
    page.goto(dashboard.at("/tasks"))
    for _ in range(5):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.closest('nav#nav') !== null"):
            break
    else:
        raise AssertionError("five Tab presses never reached the navigation")


@sqlite_only
def test_events_page_streams_live(dashboard: Dashboard, page: Page) -> None:
    with page.expect_response(lambda r: "/api/v1/events" in r.url):  # the page's stream is open
        page.goto(dashboard.at("/events?namespace=webtest"))
    expect(page.locator("ul#event-log")).to_be_attached()
    page.evaluate("window.__sameDocument = true")
    task_id = create_via_api(dashboard, {"email": "live@example.com"})
    created = page.locator("ul#event-log li", has_text="task.created").filter(has_text=str(task_id))
    expect(created.first).to_be_visible()
    # Another namespace is filtered out.
    create_via_api(dashboard, {}, template="other/ping")
    page.wait_for_timeout(1000)
    expect(page.locator("ul#event-log li", has_text="other")).to_have_count(0)
    assert page.evaluate("window.__sameDocument === true"), (
        "the events page reloaded instead of streaming"
    )


@sqlite_only
def test_create_task_form_shows_schema_violations_then_creates(
    dashboard: Dashboard, page: Page, watch: Watch
) -> None:
    watch.allow(422)
    page.goto(dashboard.at("/templates/webtest/order"))
    Confirmations(page)
    form = page.locator("form#create-task")
    field = form.locator("textarea[name=context]")
    field.fill('{"email": 42, "amount": -1}')
    submit(form)
    form = page.locator("form#create-task")
    errors = form.locator(".field-error")
    expect(errors).to_be_visible()
    expect(errors).to_contain_text("email")
    expect(errors).to_contain_text("amount")
    field.fill("{not json")
    submit(form)
    expect(page.locator("form#create-task .field-error")).to_be_visible()
    assert dashboard.engine.listing.page().tasks == [], "a refused form created a task"
    assert any(status == 422 for status, _ in watch.seen_allowed), (
        "the refused form did not answer 422"
    )

    page.locator("form#create-task textarea[name=context]").fill(
        '{"email": "new@example.com", "amount": 7}'
    )
    submit(page.locator("form#create-task"))
    created = dashboard.engine.listing.page().tasks
    assert len(created) == 1 and created[0].context["email"] == "new@example.com", created
    assert created[0].context["currency"] == "EUR", "the schema's default was not applied"
    expect(page.locator("#flash")).to_be_visible()


@sqlite_only
def test_dark_mode_follows_the_system(dashboard: Dashboard, page: Page) -> None:
    background = "getComputedStyle(document.body).backgroundColor"
    text = "getComputedStyle(document.body).color"

    def luminance(rgb: str) -> float:
        r, g, b = (int(v) for v in rgb[rgb.index("(") + 1 : rgb.index(")")].split(",")[:3])
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    page.emulate_media(color_scheme="light")
    page.goto(dashboard.at("/"))
    light = luminance(page.evaluate(background)), luminance(page.evaluate(text))
    page.emulate_media(color_scheme="dark")
    dark = luminance(page.evaluate(background)), luminance(page.evaluate(text))
    assert light[0] > light[1] + 100, (
        f"light mode: dark text on a light background expected, got {light}"
    )
    assert dark[0] + 100 < dark[1], (
        f"dark mode: light text on a dark background expected, got {dark}"
    )
