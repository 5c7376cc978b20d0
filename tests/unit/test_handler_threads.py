"""Handler threads: a hung handler costs its own thread and nothing else, within a bounded number of
threads."""

from __future__ import annotations

import threading
import time

import pytest

from tasker.engine.handler_threads import HandlerThreads


def _wait(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_a_call_reports_when_it_started_and_what_it_returned() -> None:
    pool = HandlerThreads(2)
    before = time.perf_counter()
    call = pool.submit(lambda x: x * 2, 21)
    assert call.done.result(5) == 42
    assert call.started_at is not None and before <= call.started_at <= time.perf_counter()
    pool.shutdown()


def test_base_exceptions_are_handed_back_not_raised_in_the_thread() -> None:
    pool = HandlerThreads(1)

    def leave() -> None:
        raise SystemExit(3)

    call = pool.submit(leave)
    with pytest.raises(SystemExit):
        call.done.result(5)
    assert pool.submit(lambda: "still here").done.result(5) == "still here"
    pool.shutdown()


def test_an_abandoned_hung_call_is_replaced_so_the_next_call_runs_at_once() -> None:
    release = threading.Event()
    pool = HandlerThreads(1)
    hung = pool.submit(release.wait, 10)
    _wait(lambda: hung.started_at is not None)
    hung.abandon()
    assert pool.stuck == 1 and pool.overflow == 0
    quick = pool.submit(lambda: "quick")
    assert quick.done.result(2) == "quick", "the next call waited for the hung thread"
    release.set()
    _wait(lambda: pool.stuck == 0)
    pool.shutdown()


def test_stuck_threads_past_the_cap_take_room_and_are_not_replaced() -> None:
    release = threading.Event()
    pool = HandlerThreads(2, max_stuck=1, name="capped-pool")
    calls = [pool.submit(release.wait, 10) for _ in range(2)]
    for c in calls:
        _wait(lambda c=c: c.started_at is not None)
        c.abandon()
    assert pool.stuck == 2 and pool.overflow == 1
    one = pool.submit(lambda: 1)
    assert one.done.result(2) == 1  # one working thread is left
    threads = {t.name for t in threading.enumerate() if t.name.startswith("capped-pool")}
    assert len(threads) <= 2 + 1, threads  # size + max_stuck
    release.set()
    _wait(lambda: pool.stuck == 0 and pool.overflow == 0)
    pool.shutdown()


def test_a_queued_call_that_is_abandoned_never_runs() -> None:
    release = threading.Event()
    ran = threading.Event()
    pool = HandlerThreads(1, max_stuck=0)
    busy = pool.submit(release.wait, 10)
    _wait(lambda: busy.started_at is not None)
    queued = pool.submit(ran.set)
    queued.abandon()
    release.set()
    busy.done.result(5)
    assert pool.submit(lambda: "after").done.result(5) == "after"
    assert not ran.is_set() and queued.started_at is None and queued.done.cancelled()
    pool.shutdown()


def test_threads_are_daemons_so_a_stopping_process_never_waits_for_them() -> None:
    release = threading.Event()
    pool = HandlerThreads(1, name="daemon-pool")
    call = pool.submit(release.wait, 10)
    _wait(lambda: call.started_at is not None)
    worker_threads = [t for t in threading.enumerate() if t.name.startswith("daemon-pool")]
    assert worker_threads and all(t.daemon for t in worker_threads)
    release.set()
    pool.shutdown()


def test_a_pool_needs_a_thread() -> None:
    with pytest.raises(ValueError):
        HandlerThreads(0)
