"""Parallel steps, several workers on one store, crashed workers' leases, and a graceful stop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from tasker import Tasker
from tasker.domain.records import Outcome
from tasker.domain.states import StepState
from tasker.store import claims, completion
from tasker.store.journal import Journal
from tests.fixture_types import LoadTemplate, MakeTasker, WriteTemplate
from tests.integration import handlers as h
from tests.integration.support import (
    history,
    step,
    step_history,
    template_yaml,
    to_states,
    work_in_threads,
)

DIAMOND = [
    step("start"),
    step("left", after="start", handler_config={"sleep": 0.2}),
    step("right", after="start", handler_config={"sleep": 0.2}),
    step("join", after=["left", "right"]),
]


def _interval(key: str, name: str) -> tuple[float, float]:
    (call,) = h.calls(key, name)
    return call["start"], call["end"]


def test_independent_steps_run_in_parallel(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load("diamond", DIAMOND)
    task = tasker.run(tasker.create_task(ref, {"key": key}).id, concurrency=2)

    assert task.status == "complete"
    (l0, l1), (r0, r1) = _interval(key, "left"), _interval(key, "right")
    assert l0 < r1 and r0 < l1, "the two middle steps should overlap"
    _, s1 = _interval(key, "start")
    j0, _ = _interval(key, "join")
    assert s1 <= min(l0, r0) and max(l1, r1) <= j0
    assert set(h.calls(key, "join")[0]["results"]) == {"start", "left", "right"}


def test_concurrency_one_runs_steps_one_at_a_time(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("diamond", DIAMOND)
    task = tasker.run(tasker.create_task(ref, {"key": key}).id, concurrency=1)

    assert task.status == "complete"
    (l0, l1), (r0, r1) = _interval(key, "left"), _interval(key, "right")
    assert l1 <= r0 or r1 <= l0, "with concurrency 1 the middle steps must not overlap"


def test_two_workers_process_many_tasks_exactly_once(
    make_tasker: MakeTasker, write_template: WriteTemplate, key: str
) -> None:
    path = write_template(
        template_yaml(
            "chain3",
            [
                step("one", "Effect"),
                step("two", "Effect", after="one"),
                step("three", "Effect", after="two"),
            ],
        )
    )
    producer = make_tasker()
    producer.load_templates(path)
    ids = [producer.create_task("itest/chain3", {"key": key, "n": i}).id for i in range(50)]
    # two processes' worth of engines, templates not even loaded
    ran = work_in_threads([make_tasker(), make_tasker()], concurrency=4, timeout=90)
    assert sum(ran) == 150

    tasks = producer.get_tasks(ids)
    assert [t.status for t in tasks] == ["complete"] * 50
    assert all(s.attempts == 1 and s.status == "complete" for t in tasks for s in t.steps)
    effects = Counter(c["idem"] for c in h.calls(key, kind="effect"))
    all_steps = {s.idempotency_key for t in tasks for s in t.steps}
    assert len(all_steps) == 150
    assert set(effects) == all_steps
    assert set(effects.values()) == {1}
    calls = Counter(c["idem"] for c in h.calls(key, kind="call"))
    assert set(calls.values()) == {1}, "a step ran more than once"
    for t in tasks:
        for rows in history(producer, t.id).values():
            assert to_states(rows).count("complete") == 1
            assert to_states(rows).count("in_progress") == 1
        assert [r["to_state"] for r in producer.history.task_transitions(t.id)] == [
            "pending",
            "in_progress",
            "complete",
        ]
        # Each step saw the results of the steps before it, whichever worker ran them.
        assert [(s.results or {})["n"] for s in t.steps] == [t.context["n"]] * 3


def test_expired_lease_of_a_crashed_worker_is_reclaimed_and_its_late_completion_fenced(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("chain", [step("a"), step("b", after="a")])
    task_id = tasker.create_task(ref, {"key": key}).id
    pg = tasker.db.is_postgres

    # A worker claims step a with a short lease, then "crashes": it never heartbeats nor completes.
    journal = Journal(datetime.now(UTC), "crashed-worker")
    with tasker.db.write() as conn:
        (claimed,) = claims.claim(
            conn, journal, worker="crashed-worker", limit=1, lease_seconds=0.4, skip_locked=pg
        )
        journal.flush(conn)
    assert claimed.name == "a" and claimed.attempt == 1
    running = tasker.get_task(task_id)
    assert running.status == "in_progress" and running.step("a").status == "in_progress"

    started = time.monotonic()
    tasker.work(until_idle=True)

    task = tasker.get_task(task_id)
    assert task.status == "complete"
    a = task.step("a")
    assert a.status == "complete"
    assert a.attempts == 2  # the lost attempt counts
    assert a.results == {"step": "a", "attempt": 2, "value": "a"}
    assert [c["attempt"] for c in h.calls(key, "a")] == [2]
    assert h.calls(key, "a")[0]["start"] - started >= 0  # sanity: it ran in this work() call
    rows = step_history(tasker, task_id, "a")
    assert to_states(rows) == ["ready", "in_progress", "waiting_retry", "in_progress", "complete"]
    lost = rows[2]
    assert lost["error_class"] == "LeaseExpired"
    assert "crashed-worker" in (lost["error_message"] or "")
    assert lost["attempt"] == 1
    assert lost["at"] >= rows[1]["at"]
    assert (lost["at"] - rows[1]["at"]).total_seconds() >= 0.4  # not before the lease ran out
    assert rows[1]["worker"] == "crashed-worker" and rows[3]["worker"] != "crashed-worker"

    # The crashed worker wakes up and reports its old attempt: fenced by the claim token, nothing
    # changes.
    late = Outcome(
        step_id=claimed.step_id,
        task_id=task_id,
        claim_token=claimed.claim_token,
        attempt=claimed.attempt,
        state=StepState.COMPLETE,
        results={"from": "the crashed worker"},
    )
    journal = Journal(datetime.now(UTC), "crashed-worker")
    with tasker.db.write() as conn:
        accepted = completion.apply_outcomes(conn, journal, [late], lock_tasks=pg)[0]
        journal.flush(conn)
    assert accepted == []
    after = tasker.get_task(task_id)
    assert after.step("a").results == {"step": "a", "attempt": 2, "value": "a"}
    assert after.step("a").status == "complete" and after.status == "complete"
    assert len(step_history(tasker, task_id, "a")) == len(rows)


def test_late_completion_while_waiting_to_be_reclaimed_is_fenced(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    """The lease ran out and was reclaimed, but no worker re-ran the step yet: the late result still
    loses."""
    ref = load("chain", [step("a"), step("b", after="a")])
    task_id = tasker.create_task(ref, {"key": key}).id
    pg = tasker.db.is_postgres
    journal = Journal(datetime.now(UTC), "crashed-worker")
    with tasker.db.write() as conn:
        (claimed,) = claims.claim(
            conn, journal, worker="crashed-worker", limit=1, lease_seconds=0.05, skip_locked=pg
        )
        journal.flush(conn)
    time.sleep(0.1)
    journal = Journal(datetime.now(UTC), "reaper")
    with tasker.db.write() as conn:
        assert claims.reclaim_expired(conn, journal, skip_locked=pg) == 1
        journal.flush(conn)
    assert tasker.get_task(task_id).step("a").status == "waiting_retry"
    late = Outcome(
        step_id=claimed.step_id,
        task_id=task_id,
        claim_token=claimed.claim_token,
        attempt=claimed.attempt,
        state=StepState.COMPLETE,
        results={"from": "the crashed worker"},
    )
    journal = Journal(datetime.now(UTC), "crashed-worker")
    with tasker.db.write() as conn:
        assert completion.apply_outcomes(conn, journal, [late], lock_tasks=pg)[0] == []
        journal.flush(conn)
    assert tasker.get_task(task_id).step("a").status == "waiting_retry"
    assert tasker.get_task(task_id).step("b").status == "pending"
    task = tasker.run(task_id)
    assert task.status == "complete"
    assert (task.step("a").results or {})["attempt"] == 2


def test_lease_lost_on_the_last_attempt_fails_the_step(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("once", [step("a", default_retry_limit=1), step("b", after="a")])
    task_id = tasker.create_task(ref, {"key": key}).id
    pg = tasker.db.is_postgres
    journal = Journal(datetime.now(UTC), "crashed-worker")
    with tasker.db.write() as conn:
        claims.claim(
            conn, journal, worker="crashed-worker", limit=1, lease_seconds=0.2, skip_locked=pg
        )
        journal.flush(conn)
    tasker.work(until_idle=True)
    task = tasker.get_task(task_id)
    assert task.status == "error"
    assert task.step("a").status == "error"
    error = task.step("a").last_error
    assert error is not None and error["class"] == "LeaseExpired"
    assert h.calls(key) == []


def test_graceful_stop_lets_the_running_step_finish(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("gated", [step("a", "Gated"), step("b", after="a")])
    task_id = tasker.create_task(ref, {"key": key}).id
    worker = tasker.worker(concurrency=2)
    out: dict[str, Any] = {}

    def serve() -> None:
        try:
            out["ran"] = asyncio.run(tasker.awork(worker=worker, until_idle=False))
        except BaseException as exc:  # pragma: no cover - reported below
            out["error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert h.started(f"{key}:a").wait(10)
    worker.stop()
    time.sleep(0.2)
    assert thread.is_alive(), "the worker must wait for its running step"
    h.gate(f"{key}:a").set()
    thread.join(15)

    assert not thread.is_alive()
    assert "error" not in out
    assert out["ran"] == 1
    task = tasker.get_task(task_id)
    assert task.step("a").status == "complete"
    assert task.step("a").results == {"step": "a", "late": True}
    # It stopped claiming: the next step is ready for another worker, not started.
    assert task.step("b").status == "ready"
    assert h.calls(key, "b") == []
    assert task.status == "in_progress"
    # Another worker finishes the job.
    assert tasker.run(task_id).status == "complete"


def test_stop_of_an_idle_worker_returns(tasker: Tasker, load: LoadTemplate) -> None:
    load("one", [step("a")])
    worker = tasker.worker()
    out: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: out.setdefault("ran", tasker.work(worker=worker, until_idle=False)),
        daemon=True,
    )
    thread.start()
    time.sleep(0.2)
    assert thread.is_alive()
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert out["ran"] == 0
