"""Threads for synchronous step handlers, where a hung handler costs its own thread and nothing
else.

Python cannot interrupt a thread. With a plain `ThreadPoolExecutor`, a handler that hangs past its
timeout keeps its pool thread: the steps queued behind it wait, their timeouts tick while they wait
(so attempts were spent before their handlers ever started), and the interpreter joins the thread at
exit (so `tasker worker` ignored SIGTERM). Here instead:

- `Call.started_at` is set when a thread actually begins the handler, so a timeout counts from
  there;
- a call that overstays is *abandoned*: its thread is written off as stuck and a fresh thread takes
  its place, up to `max_stuck` replacements at a time (default: four per slot). Beyond that cap no
  more threads are made and the worker shrinks its room by the overflow (`overflow`), so threads
  stay bounded by `size + max_stuck` however many handlers hang;
- every thread is a daemon, so a process that is told to stop never waits for a stuck handler.

A stuck thread that does return later goes back to work (or ends, if the pool is full again).

It is on the hot path of every sync step, so it costs what `ThreadPoolExecutor` costs: one lock-free
queue, an idle semaphore, one future per call.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

log = logging.getLogger("tasker.worker")

#: Replacement threads a pool makes for stuck ones, per slot of its size, before it stops replacing.
#: A parked thread costs little (its stack is reserved, hardly touched), so be generous: a burst of
#: hung handlers must not shrink the worker while its other steps are healthy.
DEFAULT_STUCK_PER_SLOT = 4


class Call:
    """One handler run: `started_at` is the perf-counter time it began (None while queued), `done`
    resolves with its return value or exception."""

    __slots__ = ("_pool", "abandoned", "args", "done", "fn", "started_at", "thread")

    def __init__(self, pool: HandlerThreads, fn: Callable[..., Any], args: tuple[Any, ...]):
        self._pool = pool
        self.fn = fn
        self.args = args
        self.started_at: float | None = None
        self.done: Future[Any] = Future()
        self.abandoned = False
        self.thread: threading.Thread | None = None

    def abandon(self) -> None:
        """Give up on this call: if it has not started it never will; if it runs, its thread is
        stuck."""
        self._pool._abandon(self)


class HandlerThreads:
    """A pool of daemon threads of `size` working threads, which replaces threads stuck in
    handlers."""

    def __init__(self, size: int, *, max_stuck: int | None = None, name: str = "tasker-step"):
        if size < 1:
            raise ValueError("a handler thread pool needs at least one thread")
        self.size = size
        self.max_stuck = size * DEFAULT_STUCK_PER_SLOT if max_stuck is None else max_stuck
        self.name = name
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._working = 0  # threads that count against `size`
        self._stuck: set[threading.Thread] = set()
        self._closed = False
        self._serial = 0

    # -- what the worker reads ---------------------------------------------------------------------
    @property
    def stuck(self) -> int:
        """Threads still inside a handler that was abandoned (timed out or cut off)."""
        return len(self._stuck)

    @property
    def overflow(self) -> int:
        """Stuck threads beyond the replacement cap: each one costs the worker a slot until it
        returns."""
        return max(0, len(self._stuck) - self.max_stuck)

    # -- use ---------------------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], *args: Any) -> Call:
        call = Call(self, fn, args)
        if self._closed:
            raise RuntimeError("the handler thread pool is shut down")
        self._queue.put(call)
        if self._idle.acquire(timeout=0):  # an idle thread takes it
            return call
        with self._lock:
            if self._room():
                self._spawn()
        return call

    def shutdown(self) -> None:
        """Stop idle threads; busy and stuck ones end when their handler returns (they are
        daemons)."""
        with self._lock:
            self._closed = True
            threads = self._working
        for _ in range(threads):
            self._queue.put(None)

    # -- internals ---------------------------------------------------------------------------------
    def _room(self) -> bool:
        """Whether another working thread may start (stuck threads past the cap take room).
        Locked."""
        return self._working + max(0, len(self._stuck) - self.max_stuck) < self.size

    def _spawn(self) -> None:
        self._working += 1
        self._serial += 1
        thread = threading.Thread(
            target=self._loop, name=f"{self.name}-{self._serial}", daemon=True
        )
        thread.start()

    def _abandon(self, call: Call) -> None:
        with self._lock:
            if call.abandoned:
                return
            call.abandoned = True  # a thread that dequeues it later skips it
            thread = call.thread
            if thread is None or call.done.done():
                call.done.cancel()
                return
            self._stuck.add(thread)
            self._working -= 1
            stuck = len(self._stuck)
            if not self._closed and self._room() and not self._queue.empty():
                self._spawn()
        log.warning(
            "a step handler overstayed its timeout on thread %s; %d handler thread(s) stuck",
            thread.name,
            stuck,
        )

    def _loop(self) -> None:
        me = threading.current_thread()
        while True:
            call = self._queue.get()
            if call is None:
                return
            with self._lock:
                if call.abandoned:
                    skip = True
                else:
                    skip = False
                    call.thread = me
            if skip or not call.done.set_running_or_notify_cancel():
                self._idle.release()
                continue
            call.started_at = time.perf_counter()
            try:
                value = call.fn(*call.args)
            except BaseException as exc:  # SystemExit and friends too: they belong to the handler
                call.done.set_exception(exc)
            else:
                call.done.set_result(value)
            if not self._rejoin(me):
                return
            self._idle.release()

    def _rejoin(self, me: threading.Thread) -> bool:
        """After a call: a stuck thread that returned works again if the pool is short of
        threads."""
        with self._lock:  # locked: `_abandon` may be marking this very thread stuck right now
            if me not in self._stuck:
                return True
            self._stuck.discard(me)
            if not self._closed and self._room():
                self._working += 1
                return True
            return False
