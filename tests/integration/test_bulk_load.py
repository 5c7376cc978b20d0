"""A bulk retry of 10,000 failed tasks while two worker processes run, on PostgreSQL.

Every task fails on a handler that fails until a flag is flipped (a file deleted); after the
flip, one `engine.bulk.retry` re-arms them all, chunk by chunk, the two `tasker worker` processes
pick each chunk up as it commits, and all 10,000 complete. Running the retry again changes
nothing. The workers are real processes (as in production), so the retry does not share an
interpreter with them; the template is one step, so the test measures the bulk path, not the
workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chaos.support import Fleet
from tests.conftest import STORES
from tests.fixture_types import MakeTasker, WriteTemplate
from tests.integration.support import template_yaml

pytestmark = pytest.mark.slow
MANY = 10_000
HANDLER = "tests.integration.bulk_handlers:BrokenWhileFlagged"


def _wait(what: str, done: Callable[[], bool], timeout: float, fleet: Fleet) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert fleet.alive(), f"the workers died:\n{fleet.logs()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{fleet.logs()}"
        time.sleep(0.2)


@pytest.mark.parametrize(
    "store_url", ["postgresql"] if "postgresql" in STORES else [], indirect=True
)
def test_bulk_retry_of_10000_failed_tasks_while_two_workers_run(
    store_url: str, make_tasker: MakeTasker, write_template: WriteTemplate, tmp_path: Path
) -> None:
    flag = tmp_path / "dependency-is-broken"
    flag.touch()
    step = {
        "name": "work",
        "handler_class": HANDLER,
        "default_retryable": False,
        "handler_config": {"flag": str(flag)},
    }
    path = write_template(template_yaml("mass", [step], namespace="bulkload"), "mass.yaml")
    engine = make_tasker(templates=path)
    with Fleet(store_url, path, tmp_path / "logs", concurrency=32, poll_interval=0.05) as fleet:
        for _ in range(2):
            fleet.spawn()
        started = time.monotonic()
        engine.create_tasks("bulkload/mass", [{"n": i} for i in range(MANY)], chunk_size=1000)
        failed = engine.bulk.filter(template="bulkload/mass", status="error")
        _wait("10,000 failures", lambda: engine.bulk.count("retry", failed) == MANY, 90, fleet)
        ran = time.monotonic()

        flag.unlink()  # the fix is deployed
        report = engine.bulk.retry(failed, reason="dependency fixed", chunk=500)
        retried = time.monotonic()
        assert (report.matched, report.changed, report.skipped) == (MANY, MANY, 0)

        complete = engine.bulk.filter(template="bulkload/mass", status="complete")
        _wait(
            "10,000 completions",
            lambda: engine.bulk.count("purge", complete) == MANY,
            90,
            fleet,
        )
        finished = time.monotonic()
        assert engine.bulk.retry(failed).matched == 0  # idempotent: nothing left to retry
        assert all(code == 0 for code in fleet.stop_all().values()), fleet.logs()
    print(
        f"\ncreate and fail {ran - started:.1f} s, bulk retry {retried - ran:.1f} s,"
        f" then complete {finished - retried:.1f} s"
    )
