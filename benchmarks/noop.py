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


class Hold(StepHandler):
    """Holds its worker for 20 s on the first attempt, returns at once on later ones."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        import time

        if ctx.attempt == 1:
            time.sleep(20)
        return {"attempt": ctx.attempt}


class Stamp(StepHandler):
    """Records when the handler started (wall clock), to measure claim latency from the outside."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        import time

        return {"started": time.time()}
