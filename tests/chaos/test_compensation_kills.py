"""Fault test: SIGKILL workers while failed tasks undo their steps.

Each task charges, reserves, then fails for good; its two undos (made slow so that the kills land on
them) make an external effect idempotent by their own keys, as a refund would. Workers are killed
once a second while the undos run and replaced; every task must end `compensated`, every undo must
have made its effect exactly once, and the kills must have caught undos running.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tasker import Tasker
from tests.chaos.support import (
    HANDLERS,
    Fleet,
    libpq_url,
    make_effect_tables,
    rows,
    scalar,
    scratch_engine,
    wait_for,
)
from tests.fixture_types import TemplateFile

TASKS = 30
WORKERS = 3
KILLS = 6

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


@pytest.mark.timeout(240)
def test_sigkill_workers_while_tasks_compensate(
    chaos_url: str, engine: Tasker, template_file: TemplateFile, tmp_path: Path
) -> None:
    make_effect_tables(chaos_url)
    undo = {
        "handler_class": f"{HANDLERS}:Effect",
        "handler_config": {"sleep": [0.2, 0.6]},
        "retry_limit": 10,
    }
    path = template_file(
        "saga",
        [
            {"name": "charge", "handler_class": f"{HANDLERS}:Effect", "compensation": undo},
            {
                "name": "reserve",
                "depends_on_step": "charge",
                "handler_class": f"{HANDLERS}:Effect",
                "compensation": undo,
            },
            {"name": "ship", "depends_on_step": "reserve", "handler_class": f"{HANDLERS}:Fail"},
        ],
        retry={"backoff_base_seconds": 0.05, "backoff_max_seconds": 0.5},
    )
    engine.load_templates(path)
    ids = [engine.create_task("chaos/saga", {"n": i}).id for i in range(TASKS)]
    rng = random.Random(20261206)

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

        def undoing() -> bool:
            running: int = scalar(
                db,
                "select count(*) from tasker_steps where compensates is not null"
                " and state = 'in_progress'",
            )
            return running > 0

        wait_for(undoing, 60, "an undo to run", interval=0.02)
        caught = 0
        for _ in range(KILLS):
            live = [w for w in fleet.alive() if w.worker_id()]
            victim = rng.choice(live or fleet.alive())
            caught += int(undoing())
            fleet.kill(victim)
            fleet.spawn()
            time.sleep(1.0)

        def all_compensated() -> bool:
            left: int = scalar(
                db, "select count(*) from tasker_tasks where status <> 'compensated'"
            )
            return left == 0

        try:
            wait_for(all_compensated, 150, "every task to be compensated", interval=0.25)
        except AssertionError:
            states = rows(db, "select status, count(*) from tasker_tasks group by status")
            raise AssertionError(f"tasks by status: {states}\n{fleet.logs()}") from None
        assert set(fleet.stop_all(30).values()) == {0}, fleet.logs()

        undos = rows(
            db,
            "select s.idempotency_key, s.state, count(e.idempotency_key) from tasker_steps s"
            " left join chaos_effects e on e.idempotency_key = s.idempotency_key"
            " where s.compensates is not null group by s.idempotency_key, s.state",
        )
        assert len(undos) == TASKS * 2
        assert {(state, n) for _, state, n in undos} == {("complete", 1)}, undos
        forward = scalar(
            db,
            "select count(*) from chaos_effects e join tasker_steps s"
            " on s.idempotency_key = e.idempotency_key where s.compensates is null",
        )
        assert forward == TASKS * 2  # each charge and reservation made once, then undone once
        lost = scalar(
            db,
            "select count(*) from tasker_step_transitions t join tasker_steps s on s.id = t.step_id"
            " where s.compensates is not null and t.error_class = 'LeaseExpired'",
        )
        reruns = scalar(
            db,
            "select count(*) from (select idempotency_key from chaos_attempts"
            " where step like 'undo:%' group by idempotency_key having count(*) > 1) x",
        )
    assert [t.status for t in engine.get_tasks(ids)] == ["compensated"] * TASKS
    assert lost > 0, "the kills should have caught undos running"
    print(
        f"\n[chaos compensation] {KILLS} SIGKILLs ({caught} while undos ran); {lost} undo leases"
        f" expired, {reruns} undos re-executed; all {TASKS} tasks compensated, each undo's effect"
        " made once"
    )
