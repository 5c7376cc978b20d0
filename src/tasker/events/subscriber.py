"""`Subscriber`: react to engine events by name, in the style of Tasker's subscribers.

List the events with `subscribe_to(...)` (or a `subscribed_events` class attribute) and implement
one `handle_<event>` method per event, dots turned to underscores: `task.completed` ->
`handle_task_completed`. Events without a method of their own go to `handle_event`. A subscriber
that raises is logged and isolated by the bus: it never fails a step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from tasker.events.bus import Event, EventBus


class Subscriber:
    subscribed_events: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def subscribe_to(cls, *names: str) -> type[Subscriber]:
        """Declare the events (or glob patterns such as `step.*`) this subscriber receives."""
        cls.subscribed_events = tuple(dict.fromkeys(cls.subscribed_events + names))
        return cls

    @staticmethod
    def method_name(event: str) -> str:
        return "handle_" + event.replace(".", "_").replace("-", "_")

    def bind(self, engine: Any) -> None:
        """Called with the engine when the subscriber is added to one (`Tasker.add_subscriber`, or
        from configuration): override to keep it, e.g. to read the task an event names. The default
        ignores it.
        """

    def attach(self, bus: EventBus) -> Callable[[], None]:
        """Subscribe to `bus`; returns a function that detaches this subscriber again."""
        if not self.subscribed_events:
            raise ValueError(
                f"{type(self).__name__} subscribes to no events; call subscribe_to(...) first"
            )
        return bus.subscribe(self.dispatch, *self.subscribed_events)

    def dispatch(self, event: Event) -> None:
        handler = getattr(self, self.method_name(event.name), None)
        if handler is None:
            self.handle_event(event)
        else:
            handler(event)

    def handle_event(self, event: Event) -> None:
        """Events without a `handle_<event>` method of their own arrive here; the default ignores
        them."""
