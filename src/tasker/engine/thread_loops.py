"""One event loop per calling thread, kept across `Tasker.run()` calls.

`asyncio.Runner` (what `asyncio.run` uses) makes and closes an event loop for every call: a
selector, a socket pair, their closing and three passes of the loop, about 0.1 ms, a thirtieth of a
whole 5-step task on SQLite. The loop kept here behaves, for each call, as a fresh one would:

- the call's coroutine runs in a copy of the caller's context variables;
- tasks the call leaves behind are cancelled and awaited when it returns, their errors reported to
  the loop's exception handler (as `asyncio.Runner.close` does);
- Ctrl-C in the main thread cancels the call and raises `KeyboardInterrupt` from it, rather than
  interrupting the loop half-way through a step (as `asyncio.Runner.run` does).

What differs, on purpose: objects bound to the loop (an `asyncio.Lock` a handler kept, a client's
connections) stay usable in the thread's next call instead of failing as "attached to a different
loop". A loop is closed with `close()` (`Tasker.close`), or when its thread ends.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import signal
import threading
import weakref
from collections.abc import Coroutine
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")


class _HeldLoop:
    """A thread's loop; closed when the thread's storage lets go of it (the thread ended)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        loop = self.loop
        if loop.is_closed() or loop.is_running():
            return
        try:
            _cancel_leftovers(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # collected in one sweep with the loop's own sockets: already gone
            pass


class ThreadLoops:
    """The loops this engine made, one per thread that called `run`."""

    def __init__(self) -> None:
        self._local = threading.local()
        # weak: a loop whose thread ended is closed then (its storage let go), not kept to here
        self._held: weakref.WeakSet[_HeldLoop] = weakref.WeakSet()
        self._lock = threading.Lock()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` to completion on this thread's loop (made on first use)."""
        held: _HeldLoop | None = getattr(self._local, "held", None)
        if held is None or held.loop.is_closed():
            held = _HeldLoop()
            self._local.held = held
            with self._lock:
                self._held.add(held)
        loop = held.loop
        task = loop.create_task(coro, context=contextvars.copy_context())
        interrupts = _Interrupts(loop, task)
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            if interrupts.count and task.uncancel() == 0:
                raise KeyboardInterrupt() from None
            raise
        finally:
            interrupts.restore()
            _cancel_leftovers(loop)

    def close(self) -> None:
        """Close every loop that is not running a call now (those close when their thread
        ends)."""
        with self._lock:
            held = list(self._held)
        for h in held:
            h.close()


class _Interrupts:
    """Ctrl-C while the main thread runs a call: the first cancels the call, a second raises
    `KeyboardInterrupt` at once (`asyncio.Runner.run`'s rule)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        self.loop, self.task, self.count = loop, task, 0
        self.handler: Any = None
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self.handler = functools.partial(_Interrupts._on_sigint, self)
            try:
                signal.signal(signal.SIGINT, self.handler)
            except ValueError:  # not the main interpreter
                self.handler = None

    def _on_sigint(self, _signum: int, _frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1 and not self.task.done():
            self.task.cancel()
            self.loop.call_soon_threadsafe(lambda: None)  # wake a loop waiting in select()
            return
        raise KeyboardInterrupt()

    def restore(self) -> None:
        if self.handler is not None and signal.getsignal(signal.SIGINT) is self.handler:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel and await the tasks a call left on `loop` (`asyncio.runners._cancel_all_tasks`)."""
    leftovers = asyncio.all_tasks(loop)
    if not leftovers:
        return
    for task in leftovers:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
    for task in leftovers:
        if task.cancelled():
            continue
        if task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception in a task left behind by Tasker.run()",
                    "exception": task.exception(),
                    "task": task,
                }
            )
