"""The overview's Retention section in a real browser, on SQLite and PostgreSQL: the policy in
force (the server's default, the templates' own, the archive), who holds the housekeeping job and
what its last pass did, or "none" and "no pass yet" on a store with no retention; and the page
still renders, saying so, when the store does not answer the report in time or fails it.

The store runs on the test clock (`tasker.testing.workflow_env`), served by the real app: tasks
finish, the clock moves 40 days, and a `HousekeepingJob` makes one pass, as a long-running
worker's would.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from playwright.sync_api import Page, expect

from tasker.api.app import create_app
from tasker.domain.errors import StoreUnavailable
from tasker.domain.retention import HousekeepingConfig, PurgePass, RetentionPolicy
from tasker.engine.housekeeping_job import HousekeepingJob
from tasker.settings import Settings
from tasker.store import workers as worker_store
from tasker.testing import WorkflowEnv, workflow_env
from tests.servers import serving
from tests.web.conftest import HANDLER

#: A template that keeps its tasks longer than the default, and its errors for good.
KEEPER = {
    "name": "keeper",
    "namespace_name": "webtest",
    "version": "1.0.0",
    "retention": {"complete": "90d", "error": "never"},
    "step_templates": [{"name": "keep", "handler_class": HANDLER}],
}
DEFAULT = RetentionPolicy.parse({"complete": "30d", "error": "10d"})
HOUSEKEEPER = "housekeeper-1"


@pytest.fixture
def env(store_url: str, web_templates: Path) -> Iterator[WorkflowEnv]:
    """The web tests' templates and KEEPER on the test's store, on the test clock."""
    (web_templates / "keeper.yaml").write_text(yaml.safe_dump(KEEPER, sort_keys=False))
    with workflow_env(templates=web_templates, database_url=store_url) as env:
        yield env


@contextmanager
def dashboard(env: WorkflowEnv, settings: Settings) -> Iterator[str]:
    """The real app over the environment's engine, served on a loopback port."""
    with serving(create_app(env.engine, settings)) as url:
        yield url


def housekeeping_pass(env: WorkflowEnv, **config: Any) -> PurgePass:
    """One pass of the housekeeping job by HOUSEKEEPER, with the default retention."""
    job = HousekeepingJob(
        env.engine.db,
        HOUSEKEEPER,
        env.engine.bus,
        [],
        HousekeepingConfig(default=DEFAULT, **config),
    )
    done = job.run()
    assert done is not None, "the housekeeping job was held by another worker"
    return done


def section(page: Page, url: str) -> None:
    response = page.goto(url + "/")
    assert response is not None and response.status == 200
    expect(page.locator("#retention")).to_have_attribute("data-retention", "ok")


def test_a_store_without_retention_shows_none_and_no_pass_yet(env: WorkflowEnv, page: Page) -> None:
    done = env.run(env.engine.create_task("webtest/order", {"email": "ada@example.com"}).id)
    assert done.status == "complete"
    with dashboard(env, Settings()) as url:
        section(page, url)
        expect(page.locator("#retention-h")).to_have_text("Retention")
        expect(page.locator("#retention-default")).to_have_text("none: finished tasks are kept")
        expect(page.locator("#retention-default [data-retention-default]")).to_have_count(0)
        expect(page.locator("#retention-archive")).to_contain_text("none")
        expect(page.locator("#retention-templates tr.empty")).to_contain_text(
            "No template declares its own retention."
        )
        expect(page.locator("#retention-holder")).to_contain_text("No worker holds it")
        expect(page.locator("#retention-holder")).to_contain_text("tasker worker")
        expect(page.locator("#retention-last-pass")).to_have_attribute(
            "data-retention-pass", "none"
        )
        expect(page.locator("#retention-last-pass")).to_contain_text("no pass yet")
        expect(page.locator("[data-retention-total]")).to_have_count(0)


