"""Who runs what: `Tasker.run()` drives the task from the caller's thread, sync handlers run on
handler threads unless their step or template opts into `run_inline`, and steps of parallel branches
still overlap (issue 13, point 3)."""

from __future__ import annotations

import asyncio
import gc
import threading
import uuid
from pathlib import Path

import pytest

from tasker import Tasker, TaskerInputError
from tasker.engine import thread_loops
from tests.fixture_types import LoadTemplate, WriteTemplate
from tests.integration import handlers as h
from tests.integration.support import step, template_yaml


def test_run_drives_the_task_from_the_callers_thread(tasker: Tasker, load: LoadTemplate) -> None:
    ref = load(
        "inline_mix",
        [
            step("threaded"),
            step("inline", after="threaded", run_inline=True),
            step(
                "inline_failing",
                after="inline",
                run_inline=True,
                handler_config={"fail": ["retryable"]},
            ),
        ],
    )
    key = f"inline-mix-{uuid.uuid4().hex}"  # the handlers' records are per key and per process
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "complete"
    me = threading.get_ident()
    thread_of = {c["step"]: c["thread"] for c in h.calls(key, kind="attempt")}
    assert thread_of["inline"] == me
    assert thread_of["inline_failing"] == me  # its retry too
    assert thread_of["threaded"] != me
    assert [c["attempt"] for c in h.calls(key, "inline_failing", "attempt")] == [1, 2]


def test_a_template_default_makes_its_untimed_steps_inline(
    tasker: Tasker, load: LoadTemplate
) -> None:
    ref = load(
        "inline_default",
        [
            step("quick"),
            step("timed", after="quick", handler_config={"timeout_seconds": 5}),
            step("opted_out", after="timed", run_inline=False),
        ],
        run_inline=True,
    )
    key = f"inline-default-{uuid.uuid4().hex}"
    tasker.run(tasker.create_task(ref, {"key": key}).id)
    me = threading.get_ident()
    thread_of = {c["step"]: c["thread"] for c in h.calls(key, kind="attempt")}
    assert thread_of == {
        "quick": me,
        "timed": thread_of["timed"],
        "opted_out": thread_of["opted_out"],
    }
    assert me not in (thread_of["timed"], thread_of["opted_out"])


def test_parallel_branches_still_overlap_when_run_drives_the_task(
    tasker: Tasker, load: LoadTemplate
) -> None:
    ref = load(
        "inline_parallel",
        [
            step("root"),
            step("left", after="root", handler_config={"sleep": 0.3}),
            step("right", after="root", handler_config={"sleep": 0.3}),
        ],
    )
    key = f"inline-parallel-{uuid.uuid4().hex}"
    tasker.run(tasker.create_task(ref, {"key": key}).id, concurrency=4)
    left, right = (h.calls(key, s, "attempt")[0] for s in ("left", "right"))
    assert left["start"] < right["end"] and right["start"] < left["end"]


def test_run_from_inside_an_event_loop_uses_the_background_loop(
    tasker: Tasker, load: LoadTemplate
) -> None:
    ref = load("inline_in_loop", [step("only", run_inline=True)])
    key = f"inline-in-loop-{uuid.uuid4().hex}"

    async def caller() -> str:
        task = tasker.run(tasker.create_task(ref, {"key": key}).id)
        return task.status

    assert asyncio.run(caller()) == "complete"
    [call] = h.calls(key, kind="attempt")
    assert call["thread"] != threading.get_ident()  # the engine's runner thread ran it


def test_each_thread_keeps_one_loop_across_runs_and_close_ends_them(
    tasker: Tasker, load: LoadTemplate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run()` makes a thread's event loop on its first call and reuses it (threads running at
    once each have their own); `close()` closes them."""
    made: list[asyncio.AbstractEventLoop] = []

    class Counted(thread_loops._HeldLoop):
        def __init__(self) -> None:
            super().__init__()
            made.append(self.loop)

    monkeypatch.setattr(thread_loops, "_HeldLoop", Counted)
    ref = load("loop_reuse", [step("a", run_inline=True), step("b", after="a")])

    def run_three() -> list[str]:
        return [
            tasker.run(tasker.create_task(ref, {"key": uuid.uuid4().hex}).id).status
            for _ in range(3)
        ]

    elsewhere: list[str] = []
    other = threading.Thread(target=lambda: elsewhere.extend(run_three()))
    other.start()
    here = run_three()
    other.join(timeout=30)
    assert here == elsewhere == ["complete"] * 3
    assert len(made) == 2  # one loop per thread, six runs
    gc.collect()
    assert made[0].is_closed() != made[1].is_closed()  # the ended thread's loop closed with it
    tasker.close()
    assert all(loop.is_closed() for loop in made)


def test_run_inline_with_a_timeout_is_refused_with_the_reason(
    tasker: Tasker, write_template: WriteTemplate
) -> None:
    text = template_yaml(
        "inline_timed",
        [step("only", run_inline=True, handler_config={"timeout_seconds": 1})],
    )
    path: Path = write_template(text, "inline_timed.yaml")
    with pytest.raises(TaskerInputError, match=r"run_inline and handler_config\.timeout_seconds"):
        tasker.load_templates(path)


def test_run_and_get_task_refuse_a_task_object_with_the_fix(
    tasker: Tasker, load: LoadTemplate
) -> None:
    ref = load("inline_args", [step("only", run_inline=True)])
    task = tasker.create_task(ref, {"key": f"inline-args-{uuid.uuid4().hex}"})
    with pytest.raises(TaskerInputError, match=rf"use {task.id} \(task.id\)"):
        tasker.run(task)  # type: ignore[arg-type]
    with pytest.raises(TaskerInputError, match="a task id is an integer, not 'abc'"):
        tasker.get_task("abc")  # type: ignore[arg-type]
    assert tasker.run(str(task.id)).status == "complete"  # type: ignore[arg-type]
