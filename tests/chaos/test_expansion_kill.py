"""Fault test: SIGKILL the worker while it expands a fan-out.

A fan-out step's instances are written in the transaction that completes its parent
(docs/architecture.md, "Fan-out is rows and edges"). The test waits until PostgreSQL shows that
worker's backend running the expansion statement, kills the worker there, and starts another: the
killed transaction must leave nothing behind, the parent's lease runs out and it runs again, the
second expansion writes every instance once, each instance's effect happens once under its own
idempotency key, and the fan-in reads every result, in item order.
"""

from __future__ import annotations

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

ITEMS = 20_000
#: The expansion statement (`store.decisions._EXPAND_PG`) as pg_stat_activity shows it running.
EXPANDING = "%jsonb_to_recordset%INSERT INTO tasker_steps%"

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


@pytest.mark.timeout(300)
def test_a_worker_killed_mid_expansion_leaves_nothing_and_the_retry_expands_once(
    chaos_url: str, engine: Tasker, template_file: TemplateFile, tmp_path: Path
) -> None:
    make_effect_tables(chaos_url)
    path = template_file(
        "expand",
        [
            {"name": "discover", "handler_class": f"{HANDLERS}:Items"},
            {
                "name": "each",
                "depends_on_step": "discover",
                "foreach": "results.discover.items",
                "max_items": 100_000,
                "handler_class": f"{HANDLERS}:Effect",
            },
            {
                "name": "fan_in",
                "depends_on_step": "each",
                "handler_class": f"{HANDLERS}:CountResults",
            },
        ],
        retry={"backoff_base_seconds": 0.05, "backoff_max_seconds": 0.5},
    )
    engine.load_templates(path)
    task_id = engine.create_task("chaos/expand", {"count": ITEMS}).id

    with (
        Fleet(
            chaos_url,
            path,
            tmp_path / "logs",
            concurrency=16,
            lease_seconds=2,
            env={"CHAOS_PG_URL": libpq_url(chaos_url)},
        ) as fleet,
        scratch_engine(chaos_url) as db,
    ):
        victim = fleet.spawn()
        victim.wait_started()
        deadline = time.monotonic() + 60
        caught = False
        while time.monotonic() < deadline and not caught:
            caught = bool(
                scalar(
                    db,
                    "select count(*) from pg_stat_activity where state = 'active'"
                    " and query like :q",
                    q=EXPANDING,
                )
            )
            if not caught:
                time.sleep(0.005)
        assert caught, f"the expansion was never seen running\n{fleet.logs()}"
        fleet.kill(victim)
        killed_at = time.monotonic()

        def expansion_gone() -> bool:  # the killed backend rolled back
            running: int = scalar(
                db, "select count(*) from pg_stat_activity where query like :q", q=EXPANDING
            )
            return running == 0

        wait_for(expansion_gone, 30, "the killed worker's transaction to end", interval=0.05)
        assert scalar(db, "select count(*) from tasker_steps where instance_of is not null") == 0
        assert scalar(db, "select state from tasker_steps where name = 'discover'") == "in_progress"

        fleet.spawn()

        def done() -> bool:
            return bool(scalar(db, "select status from tasker_tasks") == "complete")

        wait_for(done, 240, "the task to complete after the kill", interval=0.25)
        elapsed = time.monotonic() - killed_at
        assert set(fleet.stop_all(30).values()) == {0}, fleet.logs()

        instances = rows(
            db,
            "select count(*), count(distinct item_index), min(item_index), max(item_index)"
            " from tasker_steps where instance_of is not null",
        )
        assert instances == [(ITEMS, ITEMS, 0, ITEMS - 1)]
        completes = rows(
            db,
            "select count(*), count(distinct t.step_id) from tasker_step_transitions t"
            " join tasker_steps s on s.id = t.step_id"
            " where s.instance_of is not null and t.to_state = 'complete'",
        )
        assert completes == [(ITEMS, ITEMS)], "an instance completed twice, or not at all"
        effects = rows(db, "select count(*), count(distinct idempotency_key) from chaos_effects")
        assert effects == [(ITEMS, ITEMS)]
        discover = rows(
            db,
            "select t.to_state, t.error_class from tasker_step_transitions t"
            " join tasker_steps s on s.id = t.step_id where s.name = 'discover' order by t.id",
        )
        assert ("waiting_retry", "LeaseExpired") in discover, discover
        assert [s for s, _ in discover].count("complete") == 1

    task = engine.get_task(task_id)
    assert task.step("fan_in").results == {"n": ITEMS, "in_order": True}
    print(
        f"\n[chaos expansion] killed mid-expansion of {ITEMS:,} items; the retry expanded once and"
        f" the task completed {elapsed:.1f}s after the kill"
    )
