"""Screenshots of every page at 1366x768 over a realistic store: the checkout example's orders, most
complete, some declined (in error), some retried after transient faults, a few waiting, a worker
alive.

The tests always render and check every page; they write `docs/dashboard/<page>.png` only when
`TASKER_UPDATE_SCREENSHOTS=1` (otherwise into its temporary directory), so that running the suite
does not rewrite the committed images:

    TASKER_UPDATE_SCREENSHOTS=1 .venv/bin/python -m pytest -q tests/web/test_screenshots.py
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tasker import Tasker
from tasker.api.app import create_app
from tasker.demos.ecommerce import services
from tasker.demos.ecommerce.demo import COOLDOWN_SECONDS, SYSTEMS, generate_orders
from tasker.demos.ecommerce.faults import DECLINED_TOKEN_PREFIX, FaultSettings
from tasker.settings import Settings
from tests.servers import serving
from tests.web.conftest import VIEWPORT, InProcessWorker, Watch, sqlite_only

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = Path(services.__file__).parent / "templates"
DOCS = ROOT / "docs" / "dashboard"
ORDERS = 40
DECLINED = (3, 11, 26)


@pytest.fixture
def shop(make_tasker: Callable[..., Tasker]) -> Iterator[tuple[Tasker, dict[str, int]]]:
    """An engine with the checkout template and ORDERS orders worked until idle, plus 4 waiting
    ones."""
    engine = make_tasker(backoff_scale=0.01, concurrency=8)
    engine.load_templates(TEMPLATES)
    faults = FaultSettings(
        transient_failure_rate=0.08, max_latency_ms=5, seed=7, rate_limit_retry_after=0.2
    )
    services.configure(engine.db.writer, faults, reader=engine.db.reader, reset=True)
    for system in SYSTEMS:
        engine.systems.configure(
            system,
            cooldown_seconds=COOLDOWN_SECONDS * 0.01,
            max_cooldown_seconds=COOLDOWN_SECONDS * 0.05,
        )
    try:
        orders = generate_orders(ORDERS, seed=7)
        for i in DECLINED:
            orders[i]["payment_info"]["token"] = f"{DECLINED_TOKEN_PREFIX}_{i}"
        ids = [engine.create_task("ecommerce/process_order", order).id for order in orders]
        engine.work(until_idle=True)
        failed = [t.id for t in engine.get_tasks(ids) if t.status == "error"]
        assert failed, "no order failed: the screenshots would show no error"
        complete = [t.id for t in engine.get_tasks(ids) if t.status == "complete"]
        assert len(complete) >= ORDERS // 2, "most orders should complete"
        yield engine, {"failed": failed[0], "complete": complete[-1]}
    finally:
        services.reset_registry()


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _shoot(page: Page, folder: Path, name: str) -> None:
    page.wait_for_load_state("load")
    expect(page.locator("main#main, form#login").first).to_be_visible()
    page.wait_for_timeout(300)  # let live parts (charts, SSE) settle
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    assert _png_size(path) == (VIEWPORT["width"], VIEWPORT["height"])
    assert path.stat().st_size > 15_000, f"{name}.png is nearly empty ({path.stat().st_size} bytes)"


@sqlite_only
def test_screenshots(
    shop: tuple[Tasker, dict[str, int]], page: Page, browser: Browser, watch: Watch, tmp_path: Path
) -> None:
    engine, ids = shop
    folder = DOCS if os.environ.get("TASKER_UPDATE_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    with serving(create_app(engine, Settings())) as url:
        worker = InProcessWorker(engine)
        try:
            with page.expect_response(
                lambda r: "/api/v1/events" in r.url
            ):  # the page's stream is open
                page.goto(url + "/events?namespace=ecommerce")
            expect(page.locator("ul#event-log")).to_be_attached()
            for order in generate_orders(4, seed=99):
                engine.create_task("ecommerce/process_order", order)
            expect(page.locator("ul#event-log li").first).to_be_visible()
            page.wait_for_timeout(2000)
            _shoot(page, folder, "events")
            for name, path in (
                ("overview", "/"),
                ("tasks", "/tasks"),
                ("task", f"/tasks/{ids['failed']}"),
                ("task-complete", f"/tasks/{ids['complete']}"),
                ("templates", "/templates"),
                ("template", "/templates/ecommerce/process_order"),
                ("systems", "/systems"),
                ("system", "/systems/payment_gateway"),
                ("analytics", "/analytics?hours=24"),
            ):
                response = page.goto(url + path)
                assert response is not None and response.status == 200, (
                    f"{path}: {response and response.status}"
                )
                _shoot(page, folder, name)
        finally:
            page.goto("about:blank")  # close the page's streams before the server stops
            worker.stop()
    # The sign-in page, from a server with auth on, and the task page in dark mode.
    with serving(create_app(engine, Settings(auth_enabled=True))) as url:
        page.goto(url + "/")
        expect(page.locator("form#login")).to_be_visible()
        _shoot(page, folder, "login")
        page.goto("about:blank")
    dark = browser.new_context(
        viewport=VIEWPORT, color_scheme="dark", locale="en-GB", timezone_id="UTC"
    )
    watch.attach(dark)
    with serving(create_app(engine, Settings())) as url:
        try:
            dark_page = dark.new_page()
            dark_page.goto(url + f"/tasks/{ids['failed']}")
            _shoot(dark_page, folder, "task-dark")
        finally:
            dark.close()


@sqlite_only
def test_control_flow_screenshots(
    make_tasker: Callable[..., Tasker], page: Page, tmp_path: Path
) -> None:
    """The task pages of the stories' control flow: the daily revenue fan-out (a stack with n/N
    done, its instances grouped, the retried partition first) and the customer-success refund (a
    skipped approval, a join, a sub-workflow's badge and child link)."""
    from tasker.demos.data_pipeline.demo import DAILY
    from tasker.demos.data_pipeline.demo import TEMPLATES as PIPELINE
    from tasker.demos.team_scaling.demo import CUSTOMER_SUCCESS, refund_request, seed_world
    from tasker.demos.team_scaling.demo import TEMPLATES as TEAMS
    from tasker.demos.team_scaling.services import reset

    folder = DOCS if os.environ.get("TASKER_UPDATE_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    engine = make_tasker(backoff_scale=0.01, concurrency=8)
    engine.load_templates(PIPELINE)
    engine.load_templates(TEAMS)
    seed_world()
    try:
        daily = engine.create_task(DAILY, {"flaky_partition": 2})
        refund = engine.create_task(CUSTOMER_SUCCESS, refund_request())
        engine.work(until_idle=True)
        assert [t.status for t in engine.get_tasks([daily.id, refund.id])] == [
            "complete",
            "complete",
        ]
        with serving(create_app(engine, Settings())) as url:
            try:
                for name, task_id in (("task-fanout", daily.id), ("task-subworkflow", refund.id)):
                    response = page.goto(url + f"/tasks/{task_id}")
                    assert response is not None and response.status == 200
                    _shoot(page, folder, name)
            finally:
                page.goto("about:blank")
    finally:
        reset()
