"""Fault test (b): PostgreSQL restarts in the middle of a run; the workers reconnect and finish
everything.

The shared local server is stopped (`pg_ctlcluster ... stop`, fast mode: every connection is closed
and every open transaction rolled back), left down for longer than the workers' lease, and started
again. It stays inside this one test, and the server is started again whatever happens, so that the
tests after this one find it up.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tasker import Tasker
from tests.chaos.support import (
    Fleet,
    chain,
    complete_transition_counts,
    drop_dead_pooled_connections,
    ensure_postgres_up,
    restart_postgres,
    rows,
    scalar,
    scratch_engine,
    wait_for,
)
from tests.fixture_types import TemplateFile

TASKS = 200
STEPS = 5
COMPLETION_BOUND = 90.0
#: The server stays down longer than a lease: when it is back, the workers race to reclaim each
#: other's steps while still running them, and only the claim-token fence keeps a step from
#: completing twice.
DOWN_SECONDS = 3.0
LEASE = 2.0

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def _count(db: sa.Engine, sql: str) -> int | None:
    """A count, or None while the server is not answering."""
    try:
        return int(scalar(db, sql))
    except sa.exc.OperationalError:
        return None


@pytest.mark.timeout(180)
def test_workers_survive_a_postgres_restart(
    chaos_url: str, engine: Tasker, template_file: TemplateFile, tmp_path: Path
) -> None:
    path = template_file(
        "sleepy",
        chain(STEPS, "Sleep", handler_config={"sleep": 0.02}),
        retry={"backoff_base_seconds": 0.1, "backoff_max_seconds": 1.0},
    )
    engine.load_templates(path)
    ids = [engine.create_task("chaos/sleepy", {"n": i}).id for i in range(TASKS)]
    complete_steps = "select count(*) from tasker_step_transitions where to_state = 'complete'"
    try:
        with (
            Fleet(chaos_url, path, tmp_path / "logs", concurrency=4, lease_seconds=LEASE) as fleet,
            scratch_engine(chaos_url) as db,
        ):
            workers = [fleet.spawn(), fleet.spawn()]
            for w in workers:
                w.wait_started()
            wait_for(lambda: (_count(db, complete_steps) or 0) >= 50, 60, "the run to get going")
            time.sleep(1.0)  # about two seconds into the run
            before = _count(db, "select count(*) from tasker_tasks where status = 'complete'")
            steps_before = _count(db, complete_steps)
            try:
                down_for = restart_postgres(down_seconds=DOWN_SECONDS)
            finally:
                ensure_postgres_up()
                drop_dead_pooled_connections()
            back = time.monotonic()
            steps_at_return = _count(db, complete_steps)
            wait_for(
                lambda: (_count(db, complete_steps) or 0) > (steps_at_return or 0),
                60,
                "a step to complete after the restart",
            )
            first_step_after = time.monotonic() - back

            def all_done() -> bool:
                return (
                    _count(db, "select count(*) from tasker_tasks where status <> 'complete'") == 0
                )

            try:
                wait_for(
                    all_done,
                    COMPLETION_BOUND,
                    "every task to complete after the restart",
                    interval=0.1,
                )
            except AssertionError:
                states = rows(db, "select state, count(*) from tasker_steps group by state")
                raise AssertionError(f"steps by state: {states}\n{fleet.logs()}") from None
            all_done_after = time.monotonic() - back

            assert all(w.alive() for w in workers), (
                f"a worker died with the database\n{fleet.logs()}"
            )
            assert fleet.stop_all(30) == {w.pid: 0 for w in workers}, fleet.logs()
            noticed = sum("database unavailable" in w.log() for w in workers)

            assert before is not None and before < TASKS, (
                "the restart should come in the middle of the run"
            )
            assert [t.status for t in engine.get_tasks(ids)] == ["complete"] * TASKS
            completes = complete_transition_counts(db)
            assert len(completes) == TASKS * STEPS
            assert set(completes.values()) == {1}, {k: v for k, v in completes.items() if v != 1}
            assert rows(
                db,
                "select count(*) from tasker_steps where state <> 'complete' or attempts >"
                " retry_limit",
            ) == [(0,)]
            lost = scalar(
                db, "select count(*) from tasker_step_transitions where error_class is not null"
            )
            # the workers' view of the outage: the longest time without a step completing
            stall = scalar(
                db,
                "select extract(epoch from max(gap)) from (select at - lag(at) over (order by at) "
                "as gap from tasker_step_transitions where to_state = 'complete') g",
            )
    finally:
        ensure_postgres_up()
        drop_dead_pooled_connections()

    print(
        f"\n[chaos b] server down {DOWN_SECONDS:g}s (stop to ready {down_for:.1f}s); longest pause"
        f" in step completions {float(stall):.2f}s; {before}/{TASKS} tasks and {steps_before} steps"
        f" complete before it; first step completed {first_step_after:.2f}s after the server was"
        f" back, all tasks {all_done_after:.1f}s after; {noticed}/2 workers logged the outage;"
        f" {lost} failed attempts"
    )
