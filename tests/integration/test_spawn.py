"""A step starting another task (`ctx.create_task`) and reading it (`ctx.get_task`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tasker import StepContext, Tasker, TaskerError
from tests.integration.handlers import calls
from tests.integration.support import step, template_yaml


def test_a_step_starts_one_child_task_across_its_retries_and_waits_for_it(
    tasker: Tasker, write_template: Callable[[str, str], Path], key: str
) -> None:
    write_template(template_yaml("child", [step("work")], namespace="other"), "child.yaml")
    folder = write_template(
        template_yaml(
            "parent",
            [
                step(
                    "spawn",
                    "SpawnChild",
                    handler_config={"child": "other/child"},
                    default_retry_limit=3,
                ),
                step("await", "AwaitChild", after="spawn", default_retry_limit=200),
            ],
        ),
        "parent.yaml",
    ).parent
    tasker.load_templates(folder)
    parent = tasker.create_task("itest/parent", {"key": key}, correlation_id="corr-parent")
    tasker.work()

    done = tasker.get_task(parent.id)
    assert done.status == "complete"
    spawned = calls(key, kind="spawned")
    assert [c["attempt"] for c in spawned] == [1, 2]
    assert spawned[0]["child"] == spawned[1]["child"], (
        "a retried step must find its child, not start another"
    )
    child = tasker.get_task(spawned[0]["child"])
    assert (child.namespace, child.name, child.status) == ("other", "child", "complete")
    assert done.step("await").results == {
        "child_status": "complete",
        "child_correlation_id": "corr-parent",
    }
    children, total = tasker.list_tasks(namespace="other")
    assert total == 1 and children[0].id == child.id


def test_a_context_without_an_engine_says_so() -> None:
    ctx = StepContext(
        task_id=1,
        step_id=1,
        step_name="s",
        namespace="n",
        task_name="t",
        version="1.0.0",
        context={},
        results={},
        handler_config={},
        attempt=1,
        retry_limit=3,
        idempotency_key="k",
        correlation_id="c",
        dependent_system="d",
    )
    with pytest.raises(TaskerError, match="not attached to an engine"):
        ctx.create_task("n/t", {})
