"""Step handlers of the API tests, driven by the task context so that a request decides the
outcome."""

from __future__ import annotations

from typing import Any

from tasker import PermanentError, StepContext, StepHandler


class Step(StepHandler):
    """Succeeds with its name and the context's `amount`; fails permanently when `context.fail`
    names it."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        if ctx.context.get("fail") == ctx.step_name:
            raise PermanentError(f"{ctx.step_name} was told to fail", error_code="TOLD_TO_FAIL")
        return {"step": ctx.step_name, "amount": ctx.context.get("amount")}
