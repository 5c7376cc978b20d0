"""Handlers that misbehave in every way a handler can, and an innocent one that counts its
executions.

`Poison` does what `handler_config.mode` says; `Innocent` appends one line per execution to
`<dir>/<task>-<step>.runs` (so that worker processes can be observed too) and returns quickly.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from tasker import RetryableError, StepContext, StepHandler


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken too")


class SneakyDict(dict[str, Any]):
    """Looks storable the first time it is walked, and shows what it really holds afterwards.

    The engine's own check sees the harmless first view, so the outcome reaches the store and is
    refused there (the store encodes the real content): the outcome the store refuses, which must
    cost no other step.
    """

    walked = False

    def items(self) -> Any:
        if not self.walked:
            self.walked = True
            return [("looks", "fine")]
        return super().items()


def _poison(mode: str) -> Any:
    if mode == "nul_error":
        raise RuntimeError("bad byte \x00 in the middle")
    if mode == "nul_result":
        return {"text": "a\x00b"}
    if mode == "nan_result":
        return {"values": [1.0, float("nan")]}
    if mode == "inf_result":
        return {"nested": {"x": float("inf")}}
    if mode == "surrogate_result":
        return {"s": "\udc80"}
    if mode == "surrogate_error":
        raise ValueError("lone \udc80 surrogate")
    if mode == "huge_error":
        raise RuntimeError("x" * 3_000_000)
    if mode == "set_result":
        return {"s": {1, 2}}
    if mode == "self_reference":
        loop: dict[str, Any] = {}
        loop["again"] = loop
        return loop
    if mode == "sneaky_result":
        return SneakyDict(hidden=object())
    if mode == "system_exit":
        sys.exit(3)
    if mode == "keyboard_interrupt":
        raise KeyboardInterrupt
    if mode == "generator_exit":
        raise GeneratorExit
    if mode == "cancelled":
        raise asyncio.CancelledError
    if mode == "broken_str":
        raise BrokenStr
    if mode == "bad_retry_after":
        err = RetryableError("try later")
        err.retry_after = "soon"  # type: ignore[assignment]
        raise err
    if mode == "nan_retry_after":
        err = RetryableError("try later")
        err.retry_after = float("nan")
        raise err
    if mode == "key_error":
        empty: dict[str, Any] = {}
        return {"missing": empty["nope"]}
    raise AssertionError(f"unknown poison mode {mode}")


class Poison(StepHandler):
    def process(self, ctx: StepContext) -> dict[str, Any]:
        result: dict[str, Any] = _poison(str(ctx.handler_config["mode"]))
        return result


class AsyncPoison(StepHandler):
    async def process(self, ctx: StepContext) -> dict[str, Any]:
        mode = str(ctx.handler_config["mode"])
        if mode == "swallow_cancel":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                return {"swallowed": True}
            return {"slept": True}
        if mode == "ignore_cancel":  # ignores cancellation for 1.6 s, then ends and says so
            deadline = time.monotonic() + 1.6
            while time.monotonic() < deadline:
                try:
                    await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    continue
            (Path(ctx.context["dir"]) / f"{ctx.task_id}-{ctx.step_name}.ended").touch()
            return {"ignored": True}
        await asyncio.sleep(0)
        result: dict[str, Any] = _poison(mode)
        return result


class Innocent(StepHandler):
    def process(self, ctx: StepContext) -> dict[str, Any]:
        runs = Path(ctx.context["dir"]) / f"{ctx.task_id}-{ctx.step_name}.runs"
        with open(runs, "a") as f:
            f.write(f"{os.getpid()} {ctx.attempt}\n")
        time.sleep(float(ctx.handler_config.get("sleep", 0.0)))
        return {"step": ctx.step_name}


class Hang(StepHandler):
    """A sync handler that records its start, then sleeps far past its timeout."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        starts = Path(ctx.context["dir"]) / f"{ctx.task_id}-{ctx.step_name}.starts"
        with open(starts, "a") as f:
            f.write(f"{time.time()} {ctx.attempt}\n")
        time.sleep(float(ctx.handler_config.get("hang", 5.0)))
        return {"woke": True}


def runs(directory: Path, task_id: int, step: str, suffix: str = "runs") -> int:
    """How many times a step's handler ran (0 when it never did)."""
    path = directory / f"{task_id}-{step}.{suffix}"
    return len(path.read_text().splitlines()) if path.exists() else 0


class Billing(StepHandler):
    """A call to a service that refuses connections while `<dir>/down` exists (an outage)."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        directory = Path(ctx.context["dir"])
        with open(directory / "billing.calls", "a") as f:
            f.write(f"{ctx.attempt}\n")
        if (directory / "down").exists():
            raise ConnectionRefusedError("billing refused the connection")
        if ctx.handler_config.get("answer_500"):
            raise RetryableError("billing answered 500", system_fault=False)
        return {"charged": True}
