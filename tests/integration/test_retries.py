"""Failure classification, retries with backoff, `retry_after` and timeouts, observed end to end."""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tasker import Tasker
from tests.fixture_types import LoadTemplate, MakeTasker, WriteTemplate
from tests.integration import handlers as h
from tests.integration.support import step, step_history, to_states


def _gaps(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """Seconds between each `waiting_retry` row and the next `in_progress` row of one step."""
    out = []
    for i, row in enumerate(rows):
        if row["to_state"] == "waiting_retry":
            nxt = next(r for r in rows[i + 1 :] if r["to_state"] == "in_progress")
            out.append((nxt["at"] - row["at"]).total_seconds())
    return out


def test_retry_then_success(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load(
        "flaky",
        [step("a", handler_config={"fail": ["retryable", "retryable"]}), step("b", after="a")],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)

    assert task.status == "complete"
    a = task.step("a")
    assert a.status == "complete"
    assert a.attempts == 3
    assert a.results == {"step": "a", "attempt": 3, "value": "a"}
    assert a.last_error is None
    assert [c["attempt"] for c in h.calls(key, "a")] == [1, 2, 3]
    # The idempotency key is stable across the retries of the step.
    assert len({c["idem"] for c in h.calls(key, "a")}) == 1
    rows = step_history(tasker, task.id, "a")
    assert to_states(rows) == [
        "ready",
        "in_progress",
        "waiting_retry",
        "in_progress",
        "waiting_retry",
        "in_progress",
        "complete",
    ]
    retries = [r for r in rows if r["to_state"] == "waiting_retry"]
    assert [r["attempt"] for r in retries] == [1, 2]
    assert {r["error_class"] for r in retries} == {"RetryableError"}
    assert [r["attempt"] for r in rows if r["to_state"] == "in_progress"] == [1, 2, 3]
    assert task.step("b").attempts == 1 and task.step("b").status == "complete"


def test_retries_exhausted(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load(
        "exhaust",
        [
            step("a", default_retry_limit=4, handler_config={"always_fail": "retryable"}),
            step("b", after="a"),
        ],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)

    assert task.status == "error"
    a = task.step("a")
    assert a.status == "error"
    assert a.retry_limit == 4
    assert a.attempts == 4
    assert len(h.calls(key, "a")) == 4
    assert a.last_error is not None
    assert a.last_error["class"] == "RetryableError"
    assert a.last_error["error_code"] == "TRANSIENT"
    assert "gave up after 4 attempts" in a.last_error["message"]
    assert task.step("b").status == "pending"
    rows = step_history(tasker, task.id, "a")
    assert to_states(rows).count("waiting_retry") == 3
    assert (rows[-1]["from_state"], rows[-1]["to_state"], rows[-1]["attempt"]) == (
        "in_progress",
        "error",
        4,
    )


def test_not_retryable_step_is_never_retried(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load(
        "once",
        [
            step(
                "a",
                default_retryable=False,
                default_retry_limit=5,
                handler_config={"always_fail": "retryable"},
            )
        ],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)

    assert task.status == "error"
    a = task.step("a")
    assert a.attempts == 1
    assert a.retryable is False
    assert a.last_error is not None
    assert a.last_error["class"] == "RetryableError"
    assert "gave up" not in a.last_error["message"]
    assert len(h.calls(key, "a")) == 1
    assert "waiting_retry" not in to_states(step_history(tasker, task.id, "a"))


def test_unexpected_exception_is_retryable(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load("bug", [step("a", handler_config={"fail": ["value"]})])
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)

    assert task.status == "complete"
    assert task.step("a").attempts == 2
    rows = step_history(tasker, task.id, "a")
    retry = next(r for r in rows if r["to_state"] == "waiting_retry")
    assert retry["error_class"] == "ValueError"
    assert retry["error_message"] == "a failed on attempt 1"


def test_unexpected_exception_exhausts_with_a_traceback(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("bug", [step("a", default_retry_limit=2, handler_config={"always_fail": "value"})])
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)

    a = task.step("a")
    assert (task.status, a.status, a.attempts) == ("error", "error", 2)
    assert a.last_error is not None
    assert a.last_error["class"] == "ValueError"
    assert a.last_error["retryable"] is True
    assert "Traceback" in a.last_error["traceback"]


def test_retry_after_is_honoured(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load("rate_limited", [step("a", handler_config={"fail": ["retry_after:0.3"]})])
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)

    assert task.status == "complete"
    assert task.step("a").attempts == 2
    first, second = h.calls(key, "a")
    assert second["start"] - first["end"] >= 0.3
    rows = step_history(tasker, task.id, "a")
    retry = next(r for r in rows if r["to_state"] == "waiting_retry")
    assert retry["error_class"] == "RetryableError"
    assert _gaps(rows)[0] >= 0.3


def test_exponential_backoff_grows(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load(
        "backoff",
        [
            step(
                "a",
                default_retry_limit=4,
                retry={"backoff_base_seconds": 0.15, "backoff_max_seconds": 5, "jitter": 0},
                handler_config={"fail": ["retryable", "retryable", "retryable"]},
            )
        ],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)

    assert task.status == "complete"
    assert task.step("a").attempts == 4
    gaps = _gaps(step_history(tasker, task.id, "a"))
    assert len(gaps) == 3
    # base * 2**(attempt-1): at least 0.15, 0.3 and 0.6 s. Only lower bounds are asserted: the
    # engine never starts early, but a busy machine may start late, so comparing measured gaps
    # with each other would be a timing assertion. A constant (0.15) or linear (0.45) backoff
    # fails the third bound, so the bounds alone prove the growth.
    expected = [0.15, 0.3, 0.6]
    assert all(gap >= bound for gap, bound in zip(gaps, expected, strict=True))
    attempts = h.calls(key, "a")
    handler_gaps = [b["start"] - a["end"] for a, b in itertools.pairwise(attempts)]
    assert all(gap >= bound for gap, bound in zip(handler_gaps, expected, strict=True))


def test_backoff_is_capped(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load(
        "capped",
        [
            step(
                "a",
                default_retry_limit=3,
                retry={"backoff_base_seconds": 0.05, "backoff_max_seconds": 0.05, "jitter": 0},
                handler_config={"always_fail": "retryable"},
            )
        ],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.step("a").attempts == 3
    rows = step_history(tasker, task.id, "a")
    retries = [r for r in rows if r["to_state"] == "waiting_retry"]
    assert len(retries) == 2
    assert all(g >= 0.05 for g in _gaps(rows))


def test_async_handler_past_its_timeout_is_cancelled(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "slow_async",
        [
            step(
                "a",
                "AsyncSleeper",
                default_retry_limit=2,
                handler_config={"timeout_seconds": 0.2, "sleep": 5},
            )
        ],
    )
    started = time.monotonic()
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)

    assert time.monotonic() - started < 5  # the handler did not sleep to the end
    a = task.step("a")
    assert (task.status, a.status, a.attempts) == ("error", "error", 2)
    assert a.last_error is not None
    assert a.last_error["class"] == "StepTimeoutError"
    assert "timed out after 0.2s" in a.last_error["message"]
    assert a.results is None
    cancelled = h.calls(key, "a", kind="cancelled")
    assert [c["attempt"] for c in cancelled] == [1, 2]
    assert h.calls(key, "a", kind="finished") == []
    for attempt, cancel in zip(h.calls(key, "a", kind="attempt"), cancelled):
        assert cancel["at"] - attempt["start"] >= 0.19
    rows = step_history(tasker, task.id, "a")
    assert [r["error_class"] for r in rows if r["to_state"] in ("waiting_retry", "error")] == [
        "StepTimeoutError",
        "StepTimeoutError",
    ]


def test_sync_handler_past_its_timeout_is_failed_and_its_late_result_discarded(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "slow_sync",
        [
            step("a", "SlowFirstAttempt", handler_config={"timeout_seconds": 0.2, "sleep": 0.6}),
            step("b", after="a"),
        ],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)

    assert task.status == "complete"
    a = task.step("a")
    assert a.attempts == 2
    assert a.results == {"step": "a", "late": False, "attempt": 2}
    rows = step_history(tasker, task.id, "a")
    retry = next(r for r in rows if r["to_state"] == "waiting_retry")
    assert retry["error_class"] == "StepTimeoutError"
    assert retry["attempt"] == 1
    # The first attempt's thread returns its late result after the fact: nothing may change.
    deadline = time.monotonic() + 5
    while not h.calls(key, "a", kind="late_return") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h.calls(key, "a", kind="late_return")
    time.sleep(0.2)
    after = tasker.get_task(task.id)
    assert after.step("a").results == {"step": "a", "late": False, "attempt": 2}
    assert after.step("a").attempts == 2
    assert to_states(step_history(tasker, task.id, "a")) == to_states(rows)
    # b saw the result of the attempt that counted.
    assert h.calls(key, "b")[0]["results"]["a"]["late"] is False


def test_sync_timeout_exhausted_is_an_error(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load(
        "slow_sync_once",
        [
            step(
                "a",
                "SlowFirstAttempt",
                default_retry_limit=1,
                handler_config={"timeout_seconds": 0.1, "sleep": 0.4},
            )
        ],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    a = task.step("a")
    assert (task.status, a.status, a.attempts) == ("error", "error", 1)
    assert a.last_error is not None
    assert a.last_error["class"] == "StepTimeoutError"
    assert a.results is None
    deadline = time.monotonic() + 5
    while not h.calls(key, "a", kind="late_return") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)
    assert tasker.get_task(task.id).step("a").results is None
    assert tasker.get_task(task.id).step("a").status == "error"


def test_result_that_is_not_a_json_object_fails_the_step_permanently(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "bad_results",
        [
            step("as_list", "BadResult", handler_config={"kind": "list"}),
            step("not_json", "BadResult", handler_config={"kind": "object"}),
        ],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "error"
    for name, words in (("as_list", "returned list"), ("not_json", "not JSON")):
        s = task.step(name)
        assert (s.status, s.attempts) == ("error", 1)
        assert s.last_error is not None
        assert words in s.last_error["message"]
        assert s.results is None
        assert len(h.calls(key, name)) == 1


def test_long_step_keeps_its_lease_by_heartbeat(
    make_tasker: MakeTasker, write_template: WriteTemplate, key: str
) -> None:
    """A step that runs for several lease periods is not reclaimed by another worker while it
    heartbeats."""
    from tests.integration.support import template_yaml

    path = write_template(
        template_yaml("long", [step("a", handler_config={"sleep": 1.2}), step("b", after="a")])
    )
    engines = [make_tasker(lease_seconds=0.4) for _ in range(2)]
    engines[0].load_templates(path)
    task_id = engines[0].create_task("itest/long", {"key": key}).id
    import threading

    threads = [
        threading.Thread(target=e.work, kwargs={"until_idle": True}, daemon=True) for e in engines
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    task = engines[0].get_task(task_id)
    assert task.status == "complete"
    assert task.step("a").attempts == 1
    assert len(h.calls(key, "a")) == 1
    assert "waiting_retry" not in to_states(step_history(engines[0], task_id, "a"))
