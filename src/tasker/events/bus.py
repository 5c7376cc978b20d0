"""In-process publish/subscribe. A failing subscriber is logged and isolated: it never fails a
step."""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("tasker.events")


@dataclass(frozen=True)
class Event:
    name: str
    payload: dict[str, Any]
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


Listener = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[tuple[tuple[str, ...], Listener]] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener, *patterns: str) -> Callable[[], None]:
        """Call `listener` for events matching any glob pattern (all events when none); returns
        unsubscribe."""
        entry = (patterns or ("*",), listener)
        with self._lock:
            self._listeners.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._listeners:
                    self._listeners.remove(entry)

        return unsubscribe

    @property
    def has_listeners(self) -> bool:
        return bool(self._listeners)

    def publish(self, name: str, payload: dict[str, Any]) -> None:
        if not self._listeners:
            return
        event = Event(name, payload)
        for patterns, listener in list(self._listeners):
            if any(fnmatch.fnmatchcase(name, p) for p in patterns):
                try:
                    listener(event)
                except Exception:
                    log.exception(
                        "event subscriber %r failed on %s; the step is not affected", listener, name
                    )
