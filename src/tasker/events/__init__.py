"""Lifecycle events: the catalog of names and the in-process bus that delivers them."""

from tasker.domain.events import STEP_EVENT_FOR_STATE, TASK_EVENT_FOR_STATE, Events
from tasker.events.bus import Event, EventBus
from tasker.events.subscriber import Subscriber

__all__ = [
    "STEP_EVENT_FOR_STATE",
    "TASK_EVENT_FOR_STATE",
    "Event",
    "EventBus",
    "Events",
    "Subscriber",
]
