"""Fault test: a worker paused (SIGSTOP) past its lease while it runs a step, then resumed
(SIGCONT).

Another worker reclaims the step when the lease runs out, runs it again and completes the task. The
paused worker wakes up with a finished handler and a stale claim: it must not overwrite the step,
must not complete it a second time, and must go on working normally.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tasker import Tasker
from tests.chaos.support import HANDLERS, Fleet, rows, scratch_engine, wait_for
from tests.fixture_types import TemplateFile

LEASE = 2.0
SLOW = 5.0  # the paused worker's execution of the step, well past its lease

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


@pytest.mark.timeout(120)
def test_a_paused_worker_cannot_overwrite_a_step_completed_elsewhere(
    chaos_url: str, engine: Tasker, template_file: TemplateFile, tmp_path: Path
) -> None:
    path = template_file(
        "paused",
        [
            {"name": "s1", "handler_class": f"{HANDLERS}:SlowOnce"},
            {
                "name": "s2",
                "handler_class": f"{HANDLERS}:Sleep",
                "depends_on_step": "s1",
                "handler_config": {"sleep": 0.01},
            },
        ],
        retry={"backoff_base_seconds": 0.05, "backoff_max_seconds": 0.2},
    )
    engine.load_templates(path)

    with (
        Fleet(chaos_url, path, tmp_path / "logs", concurrency=2, lease_seconds=LEASE) as fleet,
        scratch_engine(chaos_url) as db,
    ):
        a = fleet.spawn()
        a_id = a.wait_started()
        task_id = engine.create_task("chaos/paused", {"dir": str(tmp_path), "slow": SLOW}).id
        s1 = engine.get_task(task_id).step("s1")
        runs = tmp_path / f"{s1.id}.runs"
        wait_for(runs.exists, 30, "the first worker to start the step")
        began = time.monotonic()
        fleet.pause(a, db)
        try:
            b = fleet.spawn()
            b_id = b.wait_started()
            wait_for(
                lambda: engine.get_task(task_id).status == "complete",
                30,
                "the second worker to reclaim the step and complete the task",
            )
            reclaimed_in = time.monotonic() - began
            before = engine.get_task(task_id).step("s1")
        finally:
            a.signal(signal.SIGCONT)
        # the paused worker's handler returns SLOW seconds after it began; give it two heartbeats
        # more
        time.sleep(max(0.0, began + SLOW + 2 * LEASE / 3 + 0.5 - time.monotonic()))

        after = engine.get_task(task_id).step("s1")
        assert after.status == "complete"
        assert after.results == before.results == {"step": "s1", "pid": b.pid, "attempt": 2}
        assert (
            after.attempts == 2
        )  # the paused worker's attempt was lost (LeaseExpired), the second one ran
        history = [r for r in engine.history.step_transitions(task_id) if r["step_id"] == s1.id]
        assert [
            (r["from_state"], r["to_state"], r["worker"])
            for r in history
            if r["to_state"] == "complete"
        ] == [("in_progress", "complete", b_id)]
        (expired,) = [r for r in history if r["error_class"] == "LeaseExpired"]
        assert a_id in (expired["error_message"] or "")
        assert runs.read_text().split() == [str(a.pid), str(b.pid)]
        assert rows(
            db,
            "select count(*) from tasker_step_transitions where to_state = 'complete' "
            "and step_id = :s",
            s=s1.id,
        ) == [(1,)]

        # the woken worker is healthy: alone again, it runs the next task
        assert a.alive(), fleet.logs()
        b.signal(signal.SIGTERM)
        assert b.wait(30) == 0, fleet.logs()
        second = engine.create_task("chaos/paused", {"dir": str(tmp_path), "slow": 0, "n": 2}).id
        wait_for(
            lambda: engine.get_task(second).status == "complete",
            30,
            "the resumed worker to run a new task",
        )
        assert (engine.get_task(second).step("s1").results or {})["pid"] == a.pid
        assert fleet.stop_all(30) == {a.pid: 0}, fleet.logs()

    print(
        f"\n[chaos d] worker paused past its {LEASE:g}s lease: step reclaimed and its task"
        f" completed by another worker {reclaimed_in:.1f}s after the pause (including that worker's"
        " start-up); the late result of the paused worker was discarded"
    )
