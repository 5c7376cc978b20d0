"""Step and task handlers used by the integration tests, with thread-safe recorders to observe them.

Every task context carries a `key` unique to the test (and store) that created it; handlers record
what they saw under that key, so tests running on both stores in one process never see each other's
calls. Handlers are driven by their `handler_config` so that one class serves many templates.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from tasker import PermanentError, RetryableError, StepContext, StepHandler, TaskHandler

_lock = threading.Lock()
_calls: dict[str, list[dict[str, Any]]] = defaultdict(list)
_gates: dict[str, threading.Event] = {}
_started: dict[str, threading.Event] = {}
_faults: set[tuple[str, str]] = set()


# -- recorders -------------------------------------------------------------------------------------
def record(key: str, **entry: Any) -> dict[str, Any]:
    with _lock:
        _calls[key].append(entry)
    return entry


def calls(key: str, step: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
    """What handlers recorded under `key`, optionally only one step's and one kind of entry."""
    with _lock:
        found = list(_calls.get(key, []))
    return [
        c
        for c in found
        if (step is None or c.get("step") == step) and (kind is None or c.get("kind") == kind)
    ]


def gate(key: str) -> threading.Event:
    """An event a `Gated` handler waits for before it returns (set it to let the step finish)."""
    with _lock:
        return _gates.setdefault(key, threading.Event())


def started(key: str) -> threading.Event:
    """Set by a `Gated` handler once it is running."""
    with _lock:
        return _started.setdefault(key, threading.Event())


def set_fault(key: str, step: str, on: bool = True) -> None:
    with _lock:
        if on:
            _faults.add((key, step))
        else:
            _faults.discard((key, step))


def _has_fault(key: str, step: str) -> bool:
    with _lock:
        return (key, step) in _faults


def _key(ctx: StepContext) -> str:
    return str(ctx.context.get("key", "no-key"))


def _raise(kind: str, ctx: StepContext) -> None:
    message = f"{ctx.step_name} failed on attempt {ctx.attempt}"
    if kind == "retryable":
        raise RetryableError(message, error_code="TRANSIENT")
    if kind == "permanent":
        raise PermanentError(message, error_code="DECLINED", context={"step": ctx.step_name})
    if kind == "value":
        raise ValueError(message)
    if kind == "not_yet":
        raise RetryableError(
            f"{ctx.step_name}: not ready yet", retry_after=0.01, system_fault=False
        )
    if kind.startswith("retry_after:"):
        raise RetryableError(
            message, retry_after=float(kind.split(":", 1)[1]), error_code="RATE_LIMITED"
        )
    raise AssertionError(f"unknown failure kind {kind!r}")


# -- step handlers ---------------------------------------------------------------------------------
class Scripted(StepHandler):
    """Records each attempt; `handler_config.fail` lists a failure kind per attempt (null: succeed).

    `handler_config.sleep` makes the attempt take that long; the result names the step and the
    attempt and echoes `handler_config.value`.
    """

    def process(self, ctx: StepContext) -> dict[str, Any]:
        key = _key(ctx)
        cfg = ctx.handler_config
        start = time.monotonic()
        entry = record(
            key,
            kind="attempt",
            step=ctx.step_name,
            attempt=ctx.attempt,
            start=start,
            results={k: dict(v) for k, v in ctx.results.items()},
            idem=ctx.idempotency_key,
            context=dict(ctx.context),
            thread=threading.get_ident(),
        )
        if cfg.get("sleep"):
            time.sleep(float(cfg["sleep"]))
        plan = cfg.get("fail") or []
        kind = plan[ctx.attempt - 1] if ctx.attempt <= len(plan) else None
        if cfg.get("always_fail"):
            kind = cfg["always_fail"]
        entry["end"] = time.monotonic()
        if kind:
            entry["failed"] = kind
            _raise(kind, ctx)
        return {
            "step": ctx.step_name,
            "attempt": ctx.attempt,
            "value": cfg.get("value", ctx.step_name),
        }


class Waiter(StepHandler):
    """Parks itself: `handler_config.signal` (with `timeout`) waits for that signal, else
    `handler_config.sleep_for` sleeps; once resumed, returns what it got. `gate: true` blocks each
    call until the test's gate opens (to send a signal while the handler runs). Records every call
    with the state it was given."""

    def process(self, ctx: StepContext) -> Any:
        key = _key(ctx)
        cfg = ctx.handler_config
        record(key, kind="wait_call", step=ctx.step_name, attempt=ctx.attempt, state=ctx.state)
        if cfg.get("gate"):
            started(key).set()
            gate(key).wait(10)
        name = cfg.get("signal")
        if ctx.state is None:  # the first call: do the work before the wait, then park
            if name:
                if ctx.has_signal(name):
                    return {"early": ctx.signal(name)}
                return ctx.wait_for_signal(name, timeout=cfg.get("timeout"), state={"sent": 1})
            return ctx.sleep(cfg.get("sleep_for", 60), state={"slept": cfg.get("sleep_for", 60)})
        return {
            "state": ctx.state,
            "payload": ctx.signal(name) if name else None,
            "timed_out": ctx.timed_out,
        }


