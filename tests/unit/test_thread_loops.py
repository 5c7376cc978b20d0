"""`ThreadLoops`: the event loop `Tasker.run()` keeps per calling thread behaves, call by call, as
the fresh loop of `asyncio.run` would (context, leftovers, Ctrl-C) and is closed with its
thread."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import signal
import threading
from typing import Any

import pytest

from tasker.engine.thread_loops import ThreadLoops

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_a_thread_reuses_its_loop_and_other_threads_get_their_own() -> None:
    loops = ThreadLoops()
    first, second = loops.run(_running_loop()), loops.run(_running_loop())
    assert first is second
    elsewhere: list[asyncio.AbstractEventLoop] = []
    t = threading.Thread(target=lambda: elsewhere.append(loops.run(_running_loop())))
    t.start()
    t.join()
    assert elsewhere[0] is not first
    loops.close()
    assert first.is_closed()


def test_a_loop_is_closed_when_its_thread_ends() -> None:
    loops = ThreadLoops()
    made: list[asyncio.AbstractEventLoop] = []
    t = threading.Thread(target=lambda: made.append(loops.run(_running_loop())))
    t.start()
    t.join()
    gc.collect()
    assert made[0].is_closed()


def test_a_call_after_close_gets_a_new_loop() -> None:
    loops = ThreadLoops()
    first = loops.run(_running_loop())
    loops.close()
    again = loops.run(_running_loop())
    assert again is not first and not again.is_closed()
    loops.close()


def test_the_result_and_errors_reach_the_caller_and_the_loop_stays_usable() -> None:
    loops = ThreadLoops()

    async def fail() -> None:
        raise ValueError("boom")

    async def answer() -> int:
        return 42

    with pytest.raises(ValueError, match="boom"):
        loops.run(fail())
    assert loops.run(answer()) == 42
    loops.close()


def test_each_call_runs_in_a_copy_of_the_callers_context() -> None:
    loops = ThreadLoops()

    async def read_and_set() -> str:
        seen = VAR.get()
        VAR.set("inside")
        return seen

    token = VAR.set("caller")
    try:
        assert loops.run(read_and_set()) == "caller"
        assert VAR.get() == "caller"  # what the call set stays in the call
    finally:
        VAR.reset(token)
    assert loops.run(read_and_set()) == "unset"  # nothing carried over from the last call
    loops.close()


def test_tasks_a_call_leaves_behind_are_cancelled_and_awaited() -> None:
    loops = ThreadLoops()
    ended: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            ended.append("cleaned up")

    async def leave_one() -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(forever())
        await asyncio.sleep(0)
        return task

    left = loops.run(leave_one())
    assert left.cancelled() and ended == ["cleaned up"]
    assert not asyncio.all_tasks(loops.run(_running_loop()))
    loops.close()


def test_a_leftover_that_fails_on_cancellation_is_reported_not_raised() -> None:
    loops = ThreadLoops()
    reported: list[dict[str, Any]] = []

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            raise RuntimeError("failed while cancelled")

    async def leave_one() -> str:
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: reported.append(ctx))
        asyncio.get_running_loop().create_task(stubborn())
        await asyncio.sleep(0)
        return "done"

    assert loops.run(leave_one()) == "done"
    assert len(reported) == 1
    assert isinstance(reported[0]["exception"], RuntimeError)
    loops.close()


def test_ctrl_c_cancels_the_call_and_raises_keyboard_interrupt() -> None:
    assert threading.current_thread() is threading.main_thread()
    loops = ThreadLoops()
    seen: list[type[BaseException]] = []

    async def interrupted() -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.sleep(5)
        except BaseException as exc:
            seen.append(type(exc))
            raise

    with pytest.raises(KeyboardInterrupt):
        loops.run(interrupted())
    assert seen == [asyncio.CancelledError]  # cancelled at an await, not cut off mid-step
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    async def answer() -> int:
        return 42

    assert loops.run(answer()) == 42  # the loop still serves the next call
    loops.close()
