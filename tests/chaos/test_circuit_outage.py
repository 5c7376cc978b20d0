"""Fault test (c): a dependent system fails every call for 30 s, then is healthy again.

50 tasks, retry limit 3, two worker processes, the system's circuit declared in the template
(`failure_threshold: 5, cooldown_seconds: 2, max_cooldown_seconds: 5`). Without the breaker the
steps would exhaust their three attempts within seconds; with it they wait, only probes touch the
system (their attempts given back), and every task completes once the system recovers. The circuit
opens once and closes once; the probes that fail in between reopen it (half_open -> open), which is
expected.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tasker import Tasker
from tests.chaos.support import Fleet, chain, rows, scalar, scratch_engine, wait_for
from tests.fixture_types import TemplateFile

TASKS = 50
OUTAGE_SECONDS = 30.0
RETRY_LIMIT = 3
SYSTEM = "partner_api"
COOLDOWN, MAX_COOLDOWN = 2.0, 5.0

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


@pytest.mark.timeout(180)
def test_outage_of_a_dependent_system_costs_no_task(
    chaos_url: str, engine: Tasker, template_file: TemplateFile, tmp_path: Path
) -> None:
    path = template_file(
        "partner_call",
        chain(1, "Outage", default_retry_limit=RETRY_LIMIT),
        default_dependent_system=SYSTEM,
        dependent_systems={
            SYSTEM: {
                "failure_threshold": 5,
                "cooldown_seconds": COOLDOWN,
                "max_cooldown_seconds": MAX_COOLDOWN,
            }
        },
        retry={"backoff_base_seconds": 0.2, "backoff_max_seconds": 1.0},
    )
    engine.load_templates(path)
    outage_file = tmp_path / "partner_down_until"
    outage_file.write_text("0")

    with (
        Fleet(chaos_url, path, tmp_path / "logs", concurrency=8, lease_seconds=5) as fleet,
        scratch_engine(chaos_url) as db,
    ):
        workers = [fleet.spawn(), fleet.spawn()]
        for w in workers:
            w.wait_started()
        healthy_at = time.time() + OUTAGE_SECONDS
        outage_file.write_text(repr(healthy_at))
        ids = [
            engine.create_task("chaos/partner_call", {"n": i, "outage_file": str(outage_file)}).id
            for i in range(TASKS)
        ]

        def all_done() -> bool:
            unfinished: int = scalar(
                db,
                "select count(*) from tasker_tasks where status not in "
                "('complete', 'error', 'cancelled')",
            )
            return unfinished == 0

        bound = OUTAGE_SECONDS + 60
        try:
            wait_for(all_done, bound, "every task to finish after the outage", interval=0.25)
        except AssertionError:
            raise AssertionError(f"{engine.systems.report()}\n{fleet.logs()}") from None
        assert fleet.stop_all(30) == {w.pid: 0 for w in workers}, fleet.logs()

        statuses = Counter(t.status for t in engine.get_tasks(ids))
        assert statuses == {"complete": TASKS}, statuses
        over = rows(
            db,
            "select id, attempts, retry_limit, state from tasker_steps "
            "where attempts > retry_limit or state <> 'complete'",
        )
        assert over == []
        assert scalar(db, "select max(retry_limit) from tasker_steps") == RETRY_LIMIT
        assert (
            scalar(db, "select count(*) from tasker_step_transitions where to_state = 'error'") == 0
        )
        max_attempts = scalar(db, "select max(attempts) from tasker_steps")
        executions = scalar(
            db, "select count(*) from tasker_step_transitions where to_state = 'in_progress'"
        )
        during_outage = scalar(
            db,
            "select count(*) from tasker_step_transitions where to_state = 'in_progress' "
            "and at < to_timestamp(:t)",
            t=healthy_at,
        )
        finished_at = scalar(db, "select extract(epoch from max(finished_at)) from tasker_tasks")

    history = engine.systems.circuit_history(SYSTEM)
    moves = Counter((r["from_state"], r["to_state"]) for r in history)
    assert moves[("closed", "open")] == 1, history
    assert sum(n for (_, dst), n in moves.items() if dst == "closed") == 1, history
    assert history[-1]["to_state"] == "closed" and history[-1]["reason"] == "probe succeeded"
    assert history[0]["at"].timestamp() < healthy_at <= history[-1]["at"].timestamp()
    reopened = moves[("half_open", "open")]
    assert reopened >= 1, "probes during a 30 s outage should have failed and reopened the circuit"
    # cool-downs double from 2 s and stop at 5 s
    reasons = [
        r["reason"] for r in history if (r["from_state"], r["to_state"]) == ("half_open", "open")
    ]
    assert (
        reasons[:3]
        == [
            "probe failed; next probe in 4s",
            "probe failed; next probe in 5s",
            "probe failed; next probe in 5s",
        ][: len(reasons[:3])]
    )
    row = next(r for r in engine.systems.report() if r["name"] == SYSTEM)
    assert row["circuit_state"] == "closed" and row["consecutive_failures"] == 0

    closed_after = history[-1]["at"].timestamp() - healthy_at
    print(
        f"\n[chaos c] outage {OUTAGE_SECONDS:g}s; circuit opened once, {reopened} failed probes"
        f" reopened it, closed {closed_after:.1f}s after recovery; all {TASKS} tasks complete"
        f" {float(finished_at) - healthy_at:.1f}s after recovery; {executions} executions"
        f" ({during_outage} during the outage); max attempts {max_attempts}/{RETRY_LIMIT}"
    )
