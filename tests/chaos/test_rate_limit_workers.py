"""Four worker processes against a dependent system limited to 50 starts a second (PostgreSQL):
the service sees at most 50 calls in any one-second window, every step runs exactly once, and no
attempt is spent on waiting for a slot.

The calls are counted where a service would count them: each handler writes a row when it starts
(`handlers.Effect`, `chaos_attempts.at` stamped by the database), not from the engine's records.
"""

from __future__ import annotations

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

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

TASKS = 400
LIMIT = 50


def busiest_second(times: list[float]) -> int:
    """The most starts in any window of one second (each window opens at a start)."""
    times = sorted(times)
    most, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        most = max(most, i - j + 1)
    return most


@pytest.mark.timeout(240)
def test_four_workers_never_start_more_than_the_limit_in_any_second(
    chaos_url: str, engine: Tasker, template_file: TemplateFile, tmp_path: Path
) -> None:
    make_effect_tables(chaos_url)
    path = template_file(
        "mailing",
        [
            {
                "name": "send",
                "handler_class": f"{HANDLERS}:Effect",
                "handler_config": {"sleep": [0.005, 0.02]},
                "dependent_system": "mailer",
            }
        ],
        dependent_systems={"mailer": {"rate_limit": {"limit": LIMIT, "per": "second"}}},
    )
    engine.load_templates(path)
    engine.create_tasks("chaos/mailing", [{"n": n} for n in range(TASKS)])
    env = {"CHAOS_PG_URL": libpq_url(chaos_url)}
    with (
        scratch_engine(chaos_url) as db,
        Fleet(chaos_url, path, tmp_path / "logs", concurrency=16, env=env) as fleet,
    ):
        for _ in range(4):
            fleet.spawn()
        for w in fleet.processes:
            w.wait_started()
        wait_for(
            lambda: (
                scalar(db, "select count(*) from tasker_tasks where status = 'complete'") == TASKS
                or None
            ),
            120,
            f"all {TASKS} tasks to complete\n{fleet.logs()}",
        )
        calls = [
            float(r[0])
            for r in rows(db, "select extract(epoch from at) from chaos_attempts order by at")
        ]
        attempts = rows(db, "select attempts, count(*) from tasker_steps group by attempts")
        deferrals = scalar(
            db, "select rate_deferrals from tasker_dependent_systems where name = 'mailer'"
        )
        pids = scalar(db, "select count(distinct pid) from chaos_attempts")

    assert len(calls) == TASKS  # each step ran once: nothing lost, nothing repeated
    assert [tuple(r) for r in attempts] == [(1, TASKS)]  # no attempt spent on a deferral
    assert busiest_second(calls) <= LIMIT
    assert calls[-1] - calls[0] >= (TASKS / LIMIT) - 1.5  # the limit held the pace
    assert deferrals > 0
    assert pids == 4  # all four workers took part


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most of these (start, end) intervals open at one time."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = most = 0
    for _, d in edges:
        running += d
        most = max(most, running)
    return most


@pytest.mark.timeout(240)
def test_four_workers_keep_each_tenant_within_its_share(
    chaos_url: str, engine: Tasker, template_file: TemplateFile, tmp_path: Path
) -> None:
    """A tenant's burst of 300 tasks and another's 10, three steps in flight per tenant at most
    across four worker processes: the small tenant finishes while the burst is still running."""
    make_effect_tables(chaos_url)
    path = template_file(
        "tenanted",
        [
            {
                "name": "work",
                "handler_class": f"{HANDLERS}:Effect",
                "handler_config": {"sleep": [0.02, 0.04]},
            }
        ],
        concurrency_key="context.tenant",
        max_in_flight_per_key=3,
    )
    engine.load_templates(path)
    engine.create_tasks("chaos/tenanted", [{"tenant": "big", "n": n} for n in range(300)])
    engine.create_tasks("chaos/tenanted", [{"tenant": "small", "n": n} for n in range(10)])
    env = {"CHAOS_PG_URL": libpq_url(chaos_url)}
    with (
        scratch_engine(chaos_url) as db,
        Fleet(chaos_url, path, tmp_path / "logs", concurrency=16, env=env) as fleet,
    ):
        for _ in range(4):
            fleet.spawn()
        wait_for(
            lambda: (
                scalar(db, "select count(*) from tasker_tasks where status = 'complete'") == 310
                or None
            ),
            180,
            f"all 310 tasks to complete\n{fleet.logs()}",
        )
        # As the service saw them: each handler's start and the end of its work (the engine's
        # own stamps are its transactions' start times, earlier than their commits).
        spans = rows(
            db,
            "select t.context->>'tenant', extract(epoch from a.at), extract(epoch from e.at)"
            " from chaos_attempts a join chaos_effects e using (idempotency_key)"
            " join tasker_steps s on s.idempotency_key = a.idempotency_key"
            " join tasker_tasks t on t.id = s.task_id",
        )
        pids = scalar(db, "select count(distinct pid) from chaos_attempts")
    by_tenant: dict[str, list[tuple[float, float]]] = {"big": [], "small": []}
    for tenant, start, end in spans:
        by_tenant[tenant].append((float(start), float(end)))
    assert most_at_once(by_tenant["big"]) <= 3
    assert most_at_once(by_tenant["small"]) <= 3
    small_done = max(e for _, e in by_tenant["small"])
    assert len([s for s, _ in by_tenant["big"] if s > small_done]) >= 200
    assert pids >= 2
