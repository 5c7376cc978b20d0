"""When a worker scans the queue again: after `notify()`, a poll interval, a retry coming due, or a
scan that filled its room; not after a finished attempt alone, whose children the cycle claims from
memory (a scan then would read an empty queue on every step)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from tasker.engine.wakeups import Wakeups


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


async def opened(poll: float = 10.0) -> Wakeups:
    w = Wakeups(poll)
    w.open(asyncio.get_running_loop())
    w.scanned(False)  # the last scan found less than its room: nothing waits
    return w


def test_a_finished_attempt_wakes_the_worker_without_a_scan() -> None:
    async def scenario() -> None:
        w = await opened()
        w.wake()
        started = time.monotonic()
        await w.wait(5.0)
        assert time.monotonic() - started < 1.0  # woken, not timed out
        assert not w.claim_due

    run(scenario())


def test_notify_from_another_thread_makes_a_scan_due() -> None:
    async def scenario() -> None:
        w = await opened()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, w.notify)
        await w.wait(5.0)
        assert w.claim_due

    run(scenario())


def test_a_timed_out_wait_makes_a_scan_due() -> None:
    async def scenario() -> None:
        w = await opened()
        await w.wait(0.01)
        assert w.claim_due

    run(scenario())


def test_a_poll_interval_without_a_scan_makes_one_due_even_under_steady_wakes() -> None:
    async def scenario() -> None:
        w = await opened(poll=0.05)
        deadline = time.monotonic() + 2.0
        while not w.claim_due and time.monotonic() < deadline:
            w.wake()  # attempts keep finishing faster than the poll interval
            await w.wait(5.0)
            await asyncio.sleep(0.005)
        assert w.claim_due

    run(scenario())


def test_a_retry_coming_due_makes_a_scan_due() -> None:
    async def scenario() -> None:
        w = await opened()
        now = time.monotonic()
        w.retry_at(now + 0.02)
        assert w.until_retry(now) == pytest.approx(0.02)
        w.wake()
        await w.wait(5.0)
        assert not w.claim_due  # not yet due
        await asyncio.sleep(0.03)
        w.wake()
        await w.wait(5.0)
        assert w.claim_due
        assert w.until_retry(time.monotonic()) == float("inf")  # consumed

    run(scenario())


def test_a_full_scan_keeps_the_next_one_due() -> None:
    async def scenario() -> None:
        w = await opened()
        w.scanned(True)
        assert w.claim_due

    run(scenario())
