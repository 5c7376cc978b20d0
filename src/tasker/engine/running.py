"""The workers an engine runs in this process, to wake when new work appears.

`create_task`, `retry_task`, `resolve_step` and a circuit reset make steps ready; the workers of the
same process are told at once instead of finding them at their next poll.
"""

from __future__ import annotations

import threading
from typing import Protocol


class Notifiable(Protocol):
    def notify(self) -> None: ...


class RunningWorkers:
    """A thread-safe set of the workers an engine runs now."""

    def __init__(self) -> None:
        self._workers: set[Notifiable] = set()
        self._lock = threading.Lock()

    def add(self, worker: Notifiable) -> None:
        with self._lock:
            self._workers.add(worker)

    def discard(self, worker: Notifiable) -> None:
        with self._lock:
            self._workers.discard(worker)

    def notify(self) -> None:
        """Wake every running worker (each then claims what became ready)."""
        with self._lock:
            workers = list(self._workers)
        for w in workers:
            w.notify()