class Effect(StepHandler):
    """An external side effect made once per idempotency key (a charge): counts effects and
    calls."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        key = _key(ctx)
        with _lock:
            done = any(
                c.get("idem") == ctx.idempotency_key
                for c in _calls[key]
                if c.get("kind") == "effect"
            )
            if not done:
                _calls[key].append(
                    {
                        "kind": "effect",
                        "step": ctx.step_name,
                        "idem": ctx.idempotency_key,
                        "task_id": ctx.task_id,
                    }
                )
            _calls[key].append(
                {
                    "kind": "call",
                    "step": ctx.step_name,
                    "idem": ctx.idempotency_key,
                    "task_id": ctx.task_id,
                    "attempt": ctx.attempt,
                }
            )
        return {"step": ctx.step_name, "n": int(ctx.context.get("n", 0))}


class Toggle(StepHandler):
    """Fails permanently while a fault is set for (key, step) with `set_fault`; succeeds
    otherwise."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        key = _key(ctx)
        record(
            key,
            kind="attempt",
            step=ctx.step_name,
            attempt=ctx.attempt,
            results={k: dict(v) for k, v in ctx.results.items()},
        )
        if _has_fault(key, ctx.step_name):
            raise PermanentError(f"{ctx.step_name}: the fault is on", error_code="FAULT")
        return {"step": ctx.step_name, "ok": True}


class Gated(StepHandler):
    """Signals `started(key:step)`, then waits (up to 10 s) for `gate(key:step)` before it
    returns."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        key = _key(ctx)
        name = f"{key}:{ctx.step_name}"
        record(key, kind="attempt", step=ctx.step_name, attempt=ctx.attempt, start=time.monotonic())
        started(name).set()
        released = gate(name).wait(10)
        record(
            key,
            kind="finished",
            step=ctx.step_name,
            attempt=ctx.attempt,
            released=released,
            end=time.monotonic(),
        )
        return {"step": ctx.step_name, "late": True}


class AsyncSleeper(StepHandler):
    """An async handler that sleeps `handler_config.sleep` seconds and records its cancellation."""

    async def process(self, ctx: StepContext) -> dict[str, Any]:
        key = _key(ctx)
        record(key, kind="attempt", step=ctx.step_name, attempt=ctx.attempt, start=time.monotonic())
        try:
            await asyncio.sleep(float(ctx.handler_config.get("sleep", 5)))
        except asyncio.CancelledError:
            record(
                key, kind="cancelled", step=ctx.step_name, attempt=ctx.attempt, at=time.monotonic()
            )
            raise
        record(key, kind="finished", step=ctx.step_name, attempt=ctx.attempt)
        return {"step": ctx.step_name, "late": True}


class SlowFirstAttempt(StepHandler):
    """A sync handler that sleeps past its timeout on attempt 1 (returning a late result) and is
    fast after."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        key = _key(ctx)
        record(key, kind="attempt", step=ctx.step_name, attempt=ctx.attempt, start=time.monotonic())
        if ctx.attempt == 1:
            time.sleep(float(ctx.handler_config.get("sleep", 0.6)))
            record(
                key,
                kind="late_return",
                step=ctx.step_name,
                attempt=ctx.attempt,
                at=time.monotonic(),
            )
            return {"step": ctx.step_name, "late": True, "attempt": ctx.attempt}
        return {"step": ctx.step_name, "late": False, "attempt": ctx.attempt}


