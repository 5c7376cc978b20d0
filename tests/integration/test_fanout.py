"""Fan-out and fan-in (`foreach`, `max_parallel`, `max_items`) on both stores: instances with
their items, results in item order, per-instance retries and failures, bounded parallelism,
refused lists, a crash in the middle of an expansion, several workers, and cancellation."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from tasker import Tasker
from tasker.domain.errors import TemplateError
from tasker.store import decisions
from tests.fixture_types import LoadTemplate, MakeTasker, WriteTemplate
from tests.integration import handlers as h
from tests.integration.support import (
    instances_of,
    step,
    step_history,
    template_yaml,
    to_states,
    work_in_threads,
)

PIPELINE = [
    step("discover", "Partitions"),
    step("process", "Instance", after="discover", foreach="results.discover.partitions"),
    step("report", "Collect", after="process", handler_config={"of": "process"}),
]


def test_a_fan_out_runs_each_item_once_and_fans_in_in_item_order(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("pipeline", PIPELINE)
    task = tasker.run(tasker.create_task(ref, {"key": key, "count": 5}).id)

    assert task.status == "complete"
    group = task.step("process")
    assert group.status == "complete" and group.fanout == 5
    assert group.decision == "expanded into 5 instances"
    instances = instances_of(task, "process")
    assert [s.name for s in instances] == [f"process[{i}]" for i in range(5)]
    assert [s.item_index for s in instances] == list(range(5))
    assert all(s.status == "complete" and s.attempts == 1 for s in instances)
    assert len({s.idempotency_key for s in instances} | {group.idempotency_key}) == 6
    calls = sorted(h.calls(key, kind="instance"), key=lambda c: c["index"])
    assert [(c["index"], c["item"]) for c in calls] == [
        (i, {"name": f"p{i}", "rows": i * 10}) for i in range(5)
    ]
    # An instance reads its ancestors' results, not its siblings'.
    assert all(set(c["results"]) == {"discover"} for c in calls)
    (collected,) = h.calls(key, kind="collect")
    assert collected["got"] == [
        {"index": i, "item": {"name": f"p{i}", "rows": i * 10}} for i in range(5)
    ]
    assert group.results is not None and group.results["count"] == 5
    assert task.step("report").results == {"count": 5}
    # The dependent ran after every instance.
    report_rows = step_history(tasker, task.id, "report")
    last_instance = max(step_history(tasker, task.id, s.name)[-1]["at"] for s in instances)
    assert report_rows[1]["at"] >= last_instance


def test_an_empty_list_completes_the_fan_out_with_no_results(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("pipeline", PIPELINE)
    task = tasker.run(tasker.create_task(ref, {"key": key, "count": 0}).id)
    assert task.status == "complete"
    assert task.step("process").fanout == 0 and instances_of(task, "process") == []
    assert h.calls(key, kind="collect")[0]["got"] == []


def test_a_fan_out_over_the_context_without_parents_expands_at_creation(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "ctx",
        [
            step("each", "Instance", foreach="context.regions"),
            step("sum", "Collect", after="each", handler_config={"of": "each"}),
        ],
    )
    created = tasker.create_task(ref, {"key": key, "regions": ["eu", "us"]})
    assert [s.name for s in created.steps] == ["each", "each[0]", "each[1]", "sum"]
    assert [str(s.status) for s in created.steps] == ["pending", "ready", "ready", "pending"]
    task = tasker.run(created.id)
    assert task.status == "complete"
    assert [g["item"] for g in h.calls(key, kind="collect")[0]["got"]] == ["eu", "us"]


def test_each_instance_is_retried_on_its_own(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load(
        "flaky",
        [
            step("discover", "Partitions"),
            step(
                "process",
                "Instance",
                after="discover",
                foreach="results.discover.partitions",
                handler_config={"flaky": ["process[1]"]},
            ),
        ],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key, "count": 3}).id)
    assert task.status == "complete"
    attempts = {s.name: s.attempts for s in instances_of(task, "process")}
    assert attempts == {"process[0]": 1, "process[1]": 2, "process[2]": 1}
    assert to_states(step_history(tasker, task.id, "process[1]")) == [
        "ready",
        "in_progress",
        "waiting_retry",
        "in_progress",
        "complete",
    ]


def test_an_instance_that_fails_for_good_fails_the_task_and_a_retry_finishes_it(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("pipeline", PIPELINE)
    h.set_fault(key, "process[2]")
    task = tasker.run(tasker.create_task(ref, {"key": key, "count": 4}).id)
    assert task.status == "error"
    states = {s.name: str(s.status) for s in instances_of(task, "process")}
    assert states == {
        "process[0]": "complete",
        "process[1]": "complete",
        "process[2]": "error",
        "process[3]": "complete",
    }
    assert str(task.step("process").status) == "pending"
    assert str(task.step("report").status) == "pending"

    h.set_fault(key, "process[2]", on=False)
    tasker.retry_task(task.id)
    done = tasker.run(task.id)
    assert done.status == "complete"
    assert len(h.calls(key, kind="collect")[0]["got"]) == 4
    ran = Counter(c["step"] for c in h.calls(key, kind="instance"))
    assert ran == {"process[0]": 1, "process[1]": 1, "process[2]": 2, "process[3]": 1}


def test_max_parallel_bounds_the_instances_running_at_once(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "bounded",
        [
            step("discover", "Partitions"),
            step(
                "process",
                "Instance",
                after="discover",
                foreach="results.discover.partitions",
                max_parallel=2,
                handler_config={"sleep": 0.05},
            ),
        ],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key, "count": 6}).id, concurrency=6)
    assert task.status == "complete"
    assert task.step("process").decision == "expanded into 6 instances, at most 2 at once"
    calls = h.calls(key, kind="instance")
    assert len(calls) == 6
    events = sorted([(c["start"], 1) for c in calls] + [(c["end"], -1) for c in calls])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 2


@pytest.mark.parametrize(
    ("context", "message"),
    [
        (
            {"count": 4},
            "foreach `results.discover.partitions` gave 4 items, more than the 3 allowed; fix:"
            " split the work, or raise max_items on step 'process' (up to 100,000)",
        ),
    ],
)
def test_a_list_over_max_items_fails_the_fan_out_for_good(
    tasker: Tasker, load: LoadTemplate, key: str, context: dict[str, Any], message: str
) -> None:
    ref = load(
        "capped",
        [
            step("discover", "Partitions"),
            step(
                "process",
                "Instance",
                after="discover",
                foreach="results.discover.partitions",
                max_items=3,
            ),
        ],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key, **context}).id)
    assert task.status == "error"
    error = task.step("process").last_error
    assert error is not None and error["class"] == "FanOutError"
    assert error["message"] == message
    assert instances_of(task, "process") == [] and h.calls(key, kind="instance") == []


def test_a_foreach_that_is_no_list_fails_the_step(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "nolist",
        [step("a"), step("each", "Instance", after="a", foreach="context.regions")],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key, "regions": "eu"}).id)
    error = task.step("each").last_error
    assert error is not None
    assert error["message"] == "foreach `context.regions` must give a list, got str 'eu'"


def test_a_skipped_fan_out_skips_its_dependents_and_conditions_read_its_list(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "cond",
        [
            step("discover", "Partitions"),
            step(
                "process",
                "Instance",
                after="discover",
                foreach="results.discover.partitions",
                when="context.go",
            ),
            step("big", after="process", when="size(results.process) > 2"),
        ],
    )
    skipped = tasker.run(tasker.create_task(ref, {"key": key, "count": 3, "go": False}).id)
    assert {s.name: str(s.status) for s in skipped.steps} == {
        "discover": "complete",
        "process": "skipped",
        "big": "skipped",
    }
    small = tasker.run(tasker.create_task(ref, {"key": key, "count": 2, "go": True}).id)
    big = tasker.run(tasker.create_task(ref, {"key": key, "count": 3, "go": True}).id)
    assert str(small.step("big").status) == "skipped"
    assert str(big.step("big").status) == "complete"


def test_a_crash_in_the_middle_of_an_expansion_leaves_nothing_and_it_happens_once(
    tasker: Tasker, load: LoadTemplate, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = load("pipeline", PIPELINE)
    real = decisions._expand
    crashed: list[int] = []

    def crash_once(*args: Any, **kwargs: Any) -> bool:
        done = real(*args, **kwargs)  # instances and edges are written...
        if not crashed:
            crashed.append(1)
            raise RuntimeError("worker killed mid-expansion")  # ...and rolled back
        return done

    monkeypatch.setattr(decisions, "_expand", crash_once)
    task = tasker.run(tasker.create_task(ref, {"key": key, "count": 5}).id)
    assert crashed == [1]
    assert task.status == "complete"
    assert [s.name for s in instances_of(task, "process")] == [f"process[{i}]" for i in range(5)]
    ran = Counter(c["step"] for c in h.calls(key, kind="instance"))
    assert set(ran.values()) == {1} and len(ran) == 5


def test_two_workers_run_every_instance_exactly_once(
    make_tasker: MakeTasker, write_template: WriteTemplate, key: str
) -> None:
    path = write_template(template_yaml("wide", PIPELINE))
    producer = make_tasker()
    producer.load_templates(path)
    ids = [producer.create_task("itest/wide", {"key": key, "count": 60, "n": i}).id for i in (1, 2)]
    work_in_threads([make_tasker(), make_tasker()], concurrency=8, timeout=120)
    tasks = producer.get_tasks(ids)
    assert [t.status for t in tasks] == ["complete", "complete"]
    ran = Counter(c["idem"] for c in h.calls(key, kind="instance"))
    assert len(ran) == 120 and set(ran.values()) == {1}, "an instance ran more than once"
    for t in tasks:
        assert [len(c["got"]) for c in h.calls(key, kind="collect")] == [60, 60]
        assert all(to_states(step_history(producer, t.id, s.name)).count("complete") == 1
                   for s in instances_of(t, "process"))  # fmt: skip


def test_cancelling_a_task_cancels_its_instances(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("each", [step("each", "Instance", foreach="context.regions")])
    task = tasker.create_task(ref, {"key": key, "regions": [1, 2, 3]})
    cancelled = tasker.cancel_task(task.id)
    assert {str(s.status) for s in cancelled.steps} == {"cancelled"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"foreach": "results.nope"}, "step 'each': foreach: results.nope at line 1, column 1"),
        ({"foreach": "context.x +"}, "step 'each': foreach: Syntax error"),
        ({"max_parallel": 2}, "max_parallel and max_items bound a foreach"),
        ({"foreach": "context.x", "max_parallel": 0}, "max_parallel"),
    ],
)
def test_a_bad_fan_out_is_refused_when_the_template_loads(
    tasker: Tasker, write_template: WriteTemplate, extra: dict[str, Any], message: str
) -> None:
    path = write_template(template_yaml("bad", [step("a"), step("each", after="a", **extra)]))
    with pytest.raises(TemplateError) as caught:
        tasker.load_templates(path)
    assert "\n" not in str(caught.value) and message in str(caught.value)


def test_analytics_count_a_fan_outs_instances_under_its_step(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("counted", PIPELINE)
    tasker.run(tasker.create_task(ref, {"key": key, "count": 7}).id)
    report = tasker.insight.bottlenecks(1).model_dump()
    rows = {r["step"]: r for r in report["step_error_rates"] if r["name"] == "counted"}
    assert set(rows) == {"discover", "process", "report"}  # no process[0], process[1], ...
    # Its seven instances, and the fan-out step itself (its fan-in runs no handler).
    assert (rows["process"]["steps"], rows["process"]["completed"]) == (8, 8)
