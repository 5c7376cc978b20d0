"""Test your own workflows without waiting: an engine on a temporary store with a virtual clock.

Backoffs, sleeps, signal timeouts, schedules, deadlines and lease expiries take no real time: the
clock moves when the test says (`advance`), or jumps to the next due time whenever every step
that could run waits for one (`run`, `run_until_idle`). Events keep the order they would have in
real time: `advance` stops at each due time on its way, and a deadline is looked at before the
steps due at the same time.

    from tasker.testing import workflow_env

    def test_an_order_survives_a_flaky_gateway():
        with workflow_env(templates="examples/ecommerce/templates") as env:
            task = env.engine.create_task("ecommerce/process_order", {...})
            done = env.run(task.id)              # three retries, 1 s + 2 s of backoff: instant
            assert done.status == "complete"

The clock is the process's (`tasker.engine.clock`): one environment at a time per process.
docs/testing.md has a whole example.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tasker.domain.errors import TaskerError
from tasker.domain.records import Task
from tasker.engine import clock
from tasker.engine.clock import VirtualClock
from tasker.engine.tasker import Tasker
from tasker.engine.worker import Worker

__all__ = ["VirtualClock", "WorkflowEnv", "workflow_env"]

#: Where a virtual clock starts unless told otherwise: a Monday, 09:00 UTC.
DEFAULT_START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
#: `advance` runs at most this many due times on its way (a runaway schedule is a test's bug).
MAX_STOPS = 10_000


class WorkflowEnv:
    """An engine whose clock only the test moves."""

    def __init__(self, engine: Tasker, virtual: VirtualClock):
        self.engine = engine
        self.clock = virtual
        self._timers: Worker | None = None

    def now(self) -> datetime:
        """The virtual time."""
        return self.clock.now()

    def run(self, task_id: int) -> Task:
        """Run a task as far as it goes, jumping the clock over its waits (backoffs, sleeps,
        signal timeouts, its deadline): until it finishes, or until all that is left of it waits
        for a signal with no timeout. Returns the task as it is then."""
        with self._skipping():
            return self.engine.run(task_id)

    def run_until_idle(self) -> int:
        """Run every task as far as it goes, jumping the clock like `run` (schedules do not fire
        on the way: use `advance` for them). Returns the attempts run."""
        with self._skipping():
            return self.engine.work(until_idle=True)

    def advance(self, seconds: float = 0.0, **delta: float) -> int:
        """Move the clock forward by `seconds` and/or `timedelta` keywords (minutes=, hours=,
        days=), stopping at each time something is due on the way (a step's `run_at`, a
        deadline, a schedule's tick) to run it, as real time would. Returns the attempts run."""
        target = self.clock.now() + timedelta(seconds=seconds, **delta)
        ran = self._settle()
        for _ in range(MAX_STOPS):
            due = self._worker().timers.next_event()
            if due is None or due > target:
                break
            self.clock.set(max(due, self.clock.now()))
            ran += self._settle()
        else:
            raise TaskerError(f"more than {MAX_STOPS} due times before {target.isoformat()}")
        self.clock.set(target)
        return ran + self._settle()

    def fire_timers(self) -> None:
        """Look at deadlines and schedules now (what a worker does every second)."""
        timers = self._worker().timers
        timers.run()
        timers.release()

    def signal(self, task_id: int, name: str, payload: Any = None, **kwargs: Any) -> int:
        """Send a signal, then run what it woke; returns the attempts run."""
        self.engine.signal(task_id, name, payload, **kwargs)
        return self._settle()

    def _settle(self) -> int:
        """Timers, then the steps due now (the clock held)."""
        self.fire_timers()
        return self.engine.work(until_idle=True)

    def _worker(self) -> Worker:
        if self._timers is None:
            self._timers = self.engine.worker()
        return self._timers

    @contextmanager
    def _skipping(self) -> Iterator[None]:
        self.clock.skipping = True
        try:
            yield
        finally:
            self.clock.skipping = False


@contextmanager
def workflow_env(
    templates: str | Path | Sequence[str | Path] | None = None,
    *,
    database_url: str | None = None,
    start: datetime = DEFAULT_START,
    concurrency: int = 4,
    **engine_options: Any,
) -> Iterator[WorkflowEnv]:
    """An engine on a temporary SQLite file (or `database_url`), with `templates` loaded and a
    virtual clock at `start`; the real clock is back when the block ends."""
    if clock.installed() is not None:
        raise TaskerError("a workflow test environment is already open in this process")
    virtual = VirtualClock(start)
    clock.install(virtual)
    try:
        with tempfile.TemporaryDirectory(prefix="tasker-test-") as folder:
            url = database_url or f"sqlite:///{Path(folder) / 'tasker.db'}"
            engine = Tasker(
                url,
                templates=templates,
                concurrency=concurrency,
                poll_interval=engine_options.pop("poll_interval", 0.05),
                **engine_options,
            )
            try:
                yield WorkflowEnv(engine, virtual)
            finally:
                engine.close()
    finally:
        clock.install(None)
