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


class Partitions(StepHandler):
    """Returns `context.count` items: the list a fan-out benchmark expands over."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        return {"items": list(range(int(ctx.context.get("count", 10_000))))}


class Fanned(StepHandler):
    """A fan-out's instance: no work, its index back."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        return {"i": ctx.index}


class CountResults(StepHandler):
    """A fan-in: how many results the fan-out gathered."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        return {"n": len(ctx.result_of("each"))}
