"""The Subscriber base class: routing by event name, fallback, isolation of failures."""

from __future__ import annotations

import pytest

from tasker import Event, EventBus, Subscriber


class Recorder(Subscriber):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def handle_task_completed(self, event: Event) -> None:
        self.seen.append(f"completed {event.payload['task_id']}")

    def handle_event(self, event: Event) -> None:
        self.seen.append(f"other {event.name}")


Recorder.subscribe_to("task.completed", "step.*")


def test_events_go_to_their_handle_method_or_the_fallback() -> None:
    bus = EventBus()
    sub = Recorder()
    sub.attach(bus)
    bus.publish("task.completed", {"task_id": 7})
    bus.publish("step.failed", {"task_id": 7})
    bus.publish("task.failed", {"task_id": 7})  # not subscribed
    assert sub.seen == ["completed 7", "other step.failed"]


def test_detaching_stops_delivery() -> None:
    bus = EventBus()
    sub = Recorder()
    detach = sub.attach(bus)
    detach()
    bus.publish("task.completed", {"task_id": 1})
    assert sub.seen == []


def test_a_failing_subscriber_is_isolated() -> None:
    class Broken(Subscriber):
        def handle_task_completed(self, event: Event) -> None:
            raise RuntimeError("boom")

    Broken.subscribe_to("task.completed")
    bus = EventBus()
    ok = Recorder()
    Broken().attach(bus)
    ok.attach(bus)
    bus.publish("task.completed", {"task_id": 3})
    assert ok.seen == ["completed 3"]


def test_a_subscriber_without_events_is_refused() -> None:
    class Nothing(Subscriber):
        pass

    with pytest.raises(ValueError, match="subscribes to no events"):
        Nothing().attach(EventBus())


def test_method_names_follow_the_event_names() -> None:
    assert Subscriber.method_name("circuit.half_open") == "handle_circuit_half_open"
