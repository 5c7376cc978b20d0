"""Creating tasks: idempotency, context validation and defaults, template pinning, task handler
hooks."""

from __future__ import annotations

import threading

import pytest

from tasker import (
    ContextValidationError,
    IdempotencyConflict,
    Task,
    Tasker,
    TaskerInputError,
    UnknownTemplateError,
)
from tests.fixture_types import LoadTemplate, MakeTasker, WriteTemplate
from tests.integration import handlers as h
from tests.integration.support import step

SCHEMA = {
    "type": "object",
    "required": ["order_id", "customer"],
    "properties": {
        "key": {"type": "string"},
        "order_id": {"type": "integer"},
        "priority": {"type": "string", "enum": ["low", "normal", "high"], "default": "normal"},
        "customer": {
            "type": "object",
            "required": ["email"],
            "properties": {
                "email": {"type": "string"},
                "tier": {"type": "string", "default": "standard"},
            },
        },
    },
}


# -- idempotency -----------------------------------------------------------------------------------
def test_same_explicit_key_returns_the_same_task(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("one", [step("a")])
    first = tasker.create_task(ref, {"key": key, "n": 1}, idempotency_key=f"order-{key}")
    second = tasker.create_task(ref, {"key": key, "n": 1}, idempotency_key=f"order-{key}")
    assert first.deduplicated is False
    assert second.deduplicated is True
    assert second.id == first.id
    assert second.context == first.context == {"key": key, "n": 1}
    assert second.idempotency_key == f"order-{key}"
    with pytest.raises(IdempotencyConflict, match=r"different payload: context \$\.n"):
        tasker.create_task(ref, {"key": key, "n": 2}, idempotency_key=f"order-{key}")
    other = tasker.create_task(ref, {"key": key, "n": 1}, idempotency_key=f"other-{key}")
    assert other.id != first.id and other.deduplicated is False
    assert tasker.list_tasks()[1] == 2


def test_without_a_key_every_create_is_a_new_task(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("one", [step("a")])
    first = tasker.create_task(ref, {"key": key, "a": 1})
    second = tasker.create_task(ref, {"key": key, "a": 1})
    assert second.id != first.id and not second.deduplicated
    assert (
        first.idempotency_key.startswith("new-") and first.idempotency_key != second.idempotency_key
    )
    assert tasker.create_tasks(ref, [{"key": key, "a": 1}] * 3) != [first.id] * 3
    assert tasker.list_tasks()[1] == 5


def test_identity_makes_equal_requests_one_task_forever(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("one", [step("a")], identity={"from": ["customer.id", "cart"]})
    first = tasker.create_task(
        ref, {"key": key, "customer": {"id": 7, "name": "Ada"}, "cart": [1, 2]}
    )
    # only the identity paths count: another name, same customer and cart, is the same order
    second = tasker.create_task(
        ref, {"key": key, "customer": {"id": 7, "name": "A."}, "cart": [1, 2]}
    )
    assert second.id == first.id and second.deduplicated
    assert first.idempotency_key.startswith("id-")
    other = tasker.create_task(ref, {"key": key, "customer": {"id": 8}, "cart": [1, 2]})
    assert other.id != first.id
    tasker.work(until_idle=True)
    again = tasker.create_task(ref, {"key": key, "customer": {"id": 7}, "cart": [1, 2]})
    assert again.id == first.id and again.status == "complete", "a finished task still deduplicates"
    assert len(h.calls(key, "a")) == 2


def test_identity_within_a_window(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    # A window of 1.5 s: at 0.5 s, a loaded CI machine once took longer than the window between
    # the two requests, and the second was rightly a new task.
    ref = load("win", [step("a")], identity={"from": ["customer"], "window_seconds": 1.5})
    first = tasker.create_task(ref, {"key": key, "customer": "ada"})
    assert tasker.create_task(ref, {"key": key, "customer": "ada"}).id == first.id
    import time

    time.sleep(3.1)  # past the window (and past the edge of the next one)
    later = tasker.create_task(ref, {"key": key, "customer": "ada"})
    assert later.id != first.id and not later.deduplicated


def test_identity_is_validated_at_load(tasker: Tasker, load: LoadTemplate) -> None:
    with pytest.raises(TaskerInputError, match="identity"):
        load("bad", [step("a")], identity={"from": [], "window_seconds": 10})
    with pytest.raises(TaskerInputError, match="window_seconds"):
        load("bad2", [step("a")], identity={"from": ["a"], "window_seconds": -1})


def test_duplicate_does_not_run_twice(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load("one", [step("a")])
    for _ in range(3):
        tasker.create_task(ref, {"key": key}, idempotency_key=f"k-{key}")
    assert tasker.work(until_idle=True) == 1
    assert len(h.calls(key, "a")) == 1


@pytest.mark.parametrize("bad", ["", "x" * 256])
def test_invalid_idempotency_key_is_refused(
    tasker: Tasker, load: LoadTemplate, key: str, bad: str
) -> None:
    ref = load("one", [step("a")])
    with pytest.raises(TaskerInputError, match="idempotency_key"):
        tasker.create_task(ref, {"key": key}, idempotency_key=bad)
    assert tasker.list_tasks()[1] == 0


def test_concurrent_creation_of_the_same_key_makes_one_task(
    make_tasker: MakeTasker, write_template: WriteTemplate, key: str
) -> None:
    from tests.integration.support import template_yaml

    path = write_template(template_yaml("one", [step("a")]))
    engines = [make_tasker() for _ in range(3)]
    for e in engines:
        e.load_templates(path)
    n = 8
    barrier = threading.Barrier(n)
    results: list[Task] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def create(i: int) -> None:
        engine = engines[i % len(engines)]
        barrier.wait(5)
        try:
            task = engine.create_task("itest/one", {"key": key}, idempotency_key=f"same-{key}")
        except Exception as exc:  # pragma: no cover - reported below
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(task)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(results) == n
    assert len({t.id for t in results}) == 1
    assert sum(1 for t in results if not t.deduplicated) == 1
    tasks, total = engines[0].list_tasks()
    assert total == 1
    assert len(engines[0].history.task_transitions(tasks[0].id)) == 1
    assert engines[0].work(until_idle=True) == 1


# -- validation ------------------------------------------------------------------------------------
def test_context_violations_are_reported_together_with_paths(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("validated", [step("a")], schema=SCHEMA)
    with pytest.raises(ContextValidationError) as info:
        tasker.create_task(ref, {"key": key, "order_id": "not-a-number", "customer": {"email": 7}})
    err = info.value
    paths = dict(err.violations)
    assert len(err.violations) == 2
    assert "$.order_id" in paths and "integer" in paths["$.order_id"]
    assert "$.customer.email" in paths and "string" in paths["$.customer.email"]

    with pytest.raises(ContextValidationError) as info:
        tasker.create_task(ref, {"key": key, "order_id": "x", "priority": "urgent"})
    violations = info.value.violations
    assert len(violations) == 3
    messages = " | ".join(f"{p}: {m}" for p, m in violations)
    assert "'customer' is a required property" in messages
    assert "$.order_id" in messages and "$.priority" in messages
    assert "itest/validated@1.0.0" in str(info.value)
    assert tasker.list_tasks()[1] == 0


def test_defaults_are_applied_and_stored(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load("validated", [step("a")], schema=SCHEMA)
    task = tasker.create_task(
        ref,
        {"key": key, "order_id": 7, "customer": {"email": "a@example.com"}},
        idempotency_key=f"order-7-{key}",
    )
    expected = {
        "key": key,
        "order_id": 7,
        "priority": "normal",
        "customer": {"email": "a@example.com", "tier": "standard"},
    }
    assert task.context == expected
    assert tasker.get_task(task.id).context == expected
    tasker.run(task.id)
    assert h.calls(key, "a")[0]["context"] == expected
    # The same request with the defaults spelled out is the same task, no conflict.
    assert tasker.create_task(ref, expected, idempotency_key=f"order-7-{key}").id == task.id


def test_unknown_template_lists_the_known_ones(tasker: Tasker, load: LoadTemplate) -> None:
    load("one", [step("a")])
    load("two", [step("a")], version="2.1.0")
    with pytest.raises(UnknownTemplateError) as info:
        tasker.create_task("itest/missing", {})
    assert "itest/one@1.0.0" in str(info.value) and "itest/two@2.1.0" in str(info.value)
    assert set(info.value.known) >= {"itest/one@1.0.0", "itest/two@2.1.0"}
    with pytest.raises(UnknownTemplateError) as info:
        tasker.create_task("itest/two", {}, version="9.9.9")
    assert "itest/two@2.1.0" in str(info.value)


# -- template versions -----------------------------------------------------------------------------
def test_task_keeps_its_template_version(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load(
        "evolving",
        [step("a", handler_config={"value": "v1"}), step("b", after="a")],
        version="1.0.0",
    )
    old = tasker.create_task(ref, {"key": key, "which": "old"})
    load(
        "evolving",
        [step("a", handler_config={"value": "v2"}), step("x", after="a"), step("y", after="x")],
        version="2.0.0",
    )
    new = tasker.create_task(ref, {"key": key, "which": "new"})
    pinned = tasker.create_task(ref, {"key": key, "which": "pinned"}, version="1.0.0")

    assert old.version == "1.0.0" and pinned.version == "1.0.0"
    assert new.version == "2.0.0"
    assert [s.name for s in new.steps] == ["a", "x", "y"]
    tasker.work(until_idle=True)

    old_done, new_done, pinned_done = tasker.get_tasks([old.id, new.id, pinned.id])
    assert [s.name for s in old_done.steps] == ["a", "b"]
    assert old_done.status == new_done.status == pinned_done.status == "complete"
    assert (old_done.step("a").results or {})["value"] == "v1"
    assert (pinned_done.step("a").results or {})["value"] == "v1"
    assert (new_done.step("a").results or {})["value"] == "v2"
    assert tasker.templates.of_task(old.id).version == "1.0.0"
    assert [s.name for s in tasker.templates.of_task(old.id).step_templates] == ["a", "b"]


def test_running_task_is_not_changed_by_a_reload_of_its_version(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    """Reloading the same version with other steps (a careless deploy) does not alter existing
    tasks."""
    ref = load("reloaded", [step("a", handler_config={"value": "before"}), step("b", after="a")])
    task = tasker.create_task(ref, {"key": key})
    load("reloaded", [step("a", handler_config={"value": "after"})])
    done = tasker.run(task.id)
    assert [s.name for s in done.steps] == ["a", "b"]
    assert (done.step("a").results or {})["value"] == "before"
    assert done.status == "complete"


# -- task handler hooks ----------------------------------------------------------------------------
def test_task_handler_prepares_context_and_annotates_on_complete(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "order",
        [step("a"), step("b", after="a")],
        task_handler_class=f"{h.__name__}:OrderTaskHandler",
        schema=SCHEMA,
    )
    task = tasker.create_task(
        ref, {"key": key, "order_id": 1, "customer": {"email": "x@y"}, "priority": "high"}
    )
    assert task.context["express"] is True and task.context["prepared"] is True
    assert task.context["priority"] == "high" and task.context["customer"]["tier"] == "standard"
    assert tasker.get_task(task.id).context == task.context

    done = tasker.run(task.id)
    assert done.status == "complete"
    assert h.calls(key, "a")[0]["context"]["express"] is True
    assert done.annotations == {"steps_completed": 2, "outcome": "ok"}
    hooks = h.calls(key, kind="on_complete")
    assert len(hooks) == 1 and hooks[0]["status"] == "complete"
    assert h.calls(key, kind="on_error") == []


def test_task_handler_annotates_on_error(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load(
        "order_fail",
        [step("a"), step("b", after="a", handler_config={"always_fail": "permanent"})],
        task_handler_class=f"{h.__name__}:OrderTaskHandler",
    )
    done = tasker.run(tasker.create_task(ref, {"key": key, "priority": "low"}).id)
    assert done.status == "error"
    assert done.context["express"] is False
    assert done.annotations == {"failed_steps": ["b"], "outcome": "failed"}
    assert len(h.calls(key, kind="on_error")) == 1
