"""Custom events published by handlers, lifecycle events, and subscribers that misbehave."""

from __future__ import annotations

import threading

from tasker import Event, Tasker
from tests.fixture_types import LoadTemplate, WriteTemplate
from tests.integration import handlers as h
from tests.integration.support import step, step_history


def test_declared_custom_event_reaches_a_subscriber_after_the_step(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "publishing",
        [
            step(
                "charge",
                "Publisher",
                handler_config={"events": ["payment.charged"]},
                custom_events=[{"name": "payment.charged", "description": "money taken"}],
            ),
            step(
                "notify",
                "Publisher",
                after="charge",
                handler_config={"events": ["order.announced"]},
            ),
        ],
        custom_events=["order.announced"],
    )
    task_id = tasker.create_task(ref, {"key": key}).id
    got: list[tuple[Event, str]] = []

    def listener(event: Event) -> None:
        # What the store says when the subscriber hears of the event.
        got.append(
            (event, tasker.get_task(event.payload["task_id"]).step(event.payload["step"]).status)
        )

    tasker.bus.subscribe(listener, "payment.*", "order.announced")
    names: list[str] = []
    tasker.bus.subscribe(lambda e: names.append(e.name))

    task = tasker.run(task_id)

    assert task.status == "complete"
    assert [e.name for e, _ in got] == ["payment.charged", "order.announced"]
    charged, status = got[0]
    assert status == "complete"  # delivered after the step's outcome was stored
    charge_step = tasker.get_task(task_id).step("charge")
    assert charged.payload == {
        "task_id": task_id,
        "step": "charge",
        "key": key,
        "amount": 42,
        "step_id": charge_step.id,
        "namespace": "itest",
        "attempt": 1,
        "correlation_id": tasker.get_task(task_id).correlation_id,
    }
    assert got[1][0].payload["step"] == "notify"
    # Lifecycle events and custom ones in one stream, the custom event after its step completed.
    assert names.index("payment.charged") > names.index("step.completed")
    assert names.index("task.started") < names.index("step.started") < names.index("step.completed")
    assert names[-1] == "task.completed"


def test_undeclared_event_fails_the_step_as_retryable(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    """`UndeclaredEventError` is a `TaskerError`: the engine treats it like any unexpected
    exception, i.e. retryable until the retry limit, then `error`. Nothing is published for the
    undeclared name."""
    ref = load(
        "undeclared",
        [
            step(
                "a",
                "Publisher",
                default_retry_limit=2,
                handler_config={"events": ["ok.event", "not.declared"]},
                custom_events=["ok.event"],
            ),
            step("b", after="a"),
        ],
    )
    heard: list[str] = []
    tasker.bus.subscribe(lambda e: heard.append(e.name), "not.*")
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)

    a = task.step("a")
    assert (task.status, a.status, a.attempts) == ("error", "error", 2)
    assert a.last_error is not None
    assert a.last_error["class"] == "UndeclaredEventError"
    assert "not.declared" in a.last_error["message"] and "ok.event" in a.last_error["message"]
    assert a.last_error["retryable"] is True
    assert [r["error_class"] for r in step_history(tasker, task.id, "a") if r["error_class"]] == [
        "UndeclaredEventError",
        "UndeclaredEventError",
    ]
    assert heard == []
    assert task.step("b").status == "pending"
    assert len(h.calls(key, "a")) == 2


def test_failing_subscriber_does_not_fail_the_step(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "publishing",
        [
            step(
                "a",
                "Publisher",
                handler_config={"events": ["thing.happened"]},
                custom_events=["thing.happened"],
            ),
            step("b", after="a"),
        ],
    )

    def broken(event: Event) -> None:
        raise RuntimeError(f"subscriber bug on {event.name}")

    tasker.bus.subscribe(broken)  # every event, lifecycle ones included
    after: list[str] = []
    tasker.bus.subscribe(lambda e: after.append(e.name), "thing.*", "task.completed")
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)

    assert task.status == "complete"
    assert [s.attempts for s in task.steps] == [1, 1]
    assert after == ["thing.happened", "task.completed"]


def test_unsubscribe_and_lifecycle_events(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load("flaky", [step("a", handler_config={"fail": ["retryable"]}), step("b", after="a")])
    events: list[Event] = []
    lock = threading.Lock()

    def listener(e: Event) -> None:
        with lock:
            events.append(e)

    stop = tasker.bus.subscribe(listener, "task.*", "step.retry_scheduled", "step.completed")
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "complete"
    names = [e.name for e in events]
    assert names.count("step.retry_scheduled") == 1
    assert names.count("step.completed") == 2
    assert names[0] == "task.created" and names[-1] == "task.completed"
    retry = next(e for e in events if e.name == "step.retry_scheduled")
    assert retry.payload["attempt"] == 1 and retry.payload["error"]["class"] == "RetryableError"
    assert retry.payload["retry_in_seconds"] >= 0

    stop()
    before = len(events)
    tasker.run(tasker.create_task(ref, {"key": key, "n": 2}).id)
    assert len(events) == before


def test_a_subscriber_attached_to_the_engine_sees_the_task_complete(
    tasker: Tasker, write_template: WriteTemplate, key: str
) -> None:
    from tasker import Subscriber

    class Watch(Subscriber):
        def __init__(self) -> None:
            self.completed: list[int] = []
            self.steps: list[str] = []

        def handle_task_completed(self, event: Event) -> None:
            self.completed.append(event.payload["task_id"])

        def handle_step_completed(self, event: Event) -> None:
            self.steps.append(event.payload["step"])

    Watch.subscribe_to("task.completed", "step.completed")
    watch = Watch()
    tasker.add_subscriber(watch)
    path = write_template(
        "name: watched\nnamespace_name: events_sub\nversion: 1.0.0\nstep_templates:\n  - name:"
        " one\n    handler_class: tests.integration.handlers:Scripted\n  - name: two\n   "
        " depends_on_step: one\n    handler_class: tests.integration.handlers:Scripted\n"
    )
    tasker.load_templates(path)
    task = tasker.run(tasker.create_task("events_sub/watched", {"key": key}).id)
    assert task.status == "complete"
    assert watch.completed == [task.id]
    assert watch.steps == ["one", "two"]
