"""Fault test (a): SIGKILL one of four worker processes every second for ten seconds, restarting
each.

Every task must complete, no step may be `complete` twice in the transitions, and each step's side
effect, made idempotent by the step's idempotency key as a real handler would, must exist exactly
once. Delivery is at-least-once per attempt, so the raw executions (`chaos_attempts`) may exceed one
per step: a worker killed between the effect and the completion commit runs the step again; their
count is reported.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tasker import Tasker
from tests.chaos.support import (
    Fleet,
    chain,
    complete_transition_counts,
    libpq_url,
    make_effect_tables,
    rows,
    scalar,
    scratch_engine,
    wait_for,
)
from tests.fixture_types import TemplateFile

TASKS = 500
STEPS = 5
WORKERS = 4
KILL_SECONDS = 10
COMPLETION_BOUND = 120.0
#: Lost attempts count against the retry limit (docs/architecture.md, "Decisions"); a step can be
#: caught by several kills.
RETRY_LIMIT = 10

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


@pytest.mark.timeout(240)
def test_sigkill_a_worker_every_second(
    chaos_url: str, engine: Tasker, template_file: TemplateFile, tmp_path: Path
) -> None:
    make_effect_tables(chaos_url)
    # Steps take 50-150 ms so that the fleet is busy for the whole kill window and every kill lands
    # on running steps; with a few ms per step the 2,500 steps would be done before the third kill.
    path = template_file(
        "effects",
        chain(
            STEPS, "Effect", default_retry_limit=RETRY_LIMIT, handler_config={"sleep": [0.05, 0.15]}
        ),
        retry={"backoff_base_seconds": 0.05, "backoff_max_seconds": 0.5},
    )
    engine.load_templates(path)
    ids = [engine.create_task("chaos/effects", {"n": i}).id for i in range(TASKS)]
    rng = random.Random(20240601)
    kills: list[tuple[float, int, str | None]] = []

    with (
        Fleet(
            chaos_url,
            path,
            tmp_path / "logs",
            concurrency=8,
            lease_seconds=2,
            env={"CHAOS_PG_URL": libpq_url(chaos_url)},
        ) as fleet,
        scratch_engine(chaos_url) as db,
    ):
        for _ in range(WORKERS):
            fleet.spawn()
        for w in fleet.processes:
            w.wait_started()
        t0 = time.monotonic()
        for i in range(1, KILL_SECONDS + 1):  # one kill a second for ten seconds
            time.sleep(max(0.0, t0 + i - time.monotonic()))
            live = fleet.alive()
            started = [w for w in live if w.worker_id()]
            victim = rng.choice(started or live)
            fleet.kill(victim)
            kills.append((time.monotonic() - t0, victim.pid, victim.worker_id()))
            # its replacement (spawned from this thread: see support's PDEATHSIG note)
            fleet.spawn()
        done_at_last_kill = scalar(
            db, "select count(*) from tasker_tasks where status = 'complete'"
        )

        def all_done() -> bool:
            pending: int = scalar(
                db, "select count(*) from tasker_tasks where status <> 'complete'"
            )
            return pending == 0

        try:
            wait_for(
                all_done,
                COMPLETION_BOUND - (time.monotonic() - t0),
                "every task to complete",
                interval=0.25,
            )
        except AssertionError:
            states = rows(db, "select state, count(*) from tasker_steps group by state")
            raise AssertionError(
                f"not all tasks completed; steps by state: {states}\n{fleet.logs()}"
            ) from None
        elapsed = time.monotonic() - t0
        exits = fleet.stop_all(30)
        assert set(exits.values()) == {0}, fleet.logs()

        tasks = rows(db, "select status, count(*) from tasker_tasks group by status")
        assert tasks == [("complete", TASKS)]
        assert [t.status for t in engine.get_tasks(ids)] == ["complete"] * TASKS

        # no step complete twice, none missing
        completes = complete_transition_counts(db)
        assert len(completes) == TASKS * STEPS
        assert set(completes.values()) == {1}, {k: v for k, v in completes.items() if v != 1}

        # the side effect of every step exactly once, under that step's idempotency key
        step_keys = {r[0] for r in rows(db, "select idempotency_key from tasker_steps")}
        assert len(step_keys) == TASKS * STEPS
        effects = rows(
            db, "select idempotency_key, count(*) from chaos_effects group by idempotency_key"
        )
        assert {k for k, _ in effects} == step_keys
        assert {n for _, n in effects} == {1}

        executions = scalar(db, "select count(*) from chaos_attempts")
        reexecuted = scalar(
            db,
            "select count(*) from (select idempotency_key from chaos_attempts "
            "group by idempotency_key having count(*) > 1) x",
        )
        lease_expired = scalar(
            db, "select count(*) from tasker_step_transitions where error_class = 'LeaseExpired'"
        )
        max_attempts = scalar(db, "select max(attempts) from tasker_steps")
        bad = rows(
            db,
            "select id, attempts, retry_limit, state from tasker_steps "
            "where attempts > retry_limit or state <> 'complete'",
        )
        assert bad == []
        # every complete transition carries the attempt the step ended with
        assert (
            scalar(
                db,
                "select count(*) from tasker_step_transitions t join tasker_steps s on s.id ="
                " t.step_id where t.to_state = 'complete' and t.attempt <> s.attempts",
            )
            == 0
        )

    assert len(kills) == KILL_SECONDS
    assert executions >= TASKS * STEPS
    assert lease_expired > 0, "the kills should have caught running steps"
    hit_running = sum(1 for _, _, wid in kills if wid)
    print(
        f"\n[chaos a] {len(kills)} SIGKILLs ({hit_running} of running workers, the others of"
        f" replacements still starting); all {TASKS} tasks complete {elapsed:.1f}s after the kills"
        f" began ({done_at_last_kill} complete at the last kill); {executions} executions for"
        f" {TASKS * STEPS} steps: {executions - TASKS * STEPS} re-executions over {reexecuted}"
        f" steps; {lease_expired} leases expired; max attempts {max_attempts}"
    )