def test_after_a_pass_the_section_shows_what_it_deleted_and_by_whom(
    env: WorkflowEnv, page: Page
) -> None:
    engine = env.engine
    with engine.db.write() as conn:  # a worker that will be long gone at the pass
        worker_store.announce(conn, "gone-worker", namespaces=None, concurrency=1, now=env.now())
    complete = [
        env.run(engine.create_task("webtest/order", {"email": f"c{i}@example.com"}).id)
        for i in range(2)
    ]
    failed = env.run(engine.create_task("webtest/order", {"email": "f@x.org", "fail": "charge"}).id)
    cancelled = engine.cancel_task(engine.create_task("webtest/order", {"email": "n@x.org"}).id)
    kept = env.run(engine.create_task("webtest/keeper", {}).id)  # stores KEEPER's snapshot
    assert [t.status for t in (*complete, failed, cancelled, kept)] == [
        "complete",
        "complete",
        "error",
        "cancelled",
        "complete",
    ]
    env.advance(0)
    env.advance(days=40)
    done = housekeeping_pass(env, archive="table")
    assert (dict(done.deleted), done.archived, done.workers_pruned) == (
        {"complete": 2, "error": 1},
        3,
        1,
    )

    settings = Settings(retention=DEFAULT, archive="table")
    with dashboard(env, settings) as url:
        section(page, url)
        default = page.locator("#retention-default")
        expect(default).to_have_text("complete 30d, error 10d")
        expect(default.locator("[data-retention-default=complete]")).to_have_text("complete 30d")
        expect(default.locator("[data-retention-default=error]")).to_have_text("error 10d")
        expect(page.locator("#retention-archive")).to_have_attribute(
            "data-retention-archive", "table"
        )
        keeper = page.locator("#retention-templates tr[data-retention-template='webtest/keeper']")
        expect(keeper).to_contain_text("complete 90d, error never")
        expect(page.locator("#retention-templates tbody tr")).to_have_count(1)

        holder = page.locator("#retention-holder")
        expect(holder).to_have_attribute("data-retention-holder", HOUSEKEEPER)
        expect(holder).to_contain_text(f"Held by {HOUSEKEEPER}")

        last = page.locator("#retention-last-pass")
        expect(last).to_have_attribute("data-retention-pass", "complete")
        started = done.started_at.strftime("%Y-%m-%d %H:%M:%S")
        expect(last.locator("[data-retention-started]")).to_have_text(f"{started} UTC")
        expect(last.locator("[data-retention-worker]")).to_have_text(HOUSEKEEPER)
        expect(last.locator("[data-retention-total]")).to_have_attribute(
            "data-retention-total", "3"
        )
        expect(last.locator("[data-retention-total]")).to_have_text("3")
        expect(last.locator("[data-retention-deleted=complete]")).to_have_text("complete 2")
        expect(last.locator("[data-retention-deleted=error]")).to_have_text("error 1")
        expect(last.locator("[data-retention-deleted=cancelled]")).to_have_count(0)
        expect(last.locator("[data-retention-archived]")).to_have_text("3 to table")
        expect(last.locator("[data-retention-pruned]")).to_have_text("1")
        expect(last.locator("[data-retention-complete]")).to_have_text("completed")
        expect(page.locator("[data-retention-error]")).to_have_count(0)
    assert {t.id for t in engine.get_tasks([cancelled.id, kept.id])} == {cancelled.id, kept.id}


def test_a_pass_that_failed_shows_its_error_and_a_lapsed_lease(
    env: WorkflowEnv, page: Page, tmp_path: Path
) -> None:
    env.run(env.engine.create_task("webtest/order", {"email": "ada@example.com"}).id)
    env.advance(0)
    env.advance(days=40)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the archive directory should be")
    failed = housekeeping_pass(env, archive=str(blocker))
    assert not failed.complete and failed.error is not None and failed.total == 0
    env.clock.advance(hours=1)  # the holder's lease runs out: nobody holds the job now

    with dashboard(env, Settings(retention=DEFAULT, archive=str(blocker))) as url:
        section(page, url)
        expect(page.locator("#retention-archive")).to_contain_text(str(blocker))
        holder = page.locator("#retention-holder")
        expect(holder).to_have_attribute("data-retention-holder", "")
        expect(holder).to_contain_text("No worker holds it")
        expect(holder).to_contain_text(f"{HOUSEKEEPER}'s lease ran out")
        last = page.locator("#retention-last-pass")
        expect(last).to_have_attribute("data-retention-pass", "stopped")
        expect(last.locator("[data-retention-total]")).to_have_text("0")
        expect(last.locator("[data-retention-complete]")).to_contain_text("stopped early")
        expect(page.locator("[data-retention-error]")).to_contain_text("ArchiveError")


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (TimeoutError(), "the store did not answer in time"),
        (StoreUnavailable("the connection was lost"), "the store failed to answer"),
    ],
    ids=["timeout", "store-error"],
)
def test_the_page_renders_when_the_store_does_not_give_the_report(
    env: WorkflowEnv, page: Page, monkeypatch: pytest.MonkeyPatch, error: Exception, shown: str
) -> None:
    def fails(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(env.engine.retention, "report", fails)
    with dashboard(env, Settings(retention=DEFAULT)) as url:
        response = page.goto(url + "/")
        assert response is not None and response.status == 200
        retention = page.locator("#retention")
        expect(retention).to_have_attribute("data-retention", "unavailable")
        expect(retention).to_have_text(f"retention: not available ({shown})")
        for other in ("#overview-counts", "#workers", "#systems", "#latest-failures"):
            expect(page.locator(other)).to_be_attached()
