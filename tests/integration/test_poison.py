"""One bad step never costs another: whatever a handler does, the worker lives and innocent steps
run once.

Each poison runs beside eight innocent tasks on both stores; the poison step must end in a definite
state with a clear error, and every innocent step must have executed exactly once (issue #9).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasker import Tasker
from tasker.domain.failures import is_system_fault
from tasker.domain.storable import MAX_MESSAGE_CHARS
from tests.chaos.support import Fleet, wait_for
from tests.integration.poison_handlers import runs

P = "tests.integration.poison_handlers"
FAST = {"backoff_base_seconds": 0.01, "backoff_max_seconds": 0.02}


def _write(directory: Path, name: str, steps: list[dict[str, Any]], **top: Any) -> Path:
    data = {
        "name": name,
        "namespace_name": "poison",
        "version": "1.0.0",
        "retry": dict(FAST),
        "step_templates": steps,
        **top,
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _innocent_steps(sleep: float = 0.0) -> list[dict[str, Any]]:
    cfg = {"sleep": sleep}
    return [
        {"name": "a", "handler_class": f"{P}:Innocent", "handler_config": cfg},
        {
            "name": "b",
            "handler_class": f"{P}:Innocent",
            "handler_config": cfg,
            "depends_on_step": "a",
        },
        {
            "name": "c",
            "handler_class": f"{P}:Innocent",
            "handler_config": cfg,
            "depends_on_step": "b",
        },
    ]


def _poison_template(
    directory: Path,
    mode: str,
    *,
    handler: str = "Poison",
    retry_limit: int = 2,
    timeout: float | None = None,
) -> Path:
    cfg: dict[str, Any] = {"mode": mode}
    if timeout is not None:
        cfg["timeout_seconds"] = timeout
    return _write(
        directory,
        f"bad_{mode}",
        [
            {
                "name": "bad",
                "handler_class": f"{P}:{handler}",
                "default_retry_limit": retry_limit,
                "handler_config": cfg,
            },
        ],
    )


def _run_beside_innocents(
    tasker: Tasker, tmp_path: Path, mode: str, **kw: Any
) -> tuple[Any, list[int]]:
    templates = tmp_path / "templates"
    tasker.load_templates(_poison_template(templates, mode, **kw))
    tasker.load_templates(_write(templates, "innocent", _innocent_steps(0.01)))
    innocent = [
        tasker.create_task("poison/innocent", {"dir": str(tmp_path), "n": i}).id for i in range(4)
    ]
    bad = tasker.create_task(f"poison/bad_{mode}", {"dir": str(tmp_path)}).id
    innocent += [
        tasker.create_task("poison/innocent", {"dir": str(tmp_path), "n": i}).id
        for i in range(4, 8)
    ]
    tasker.work(concurrency=6)
    for task_id in innocent:
        task = tasker.get_task(task_id)
        assert task.status == "complete", (task.status, [s.last_error for s in task.steps])
        for name in "abc":
            assert runs(tmp_path, task_id, name) == 1, (
                f"innocent step {name} of task {task_id} ran again"
            )
    return tasker.get_task(bad).step("bad"), innocent


def _stored_json_ok(step: Any) -> None:
    """What was stored reads back and encodes as strict UTF-8 JSON (what the API will send)."""
    json.dumps({"results": step.results, "error": step.last_error}, allow_nan=False).encode("utf-8")


@pytest.mark.parametrize(
    "mode,cls,fragment",
    [
        ("nul_result", "InvalidResultError", "results.text: contains a NUL character"),
        ("nan_result", "InvalidResultError", "results.values[1]: is nan"),
        ("inf_result", "InvalidResultError", "results.nested.x: is inf"),
        (
            "surrogate_result",
            "InvalidResultError",
            "results.s: contains a lone surrogate (\\udc80)",
        ),
        ("set_result", "InvalidResultError", "results.s: is a set"),
        ("self_reference", "InvalidResultError", "nested deeper than 100 levels"),
    ],
)
def test_unstorable_results_fail_the_step_naming_the_path(
    tasker: Tasker, tmp_path: Path, mode: str, cls: str, fragment: str
) -> None:
    step, _ = _run_beside_innocents(tasker, tmp_path, mode)
    assert step.status == "error"
    assert step.attempts == 1, "an unstorable result is a bug: it is not retried"
    assert step.last_error["class"] == cls
    assert fragment in step.last_error["message"]
    assert step.results is None
    _stored_json_ok(step)


def test_error_text_is_escaped_and_stored(tasker: Tasker, tmp_path: Path) -> None:
    step, _ = _run_beside_innocents(tasker, tmp_path, "nul_error")
    assert step.status == "error" and step.attempts == 2
    assert step.last_error["class"] == "RuntimeError"
    assert "bad byte \\x00 in the middle" in step.last_error["message"]
    _stored_json_ok(step)


def test_lone_surrogate_in_an_error_is_escaped(tasker: Tasker, tmp_path: Path) -> None:
    step, _ = _run_beside_innocents(tasker, tmp_path, "surrogate_error")
    assert step.status == "error"
    assert "lone \\udc80 surrogate" in step.last_error["message"]
    _stored_json_ok(step)


def test_huge_error_messages_are_cut_with_their_size_noted(tasker: Tasker, tmp_path: Path) -> None:
    step, _ = _run_beside_innocents(tasker, tmp_path, "huge_error")
    message = step.last_error["message"]
    assert len(message) < MAX_MESSAGE_CHARS + 200
    assert "[truncated: 3,000,000 characters in all]" in message


@pytest.mark.parametrize(
    "mode", ["system_exit", "keyboard_interrupt", "generator_exit", "cancelled"]
)
@pytest.mark.parametrize("handler", ["Poison", "AsyncPoison"])
def test_base_exceptions_from_handlers_are_the_steps_failure(
    tasker: Tasker, tmp_path: Path, mode: str, handler: str
) -> None:
    step, _ = _run_beside_innocents(tasker, tmp_path, mode, handler=handler)
    assert step.status == "error" and step.attempts == 2, step.last_error
    expected = {
        "system_exit": "SystemExit",
        "keyboard_interrupt": "KeyboardInterrupt",
        "generator_exit": "GeneratorExit",
        "cancelled": "CancelledError",
    }[mode]
    assert step.last_error["class"] == expected
    assert step.last_error["system_fault"] is False


def test_exception_with_a_broken_str_is_recorded(tasker: Tasker, tmp_path: Path) -> None:
    step, _ = _run_beside_innocents(tasker, tmp_path, "broken_str")
    assert step.status == "error" and step.attempts == 2
    assert step.last_error["class"] == "BrokenStr"
    assert "str() raised RuntimeError" in step.last_error["message"]


@pytest.mark.parametrize("mode,shown", [("bad_retry_after", "soon"), ("nan_retry_after", "nan")])
def test_unusable_retry_after_falls_back_to_backoff(
    tasker: Tasker, tmp_path: Path, mode: str, shown: str
) -> None:
    step, _ = _run_beside_innocents(tasker, tmp_path, mode)
    assert step.status == "error" and step.attempts == 2
    assert step.last_error["class"] == "RetryableError"
    assert step.last_error["retry_after_ignored"] == shown


def test_an_outcome_the_store_refuses_costs_no_other_step(tasker: Tasker, tmp_path: Path) -> None:
    step, _ = _run_beside_innocents(tasker, tmp_path, "sneaky_result")
    assert step.status == "error"
    assert step.last_error["class"] == "OutcomeNotStorable"
    assert "the store refused this attempt's outcome (complete)" in step.last_error["message"]
    assert step.results is None


@pytest.mark.parametrize("mode", ["swallow_cancel", "ignore_cancel"])
def test_async_handler_that_swallows_cancellation_is_timed_out(
    tasker: Tasker, tmp_path: Path, mode: str
) -> None:
    step, _ = _run_beside_innocents(
        tasker, tmp_path, mode, handler="AsyncPoison", retry_limit=1, timeout=0.2
    )
    assert step.status == "error", step.last_error
    assert step.results is None, "a result returned after the timeout must not count"
    assert step.last_error["class"] == "StepTimeoutError"
    assert "timed out after 0.2s" in step.last_error["message"]
    if mode == "ignore_cancel":
        assert "ignored cancellation" in step.last_error["message"]
        # the handler was left running; let it end before the engine's loop closes
        wait_for(lambda: any(tmp_path.glob("*-bad.ended")), 10, "the abandoned handler to end")
        time.sleep(0.1)


def test_sync_timeouts_count_from_the_handlers_start(tasker: Tasker, tmp_path: Path) -> None:
    """Eight hanging handlers at concurrency 2: none spends an attempt before it starts, and quick
    steps are not stuck behind the hung threads."""
    templates = tmp_path / "templates"
    tasker.load_templates(
        _write(
            templates,
            "hang",
            [
                {
                    "name": "hang",
                    "handler_class": f"{P}:Hang",
                    "default_retry_limit": 1,
                    "handler_config": {"timeout_seconds": 0.3, "hang": 2.0},
                },
            ],
        )
    )
    tasker.load_templates(_write(templates, "innocent", _innocent_steps()))
    hung = [tasker.create_task("poison/hang", {"dir": str(tmp_path), "n": i}).id for i in range(8)]
    quick = [
        tasker.create_task("poison/innocent", {"dir": str(tmp_path), "n": i}).id for i in range(4)
    ]
    w = tasker.worker(concurrency=2)
    tasker.work(worker=w)
    for task_id in hung:
        step = tasker.get_task(task_id).step("hang")
        assert step.last_error is not None
        assert step.status == "error" and step.last_error["class"] == "StepTimeoutError"
        assert runs(tmp_path, task_id, "hang", "starts") == 1, (
            "an attempt was spent before its handler started"
        )
    for task_id in quick:
        assert tasker.get_task(task_id).status == "complete"
    assert w.threads.stuck <= 8


def test_handler_bugs_do_not_open_the_default_circuit(tasker: Tasker, tmp_path: Path) -> None:
    """A KeyError in one template's handler spends that step's attempts; it is no outage of
    `default`, so an innocent template sharing the system runs as if alone."""
    templates = tmp_path / "templates"
    tasker.load_templates(_poison_template(templates, "key_error", retry_limit=3))
    tasker.load_templates(_write(templates, "innocent", _innocent_steps()))
    bad = [
        tasker.create_task("poison/bad_key_error", {"dir": str(tmp_path), "n": i}).id
        for i in range(30)
    ]
    good = [
        tasker.create_task("poison/innocent", {"dir": str(tmp_path), "n": i}).id for i in range(30)
    ]
    tasker.work(concurrency=4)
    for task_id in bad:
        step = tasker.get_task(task_id).step("bad")
        assert step.status == "error" and step.attempts == 3
        assert step.last_error is not None
        assert step.last_error["class"] == "KeyError" and step.last_error["system_fault"] is False
    for task_id in good:
        task = tasker.get_task(task_id)
        assert task.status == "complete" and all(s.attempts == 1 for s in task.steps)
    circuits = {s["name"]: s for s in tasker.systems.report()}
    default = circuits.get("default")
    assert default is None or default["circuit_state"] == "closed"


def test_a_configured_default_system_still_breaks(tasker: Tasker, tmp_path: Path) -> None:
    """Opting the default system in gives it a circuit like any other (retryable errors count)."""
    tasker.systems.configure("default", failure_threshold=2)
    templates = tmp_path / "templates"
    tasker.load_templates(
        _write(
            templates,
            "down",
            [
                {
                    "name": "call",
                    "handler_class": "tests.integration.handlers:Scripted",
                    "default_retry_limit": 5,
                    "handler_config": {"always_fail": "retryable"},
                },
            ],
        )
    )
    ids = [tasker.create_task("poison/down", {"key": f"{tmp_path}-{i}"}).id for i in range(3)]
    w = tasker.worker(concurrency=3)

    async def run_briefly() -> None:
        job = asyncio.ensure_future(w.run())
        await asyncio.sleep(1.0)
        w.stop()
        await job

    asyncio.run(run_briefly())
    states = {s["name"]: s["circuit_state"] for s in tasker.systems.report()}
    assert states.get("default") in {"open", "half_open"}, states
    assert all(tasker.get_task(i).status != "error" for i in ids)


def test_system_fault_classification() -> None:
    import httpx

    from tasker import PermanentError, RetryableError

    assert is_system_fault(ConnectionRefusedError())
    assert is_system_fault(TimeoutError())
    assert is_system_fault(httpx.ConnectError("refused"))
    assert is_system_fault(httpx.ReadTimeout("slow"))
    assert is_system_fault(RetryableError("503"))
    assert not is_system_fault(RetryableError("not yet", system_fault=False))
    assert not is_system_fault(PermanentError("declined"))
    assert not is_system_fault(KeyError("x"))
    assert not is_system_fault(ValueError("x"))
    assert not is_system_fault(SystemExit(1))


# -- a real `tasker worker` process ----------------------------------------------------------------
PROCESS_POISONS = [
    "system_exit",
    "keyboard_interrupt",
    "nul_error",
    "nan_result",
    "surrogate_result",
    "sneaky_result",
    "broken_str",
    "bad_retry_after",
    "cancelled",
    "huge_error",
]


@pytest.mark.timeout(120)
def test_a_worker_process_survives_every_poison(
    tasker: Tasker, store_url: str, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    paths = [_poison_template(templates, mode) for mode in PROCESS_POISONS]
    paths.append(_write(templates, "innocent", _innocent_steps(0.02)))
    for path in paths:
        tasker.load_templates(path)
    with Fleet(store_url, templates, tmp_path / "logs", concurrency=4, poll_interval=0.05) as fleet:
        w = fleet.spawn()
        w.wait_started()
        ctx = {"dir": str(tmp_path)}
        innocent = [tasker.create_task("poison/innocent", {**ctx, "n": i}).id for i in range(8)]
        bad = [tasker.create_task(f"poison/bad_{mode}", ctx).id for mode in PROCESS_POISONS]
        innocent += [
            tasker.create_task("poison/innocent", {**ctx, "n": i}).id for i in range(8, 16)
        ]
        finished = {"complete", "error"}
        wait_for(
            lambda: all(t.status in finished for t in tasker.get_tasks(bad + innocent)),
            60,
            "every task to finish",
        )
        assert w.alive(), fleet.logs()
        for task_id, mode in zip(bad, PROCESS_POISONS):
            step = tasker.get_task(task_id).step("bad")
            assert step.status == "error", (mode, step.status, step.last_error)
        for task_id in innocent:
            assert tasker.get_task(task_id).status == "complete"
            assert [runs(tmp_path, task_id, n) for n in "abc"] == [1, 1, 1]
        assert fleet.stop_all(20) == {w.pid: 0}, fleet.logs()


@pytest.mark.timeout(60)
def test_a_worker_with_hung_sync_handlers_exits_on_sigterm_within_its_grace(
    tasker: Tasker, store_url: str, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    tasker.load_templates(
        _write(
            templates,
            "hang",
            [
                {
                    "name": "hang",
                    "handler_class": f"{P}:Hang",
                    "default_retry_limit": 1,
                    "handler_config": {"timeout_seconds": 0.2, "hang": 60.0},
                },
            ],
        )
    )
    with Fleet(
        store_url,
        templates,
        tmp_path / "logs",
        concurrency=2,
        grace_seconds=1.0,
        poll_interval=0.05,
    ) as fleet:
        w = fleet.spawn()
        w.wait_started()
        ids = [
            tasker.create_task("poison/hang", {"dir": str(tmp_path), "n": i}).id for i in range(4)
        ]
        wait_for(
            lambda: all(t.status == "error" for t in tasker.get_tasks(ids)),
            30,
            "every hang to time out",
        )
        t0 = time.monotonic()
        w.signal(signal.SIGTERM)
        code = w.wait(6.0)
        assert code == 0, f"exit {code} {time.monotonic() - t0:.1f}s after SIGTERM: {fleet.logs()}"
    assert "handler thread(s) stuck" in w.log()


def test_run_returns_when_a_handler_calls_sys_exit(tasker: Tasker, tmp_path: Path) -> None:
    """`Tasker.run` used to hang forever when a handler raised a BaseException."""
    tasker.load_templates(_poison_template(tmp_path / "templates", "system_exit", retry_limit=1))
    task = tasker.run(tasker.create_task("poison/bad_system_exit", {"dir": str(tmp_path)}).id)
    assert task.status == "error"
    error = task.step("bad").last_error
    assert error is not None and error["class"] == "SystemExit"


def test_stuck_handler_threads_are_reported_as_a_metric(tasker: Tasker, tmp_path: Path) -> None:
    from tasker.observability.metrics import EngineMetrics, set_engine_metrics

    fresh = EngineMetrics()
    previous = set_engine_metrics(fresh)
    try:
        tasker.load_templates(
            _write(
                tmp_path / "templates",
                "hang",
                [
                    {
                        "name": "hang",
                        "handler_class": f"{P}:Hang",
                        "default_retry_limit": 1,
                        "handler_config": {"timeout_seconds": 0.1, "hang": 1.5},
                    },
                ],
            )
        )
        ids = [
            tasker.create_task("poison/hang", {"dir": str(tmp_path), "n": i}).id for i in range(2)
        ]
        w = tasker.worker(concurrency=2)
        tasker.work(worker=w)
        assert all(t.status == "error" for t in tasker.get_tasks(ids))
        assert (
            fresh.registry.get_sample_value("tasker_handler_threads_stuck", {"worker": w.id}) == 2
        )
    finally:
        set_engine_metrics(previous)


def test_a_probe_that_fails_by_its_own_bug_closes_the_circuit(
    tasker: Tasker, tmp_path: Path
) -> None:
    """The first attempt's RetryableError opens the circuit (threshold 1); the probe then fails with
    a ValueError, which says nothing about the system: the circuit closes and the step spends the
    attempt.
    """
    templates = tmp_path / "templates"
    tasker.load_templates(
        _write(
            templates,
            "probe",
            [
                {
                    "name": "call",
                    "handler_class": "tests.integration.handlers:Scripted",
                    "default_retry_limit": 3,
                    "dependent_system": "svc",
                    "handler_config": {"fail": ["retryable", "value"]},
                },
            ],
            dependent_systems={"svc": {"failure_threshold": 1, "cooldown_seconds": 0.2}},
        )
    )
    task = tasker.run(tasker.create_task("poison/probe", {"key": f"{tmp_path}-probe"}).id)
    assert task.status == "complete"
    assert task.step("call").attempts == 3, "the failed probe's attempt is spent, not refunded"
    moves = [
        (r["from_state"], r["to_state"], r["reason"]) for r in tasker.systems.circuit_history("svc")
    ]
    assert [m[:2] for m in moves] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert {s["name"]: s["circuit_state"] for s in tasker.systems.report()}["svc"] == "closed"
