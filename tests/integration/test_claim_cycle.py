"""A claim with nothing to store leaves what the general path leaves, and only an idle worker that
owns its loop claims on it.

On PostgreSQL such a cycle is one statement that also writes the claims' transition rows and reads
the claimed tasks (`pg_cycle._claim_only`, sent with its `COMMIT`: one round trip); on SQLite it is
the driver-level cycle of `sqlite_cycle`. Each is run against the general path on twin tasks in
the same state, and every row and record they produce is compared.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tasker import Tasker
from tasker.domain.errors import UnknownTemplateError
from tasker.domain.records import ClaimedStep
from tasker.engine.cycle import CyclePlan, CycleResult, Cycles
from tests.fixture_types import LoadTemplate
from tests.integration.support import step, template_yaml


def _set_steps(tasker: Tasker, task_id: int) -> None:
    """`a` completed with results, `b` (its child) ready, `c` waiting for its second attempt and
    due, `d` (after `b`) pending: the task itself still `pending`, as no claim started it."""
    past = datetime.now(UTC) - timedelta(seconds=5)
    with tasker.db.write() as conn:
        updates = {
            "a": "state = 'complete', results = '{\"x\": 1}', attempts = 1, finished_at = :at",
            "b": "state = 'ready', pending_parents = 0, run_at = :at",
            "c": "state = 'waiting_retry', attempts = 1, claim_token = 1, run_at = :at",
        }
        for name, assignments in updates.items():
            conn.execute(
                sa.text(
                    f"UPDATE tasker_steps SET {assignments} WHERE task_id = :t AND name = :n"
                ).bindparams(at=past, t=task_id, n=name)
            )


def _claimed(claims: list[ClaimedStep]) -> list[tuple[Any, ...]]:
    return sorted(
        (
            c.name,
            c.attempt,
            c.retry_limit,
            c.claim_token,
            c.dependent_system,
            {k: v for k, v in c.context.items() if k != "key"},  # the twins' keys differ
            c.results,
            c.from_state,
            sorted(c.step_ids),
        )
        for c in claims
    )


def _rows(tasker: Tasker, task_id: int) -> dict[str, Any]:
    with tasker.db.read() as conn:
        steps = conn.execute(
            sa.text(
                "SELECT name, state, attempts, claim_token, lease_owner IS NOT NULL"
                " FROM tasker_steps WHERE task_id = :t ORDER BY name"
            ),
            {"t": task_id},
        ).all()
        moves = conn.execute(
            sa.text(
                "SELECT s.name, x.from_state, x.to_state, x.attempt, x.worker, x.error_class,"
                " x.duration_ms FROM tasker_step_transitions x JOIN tasker_steps s"
                " ON s.id = x.step_id WHERE x.task_id = :t ORDER BY s.name, x.id"
            ),
            {"t": task_id},
        ).all()
        task = conn.execute(
            sa.text("SELECT status, started_at IS NOT NULL FROM tasker_tasks WHERE id = :t"),
            {"t": task_id},
        ).one()
        task_moves = conn.execute(
            sa.text(
                "SELECT from_state, to_state, worker, reason FROM tasker_task_transitions"
                " WHERE task_id = :t ORDER BY id"
            ),
            {"t": task_id},
        ).all()
    return {
        "steps": [tuple(r) for r in steps],
        "moves": [tuple(r) for r in moves],
        "task": tuple(task),
        "task_moves": [tuple(r) for r in task_moves],
    }


def _events(result: CycleResult) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, payload in result.events:
        shown = {k: v for k, v in payload.items() if k not in ("task_id", "step_id")}
        out.append((name, shown))
    return sorted(out, key=repr)


@pytest.mark.parametrize("room", [1, 5])
def test_a_claim_with_nothing_to_store_leaves_what_the_general_path_leaves(
    tasker: Tasker, load: LoadTemplate, key: str, room: int
) -> None:
    ref = load(
        "claim_only",
        [
            step("a"),
            step("b", after="a"),
            step("c", default_retry_limit=3),
            step("d", after="b"),
        ],
    )
    tasker.bus.subscribe(lambda event: None, "*")  # so that cycles collect events
    seen: dict[bool, tuple[Any, ...]] = {}
    for direct in (False, True):
        task_id = tasker.create_task(ref, {"key": f"{key}-{direct}", "n": [1, 2]}).id
        _set_steps(tasker, task_id)
        worker = tasker.worker(task_id=task_id, worker_id="w-claims", concurrency=room)
        result = worker.cycles.run(CyclePlan([], claim_limit=room, scan=True), direct=direct)
        assert all(c.task_id == task_id for c in result.claimed)
        rows = _rows(tasker, task_id)
        seen[direct] = (
            _claimed(result.claimed),
            result.scanned_full,
            result.settled,
            _events(result),
            rows,
        )
    general, driver = seen[False], seen[True]
    assert driver == general
    claimed = general[0]
    assert len(claimed) == min(room, 2)
    if room == 5:  # both due steps: `b` with its parent's results, `c` on its second attempt
        by_name = {c[0]: c for c in claimed}
        assert by_name["b"][6] == {"a": {"x": 1}} and by_name["b"][1] == 1
        assert by_name["c"][1] == 2 and by_name["c"][3] == 2
        assert general[4]["task"] == ("in_progress", True)
        assert general[4]["task_moves"][-1][:2] == ("pending", "in_progress")
        assert general[1] is False  # room left over: the queue was read to its end


def test_a_claim_that_finds_nothing_writes_nothing(tasker: Tasker) -> None:
    worker = tasker.worker(worker_id="w-empty")
    result = worker.cycles.run(CyclePlan([], claim_limit=4, scan=True))
    assert (result.claimed, result.settled, result.scanned_full) == ([], [], False)
    with tasker.db.read() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM tasker_step_transitions")).scalar() == 0


def _worker_threads(
    tasker: Tasker, load: LoadTemplate, key: str, monkeypatch: pytest.MonkeyPatch, own_loop: bool
) -> list[tuple[str, bool, int]]:
    """The threads a long-running worker's cycles ran on, with whether each stored outcomes and
    how many attempts were running meanwhile. `slow` runs beside `a` and `b`, so their outcomes are
    stored while it runs (its second leaves a wide margin for a busy machine); its own is stored
    when nothing runs."""
    seen: list[tuple[str, bool, int]] = []
    run = Cycles.run
    ref = load(
        f"cycle_threads_{own_loop}",
        [step("a"), step("b", after="a"), step("slow", handler_config={"sleep": 1.0})],
    )
    worker = tasker.worker(concurrency=4, own_loop=own_loop)

    def recording(self: Cycles, plan: CyclePlan, **kw: Any) -> Any:
        running = len(worker.attempts.running)
        seen.append((threading.current_thread().name, bool(plan.done), running))
        return run(self, plan, **kw)

    monkeypatch.setattr(Cycles, "run", recording)
    done = threading.Event()

    def serve() -> None:
        tasker.work(worker=worker, until_idle=False)
        done.set()

    threading.Thread(target=serve, daemon=True).start()
    time.sleep(0.3)  # idle now: it polled and found nothing
    task_id = tasker.create_task(ref, {"key": f"{key}-{own_loop}"}).id
    deadline = time.monotonic() + 10
    while tasker.get_task(task_id).status != "complete" and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.stop()
    assert done.wait(10)
    assert tasker.get_task(task_id).status == "complete"
    return seen


@pytest.mark.parametrize("own_loop", [False, True], ids=["shared-loop", "own-loop"])
def test_only_a_worker_that_owns_its_loop_and_runs_nothing_cycles_on_it(
    tasker: Tasker, load: LoadTemplate, key: str, monkeypatch: pytest.MonkeyPatch, own_loop: bool
) -> None:
    """A `tasker worker` process (`own_loop`) on PostgreSQL runs a cycle on its loop when no
    attempt is running: an idle claim, or the outcomes of a batch whose handlers have all finished
    (no thread hops in a step's path). A cycle while an attempt runs, every cycle on SQLite, and
    every cycle of a worker on a shared loop keep to the database thread, so no cycle holds a loop
    that serves anything else."""
    seen = _worker_threads(tasker, load, key, monkeypatch, own_loop)
    beside = [name for name, stores, running in seen if stores and running]
    assert beside and all(_on_db(name) for name in beside), seen  # a and b, while slow runs
    alone = [name for name, _, running in seen if not running]
    stored_alone = [name for name, stores, running in seen if stores and not running]
    assert stored_alone, seen  # slow's outcome
    if own_loop and tasker.db.is_postgres:
        assert not any(_on_db(name) for name in alone), seen
    else:
        assert all(_on_db(name) for name in alone), seen


def _on_db(thread_name: str) -> bool:
    return thread_name.startswith("tasker-db")


def test_the_workers_connections_plan_on_indexes_whatever_the_statistics(
    pg_url: str, tmp_path: Path
) -> None:
    """A never-analyzed store (a new deployment, or a server without autovacuum) would give the
    workers' cached generic plans sequential scans of the steps and tasks, kept for the life of
    the connection; their connections turn sequential scans off (and JIT, which the inflated
    costs would trigger), so the claim reads by index whatever the statistics say."""
    from tasker.store import pg_cycle

    (tmp_path / "chain.yaml").write_text(
        template_yaml("chain", [step("a"), step("b", after="a"), step("c", after="b")])
    )
    engine = Tasker(pg_url, migrate=True, templates=tmp_path)
    try:
        engine.create_tasks("itest/chain", [{"key": f"k{i}"} for i in range(300)])
        with engine.db.direct() as conn:
            raw = conn.driver_connection
            shown = {
                name: raw.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[union-attr]
                for name in ("plan_cache_mode", "enable_seqscan", "jit")
            }
            assert shown == {
                "plan_cache_mode": "force_generic_plan",
                "enable_seqscan": "off",
                "jit": "off",
            }
            now = datetime.now(UTC)
            params = {
                "now": now,
                "worker": "w",
                "lease_until": now,
                "take": 0,
                "scan_limit": 32,
                "namespaces": [],
                "scope_tasks": [],
                "check_expired": True,
            }
            plan = raw.execute(  # type: ignore[union-attr]
                "EXPLAIN (COSTS OFF) " + pg_cycle._CLAIM_ONLY[(False, False)], params
            ).fetchall()
            conn.rollback()
        scanned = ("Seq Scan on tasker_steps", "Seq Scan on tasker_tasks")
        assert [line for (line,) in plan if any(s in line for s in scanned)] == []
        with engine.db.read() as conn:  # an operator's reads keep the planner's own judgement
            assert conn.exec_driver_sql("SHOW enable_seqscan").scalar() == "on"
    finally:
        engine.close()


@pytest.mark.parametrize("limited", [False, True], ids=["driver-cycle", "general-cycle"])
def test_a_worker_learns_a_template_it_was_not_started_with(
    make_tasker: Any, write_template: Any, limited: bool
) -> None:
    """A task created by another process from a template this worker never loaded: the cycle that
    claims its first step reads the stored snapshot, and the worker runs all of it. Both cycles do
    it: the driver-level one (after its commit, on a reader) and the general one (a system limit
    on record sends the claim there)."""
    creator = make_tasker()
    creator.load_templates(
        write_template(template_yaml("elsewhere", [step("a"), step("b", after="a")]))
    )
    if limited:
        creator.systems.configure("default", max_in_flight=5)
    task_id = creator.create_task("itest/elsewhere", {"key": f"learn-{limited}"}).id
    worker = make_tasker()
    with pytest.raises(UnknownTemplateError):
        worker.registry.get("itest/elsewhere")  # not loaded in this process
    worker.work(until_idle=True)
    task = worker.get_task(task_id)
    assert task.status == "complete"
    assert [s.status for s in task.steps] == ["complete", "complete"]
