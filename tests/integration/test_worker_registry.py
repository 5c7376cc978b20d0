"""Long-running workers list themselves in the store; one-task runs do not."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select

from tasker import Tasker
from tasker.store.schema import workers
from tasker.store.workers import PRUNE_AFTER_SECONDS
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
        listed = {w["id"]: w for w in tasker.systems.workers()}
        assert worker.id in listed
        row = listed[worker.id]
        assert (
            row["concurrency"] == 2 and row["namespaces"] == ["itest"] and row["stopped_at"] is None
        )
        assert row["pid"] > 0 and row["hostname"]
    finally:
        worker.stop()
        runner.join(timeout=10)
    assert worker.id not in {w["id"] for w in tasker.systems.workers()}


def test_running_one_task_does_not_register_a_worker(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("unlisted", [step("only")])
    assert tasker.run(tasker.create_task(ref, {"key": key}).id).status == "complete"
    assert tasker.systems.workers() == []


def test_a_starting_worker_prunes_workers_not_seen_for_a_day(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    now = datetime.now(UTC)
    long_gone = now - timedelta(seconds=PRUNE_AFTER_SECONDS + 60)
    recently = now - timedelta(seconds=PRUNE_AFTER_SECONDS - 3600)
    with tasker.db.write() as conn:
        for worker_id, seen, stopped in [
            ("vanished", long_gone, None),
            ("stopped-long-ago", long_gone, long_gone),
            ("stopped-today", recently, recently),
        ]:
            conn.execute(
                insert(workers).values(
                    id=worker_id,
                    hostname="h",
                    pid=1,
                    concurrency=1,
                    started_at=seen,
                    last_seen_at=seen,
                    stopped_at=stopped,
                    steps_run=0,
                )
            )
    ref = load("pruning", [step("only")])
    task_id = tasker.create_task(ref, {"key": key}).id
    worker = tasker.worker(concurrency=1)
    runner = threading.Thread(target=tasker.work, kwargs={"until_idle": False, "worker": worker})
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while tasker.get_task(task_id).status != "complete" and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        worker.stop()
        runner.join(timeout=10)
    with tasker.db.read() as conn:
        left = set(conn.execute(select(workers.c.id)).scalars())
    assert left == {"stopped-today", worker.id}
    assert worker.registry.pruned == 2


def test_running_one_task_prunes_nothing(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    long_gone = datetime.now(UTC) - timedelta(seconds=PRUNE_AFTER_SECONDS + 60)
    with tasker.db.write() as conn:
        conn.execute(
            insert(workers).values(
                id="vanished",
                hostname="h",
                pid=1,
                concurrency=1,
                started_at=long_gone,
                last_seen_at=long_gone,
                steps_run=0,
            )
        )
    ref = load("not_pruning", [step("only")])
    assert tasker.run(tasker.create_task(ref, {"key": key}).id).status == "complete"
    with tasker.db.read() as conn:
        assert set(conn.execute(select(workers.c.id)).scalars()) == {"vanished"}
