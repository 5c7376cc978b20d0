"""Fair share per key on both stores (`tasker.domain.fairness`): a template's
`concurrency_key` / `max_in_flight_per_key` caps the steps in flight per key across workers, so a
tenant's burst does not starve another tenant; a bad key is refused in one line."""

from __future__ import annotations

import threading

import pytest

from tasker import Tasker
from tasker.domain.errors import TaskerInputError, TemplateError
from tests.fixture_types import LoadTemplate, WriteTemplate
from tests.integration.handlers import calls
from tests.integration.support import step, template_yaml

FAIR = {"concurrency_key": "context.tenant", "max_in_flight_per_key": 2}


def most_at_once(entries: list[dict[str, object]]) -> int:
    """The most attempts running at one time among these (by their start and end)."""
    edges = sorted(
        [(float(e["start"]), 1) for e in entries] + [(float(e["end"]), -1) for e in entries],  # type: ignore[arg-type]
        key=lambda x: (x[0], x[1]),
    )
    running = most = 0
    for _, d in edges:
        running += d
        most = max(most, running)
    return most


def test_a_burst_of_one_tenant_does_not_starve_another(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("tenanted", [step("work", handler_config={"sleep": 0.02})], **FAIR)
    tasker.create_tasks(ref, [{"key": key, "tenant": "big", "n": n} for n in range(120)])
    small = tasker.create_tasks(ref, [{"key": key, "tenant": "small", "n": n} for n in range(10)])
    tasker.work(concurrency=8)
    done = calls(key, "work")
    by_tenant = {t: [e for e in done if e["context"]["tenant"] == t] for t in ("big", "small")}
    assert len(by_tenant["big"]) == 120 and len(by_tenant["small"]) == 10
    assert most_at_once(by_tenant["big"]) <= 2
    assert most_at_once(by_tenant["small"]) <= 2
    small_done = max(float(e["end"]) for e in by_tenant["small"])
    big_left = [e for e in by_tenant["big"] if float(e["start"]) > small_done]
    assert len(big_left) >= 60, "the small tenant's tasks should finish while the burst runs"
    assert all(
        t.concurrency_key == "itest/tenanted@1.0.0:small"
        for t in (tasker.get_task(i) for i in small)
    )


def test_the_key_is_shared_by_workers_of_one_store(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("shared", [step("work", handler_config={"sleep": 0.02})], **FAIR)
    tasker.create_tasks(ref, [{"key": key, "tenant": "one", "n": n} for n in range(30)])
    workers = [threading.Thread(target=tasker.work, kwargs={"concurrency": 4}) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    done = calls(key, "work")
    assert len(done) == 30
    assert most_at_once(done) <= 2


def test_a_key_that_cannot_be_evaluated_is_refused_in_one_line(
    tasker: Tasker, load: LoadTemplate, write_template: WriteTemplate, key: str
) -> None:
    ref = load("strict", [step("work")], **FAIR)
    with pytest.raises(TaskerInputError, match=r"concurrency_key `context\.tenant` failed"):
        tasker.create_task(ref, {"key": key})
    with pytest.raises(TaskerInputError, match="gave"):
        tasker.create_task(ref, {"key": key, "tenant": {"nested": 1}})
    half = template_yaml("half", [step("a")], concurrency_key="context.tenant")
    with pytest.raises(TemplateError, match="go together"):
        tasker.load_templates(write_template(half, "half.yaml"))
    bad = template_yaml("badkey", [step("a")], concurrency_key="context.", max_in_flight_per_key=1)
    with pytest.raises(TemplateError, match="concurrency_key"):
        tasker.load_templates(write_template(bad, "badkey.yaml"))
    results = template_yaml(
        "reskey", [step("a")], concurrency_key="results.a.x", max_in_flight_per_key=1
    )
    with pytest.raises(TemplateError, match="read only context"):
        tasker.load_templates(write_template(results, "reskey.yaml"))


def test_a_template_that_drops_its_key_drops_its_limit(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    load("dropping", [step("work")], **FAIR)
    assert tasker.systems.key_limits() == {"itest/dropping@1.0.0": 2}
    load("dropping", [step("work")])
    assert tasker.systems.key_limits() == {}
