"""Long-running workers list themselves in the store; one-task runs do not."""

from __future__ import annotations

import threading
import time

from tasker import Tasker
from tests.fixture_types import LoadTemplate
from tests.integration.support import step


def test_a_long_running_worker_is_listed_while_it_runs_and_marked_stopped_after(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("listed", [step("only")])
    task_id = tasker.create_task(ref, {"key": key}).id
    worker = tasker.worker(concurrency=2, namespaces=["itest"])
    runner = threading.Thread(target=tasker.work, kwargs={"until_idle": False, "worker": worker})
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while tasker.get_task(task_id).status != "complete" and time.monotonic() < deadline:
            time.sleep(0.02)
        listed = {w["id"]: w for w in tasker.workers()}
        assert worker.id in listed
        row = listed[worker.id]
        assert (
            row["concurrency"] == 2 and row["namespaces"] == ["itest"] and row["stopped_at"] is None
        )
        assert row["pid"] > 0 and row["hostname"]
    finally:
        worker.stop()
        runner.join(timeout=10)
    assert worker.id not in {w["id"] for w in tasker.workers()}


def test_running_one_task_does_not_register_a_worker(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("unlisted", [step("only")])
    assert tasker.run(tasker.create_task(ref, {"key": key}).id).status == "complete"
    assert tasker.workers() == []
