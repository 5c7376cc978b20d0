"""The daily revenue rollup on both stores: a fan-out over partitions found at run time, a flaky
partition that recovers on its own, max_parallel, and a fan-in whose figures are recomputed from
the warehouse."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import date
from typing import Any

import pytest

from tasker import Tasker
from tasker.demos.data_pipeline import warehouse
from tasker.demos.data_pipeline.__main__ import main
from tasker.demos.data_pipeline.demo import DAILY, TEMPLATES
from tasker.demos.data_pipeline.partitions import day_aggregate

START, END = date(2024, 11, 1), date(2024, 11, 30)


@pytest.fixture
def engine(make_tasker: Callable[..., Tasker]) -> Tasker:
    t = make_tasker(backoff_scale=0.05, concurrency=8)
    t.load_templates(TEMPLATES)
    return t


def _orders(seed: int, count: int) -> list[dict[str, Any]]:
    return warehouse.orders(seed, count, START, END, customer_count=60, product_count=20)


@pytest.mark.parametrize(("seed", "orders"), [(42, 250), (7, 12)])
def test_the_rollup_fans_out_over_the_days_found_and_fans_in_in_day_order(
    engine: Tasker, seed: int, orders: int
) -> None:
    context = {"seed": seed, "volume": {"orders": orders}}
    task = engine.run(engine.create_task(DAILY, context).id)
    assert task.status == "complete", [(s.name, s.status, s.last_error) for s in task.steps]

    records = _orders(seed, orders)
    days = sorted({str(o["placed_on"]) for o in records})
    fan = task.step("aggregate_partition")
    assert fan.fanout == len(days)  # decided by the data, not the template
    instances = task.instances(fan)
    assert [s.item_index for s in instances] == list(range(len(days)))
    aggregates = [s.results for s in instances]
    assert [a["day"] for a in aggregates if a] == days
    for a in aggregates:
        assert a is not None
        assert {k: v for k, v in a.items() if k != "attempt"} == day_aggregate(records, a["day"])
    report = task.step("build_report").results
    assert report is not None
    completed = [o for o in records if o["status"] == "completed"]
    assert report["partitions"] == len(days)
    assert report["revenue_cents"] == sum(o["total_cents"] for o in completed)
    assert report["orders"] == len(completed)


def test_the_flaky_partition_is_retried_alone_and_four_run_at_a_time(engine: Tasker) -> None:
    task = engine.run(engine.create_task(DAILY, {"flaky_partition": 5}).id)
    assert task.status == "complete"
    instances = task.instances(task.step("aggregate_partition"))
    assert Counter(s.attempts for s in instances) == {1: len(instances) - 1, 2: 1}
    assert instances[5].attempts == 2
    report, flaky = task.step("build_report").results, instances[5].results
    assert report is not None and flaky is not None
    assert report["retried_partitions"] == [flaky["day"]]

    # max_parallel: 4, read from the engine's own record of each attempt.
    spans = []
    for s in instances:
        rows = [r for r in engine.history.step_transitions(task.id) if r["step_id"] == s.id]
        for i, r in enumerate(rows):
            if r["to_state"] == "in_progress":
                spans.append((r["at"], rows[i + 1]["at"]))
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    running = peak = 0
    for _, delta in edges:
        running += delta
        peak = max(peak, running)
    assert peak <= 4


def test_the_demo_command_runs_the_rollup(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--daily", "--flaky-partition", "1"]) == 0
    out = capsys.readouterr().out
    assert "complete" in out and "expanded into 30 instances, at most 4 at once" in out
    assert "aggregate_partition[1]: complete after 2 attempts" in out