class Publisher(StepHandler):
    """Publishes each event named in `handler_config.events` with a payload naming the task key."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        key = _key(ctx)
        record(key, kind="attempt", step=ctx.step_name, attempt=ctx.attempt)
        for name in ctx.handler_config.get("events", []):
            ctx.publish(name, {"key": key, "amount": 42})
        return {"published": list(ctx.handler_config.get("events", []))}


# -- task handlers ---------------------------------------------------------------------------------
class OrderTaskHandler(TaskHandler):
    """Derives `express` from `priority` before the first step; annotates the task when it ends."""

    def prepare_context(self, context: dict[str, Any]) -> dict[str, Any]:
        return {**context, "express": context.get("priority") == "high", "prepared": True}

    def on_complete(self, task: Any) -> dict[str, Any] | None:
        record(
            str(task.context.get("key")), kind="on_complete", task_id=task.id, status=task.status
        )
        return {
            "steps_completed": sum(1 for s in task.steps if s.status == "complete"),
            "outcome": "ok",
        }

    def on_error(self, task: Any) -> dict[str, Any] | None:
        record(str(task.context.get("key")), kind="on_error", task_id=task.id, status=task.status)
        failed = [s.name for s in task.steps if s.status == "error"]
        return {"failed_steps": failed, "outcome": "failed"}


class BadResult(StepHandler):
    """Returns what a handler must not: a list, or a dict that is not JSON
    (`handler_config.kind`)."""

    def process(self, ctx: StepContext) -> Any:
        record(_key(ctx), kind="attempt", step=ctx.step_name, attempt=ctx.attempt)
        if ctx.handler_config.get("kind") == "list":
            return [1, 2, 3]
        return {"when": object()}


class SpawnChild(StepHandler):
    """Starts a task of `handler_config.child` and fails the first attempt after doing so (once per
    key)."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        child = ctx.create_task(ctx.handler_config["child"], {"key": ctx.context["key"], "n": 1})
        record(
            ctx.context["key"], step=ctx.step_name, kind="spawned", child=child, attempt=ctx.attempt
        )
        if ctx.attempt == 1:
            raise RetryableError("dies after creating the child")
        return {"child": child}


class AwaitChild(StepHandler):
    """Polls the child task without holding the worker: a RetryableError with retry_after while it
    runs."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        child = ctx.get_task(ctx.result_of("spawn")["child"])
        if child.status != "complete":
            raise RetryableError(f"child task {child.id} is {child.status}", retry_after=0.05)
        return {"child_status": child.status, "child_correlation_id": child.correlation_id}


class Partitions(StepHandler):
    """Returns `handler_config.count` partitions (or the context's `count`): a number decided at
    run time."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        count = int(ctx.context.get("count", ctx.handler_config.get("count", 3)))
        return {"partitions": [{"name": f"p{i}", "rows": i * 10} for i in range(count)]}


class Instance(StepHandler):
    """A fan-out's instance: records its item, index and key; fails for good while a fault is set
    for its own name (`set_fault(key, "process[2]")`), and once, transiently, when its name is in
    `handler_config.flaky`."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        key = _key(ctx)
        entry = record(
            key,
            kind="instance",
            step=ctx.step_name,
            item=ctx.item,
            index=ctx.index,
            idem=ctx.idempotency_key,
            attempt=ctx.attempt,
            results=dict(ctx.results),
            start=time.monotonic(),
        )
        if ctx.handler_config.get("sleep"):
            time.sleep(float(ctx.handler_config["sleep"]))
        entry["end"] = time.monotonic()
        if ctx.step_name in ctx.handler_config.get("flaky", []) and ctx.attempt == 1:
            raise RetryableError(f"{ctx.step_name}: busy", retry_after=0.01)
        if _has_fault(key, ctx.step_name):
            raise PermanentError(f"{ctx.step_name}: the fault is on", error_code="FAULT")
        return {"index": ctx.index, "item": ctx.item}


class Collect(StepHandler):
    """Reads a fan-out's list of results (`handler_config.of`) and records it."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        got = ctx.result_of(str(ctx.handler_config.get("of", "process")))
        record(_key(ctx), kind="collect", step=ctx.step_name, got=got)
        return {"count": len(got)}


class Undo(StepHandler):
    """A compensation: records the step it undoes, that step's results and its own idempotency
    key, and fails per `handler_config.fail` as `Scripted` does (`handler_config.fail_file`: fails
    permanently while that file exists)."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        cfg = ctx.handler_config
        entry = record(
            _key(ctx),
            kind="undo",
            step=ctx.step_name,
            forward=ctx.forward_step,
            forward_results=dict(ctx.forward_results or {}),
            attempt=ctx.attempt,
            idem=ctx.idempotency_key,
            start=time.monotonic(),
        )
        if cfg.get("sleep"):
            time.sleep(float(cfg["sleep"]))
        plan = cfg.get("fail") or []
        kind = plan[ctx.attempt - 1] if ctx.attempt <= len(plan) else None
        if cfg.get("fail_file") and Path(cfg["fail_file"]).exists():
            kind = "permanent"
        entry["end"] = time.monotonic()
        if kind:
            entry["failed"] = kind
            _raise(kind, ctx)
        return {"undone": ctx.forward_step}
