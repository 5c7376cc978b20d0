"""No-op step handlers for the benchmarks: they measure the engine, not the work."""

from __future__ import annotations

from typing import Any

from tasker import StepContext, StepHandler


class Noop(StepHandler):
    def process(self, ctx: StepContext) -> dict[str, Any]:
        return {"ok": True}


class AsyncNoop(StepHandler):
    async def process(self, ctx: StepContext) -> dict[str, Any]:
        return {"ok": True}
