"""Fixtures of the browser tests: the real app served by uvicorn, an in-process worker, and
Chromium.

Chromium is Debian's package (`apt-get install chromium`, which `.ci/run` does when it is missing),
driven by Playwright for Python through `executable_path`: no browser is ever downloaded. Without it
every browser test fails at once with one clear line saying how to fix it, rather than hanging.

Every test gets a fresh browser context (1366x768) whose console errors, uncaught page errors,
failed requests and HTTP error answers are collected; the test fails at teardown if there was any it
did not declare (`watch.allow(422)` for a form that is expected to be refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import yaml

from tasker import Tasker
from tasker.api.app import create_app
from tasker.settings import Settings
from tests.servers import serving

if TYPE_CHECKING:
    from playwright.sync_api import (
        Browser,
        BrowserContext,
        ConsoleMessage,
        Page,
        Request,
        Response,
        ViewportSize,
        WebError,
    )

CHROMIUM = os.environ.get("TASKER_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1366, "height": 768}
#: Playwright's waits (clicks, expect) give up after this many ms: a broken page fails fast.
TIMEOUT_MS = 10_000

HANDLER = "tests.web.handlers:Step"
FAST_RETRY = {"backoff_base_seconds": 0.01, "backoff_max_seconds": 0.05}
ORDER_SCHEMA = {
    "type": "object",
    "required": ["email"],
    "properties": {
        "email": {"type": "string", "format": "email"},
        "amount": {"type": "number", "minimum": 0, "default": 10},
        "sleep": {"type": "number", "minimum": 0, "description": "seconds each step takes"},
        "hold": {"type": "string", "description": "steps wait while this file exists"},
        "fail": {"type": "string", "description": "the step that fails"},
        "fail_flag": {"type": "string", "description": "fail only while this file exists"},
        "transient": {"type": "string", "description": "the step whose system is down"},
        "transient_flag": {
            "type": "string",
            "description": "the system is down while this file exists",
        },
        "currency": {"type": "string", "enum": ["EUR", "USD"], "default": "EUR"},
    },
}
ORDER = {
    "name": "order",
    "namespace_name": "webtest",
    "version": "1.0.0",
    "description": "Charge and ship an order",
    "schema": ORDER_SCHEMA,
    "retry": FAST_RETRY,
    "default_dependent_system": "shop",
    "step_templates": [
        {"name": "validate", "handler_class": HANDLER},
        {
            "name": "charge",
            "handler_class": HANDLER,
            "depends_on_step": "validate",
            "dependent_system": "payments",
            "default_retry_limit": 2,
        },
        {"name": "reserve", "handler_class": HANDLER, "depends_on_steps": ["validate"]},
        {"name": "ship", "handler_class": HANDLER, "depends_on_steps": ["charge", "reserve"]},
    ],
}
PING = {
    "name": "ping",
    "namespace_name": "other",
    "version": "0.1.0",
    "step_templates": [{"name": "pong", "handler_class": HANDLER}],
}
ORDER_STEPS = ("validate", "charge", "reserve", "ship")


#: Run a test on SQLite alone: for pages whose behaviour does not depend on the store.
sqlite_only = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)


# -- the browser -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "Playwright for Python is not installed; fix: pip install -e '.[test]' (no browser"
            " download is needed: the tests drive Debian's chromium)",
            pytrace=False,
        )
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"no Chromium at {CHROMIUM}; fix: apt-get install -y chromium (.ci/run does it when it"
            " is missing) or point TASKER_TEST_CHROMIUM at a Chromium binary",
            pytrace=False,
        )
    pw = sync_playwright().start()
    try:
        try:
            chromium = pw.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000
            )
        except Exception as exc:
            pytest.fail(f"Chromium at {CHROMIUM} did not start: {exc}", pytrace=False)
        yield chromium
        chromium.close()
    finally:
        pw.stop()


@dataclass
class Watch:
    """What went wrong in a browser context: console errors, page errors, failed requests, HTTP
    errors."""

    problems: list[str] = field(default_factory=list)
    allowed: set[int] = field(default_factory=set)
    #: The HTTP errors that were allowed, so a test can check the refusal it expected did happen.
    seen_allowed: list[tuple[int, str]] = field(default_factory=list)

    def allow(self, *statuses: int) -> None:
        """Declare HTTP error answers this test expects (a refused form's 422, a forbidden action's
        403)."""
        self.allowed.update(statuses)

    def attach(self, context: BrowserContext) -> None:
        context.on("console", self._console)
        context.on("weberror", self._web_error)
        context.on("requestfailed", self._request_failed)
        context.on("response", self._response)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type not in ("error", "assert"):
            return
        text = message.text
        # Chromium logs every HTTP error answer to a subresource; the response handler judges those.
        if text.startswith("Failed to load resource: the server responded with a status of"):
            return
        self.problems.append(
            f"console {message.type} at {message.location.get('url', '?')}: {text}"
        )

    def _web_error(self, error: WebError) -> None:
        self.problems.append(f"uncaught error in the page: {error.error}")

    def _request_failed(self, request: Request) -> None:
        failure = request.failure or "?"
        # Leaving a page aborts whatever it was still loading (its event stream, a fetch, the
        # favicon): not a failure in itself. An asset refused for its type or status is caught as a
        # console error or an HTTP error answer above.
        if "ERR_ABORTED" in failure:
            return
        self.problems.append(f"request failed: {request.method} {request.url} ({failure})")

    def _response(self, response: Response) -> None:
        if response.status < 400:
            return
        where = f"{response.request.method} {response.url}"
        if response.status in self.allowed:
            self.seen_allowed.append((response.status, where))
            return
        self.problems.append(f"HTTP {response.status} for {where}")

    def check(self) -> None:
        unique = list(dict.fromkeys(self.problems))
        assert not unique, "the browser saw problems:\n  " + "\n  ".join(unique[:30])


@pytest.fixture
def watch() -> Watch:
    return Watch()


@pytest.fixture
def browser_context(browser: Browser, watch: Watch) -> Iterator[BrowserContext]:
    context = browser.new_context(
        viewport=VIEWPORT, color_scheme="light", locale="en-GB", timezone_id="UTC"
    )
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    watch.attach(context)
    try:
        yield context
    finally:
        context.close()
    watch.check()


@pytest.fixture
def page(browser_context: BrowserContext) -> Page:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    return browser_context.new_page()


# -- the engine, the server and a worker -----------------------------------------------------------


@pytest.fixture
def web_templates(tmp_path: Path) -> Path:
    folder = tmp_path / "web-templates"
    folder.mkdir()
    for filename, data in (("order.yaml", ORDER), ("ping.yaml", PING)):
        (folder / filename).write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


@pytest.fixture
def engine(make_tasker: Callable[..., Tasker], web_templates: Path) -> Tasker:
    t = make_tasker()
    t.load_templates(web_templates)
    return t


class InProcessWorker:
    """A long-running worker on its own thread and event loop, as `tasker serve --workers 1` runs
    one."""

    def __init__(self, engine: Tasker, concurrency: int = 4):
        self.engine = engine
        self.worker = engine.worker(concurrency=concurrency, poll_interval=0.05)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="web-test-worker", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self.engine.awork(worker=self.worker, until_idle=False))
        except (
            BaseException
        ) as exc:  # reported by stop(): a dead worker must fail the test, not hang it
            self.error = exc

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the in-process worker did not stop within 15 s"
        assert self.error is None, f"the in-process worker died: {self.error!r}"


@dataclass
class Dashboard:
    """The app served on a loopback port, with its engine; `api` is an HTTP client on the same
    server."""

    url: str
    engine: Tasker
    settings: Settings
    api: httpx.Client
    worker: InProcessWorker | None = None

    def at(self, path: str) -> str:
        return self.url + path


@pytest.fixture
def serve(engine: Tasker) -> Iterator[Callable[..., Dashboard]]:
    """`serve(settings=None, worker=False)`: serve the real app over `engine`, optionally with a
    worker."""
    with contextlib.ExitStack() as stack:

        def start(settings: Settings | None = None, *, worker: bool = False) -> Dashboard:
            settings = settings or Settings()
            url = stack.enter_context(serving(create_app(engine, settings)))
            api = stack.enter_context(httpx.Client(base_url=url, timeout=30))
            running = None
            if worker:
                running = InProcessWorker(engine)
                stack.callback(running.stop)  # stopped before the server and the engine close
            return Dashboard(url, engine, settings, api, running)

        yield start


@pytest.fixture
def dashboard(serve: Callable[..., Dashboard]) -> Dashboard:
    """The app with auth off and no worker."""
    return serve()
