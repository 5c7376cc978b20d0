"""Step handlers of the browser tests: the task context decides how long a step takes and whether it
fails."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tasker import PermanentError, RetryableError, StepContext, StepHandler


class Step(StepHandler):
    """Waits while the file `context.hold` exists (at most 30 s), sleeps `context.sleep` seconds,
    then succeeds with its name.

    Fails permanently when `context.fail` names the step, and, when `context.fail_flag` names a
    file, only while that file exists: deleting it "fixes the bug", so a retry from the page then
    succeeds. Fails with a retryable error (the dependent system's fault, which counts towards its
    circuit) when `context.transient` names the step, while the file `context.transient_flag`
    exists.
    """

    def process(self, ctx: StepContext) -> dict[str, Any]:
        hold = ctx.context.get("hold")
        deadline = time.monotonic() + 30
        while hold and Path(hold).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(float(ctx.context.get("sleep", 0)))
        flag = ctx.context.get("fail_flag")
        if ctx.context.get("fail") == ctx.step_name and (flag is None or Path(flag).exists()):
            raise PermanentError(f"{ctx.step_name} was told to fail", error_code="TOLD_TO_FAIL")
        if (
            ctx.context.get("transient") == ctx.step_name
            and Path(ctx.context["transient_flag"]).exists()
        ):
            raise RetryableError(f"{ctx.step_name}: the system is down", error_code="SYSTEM_DOWN")
        return {"step": ctx.step_name, "amount": ctx.context.get("amount")}


class Partitions(StepHandler):
    """Discovers `context.partitions` partitions (3 unless told), after waiting while the file
    `context.hold` exists (at most 30 s): a list the fan-out after it only knows at run time."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        hold = ctx.context.get("hold")
        deadline = time.monotonic() + 30
        while hold and Path(hold).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        count = int(ctx.context.get("partitions", 3))
        return {"partitions": [{"name": f"part-{i:03d}", "rows": i * 100} for i in range(count)]}


class Partition(StepHandler):
    """One instance of a fan-out over partitions: fails for good when its index is
    `context.fail_index` (only while the file `context.fail_flag` exists, when it names one)."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        flag = ctx.context.get("fail_flag")
        if ctx.index == ctx.context.get("fail_index") and (flag is None or Path(flag).exists()):
            raise PermanentError(
                f"partition {ctx.item['name']} is corrupt", error_code="CORRUPT_PARTITION"
            )
        return {"partition": ctx.item["name"], "rows": ctx.item["rows"]}


class Report(StepHandler):
    """Counts the results of the fan-out `process` and the rows it handled."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        done = ctx.result_of("process")
        return {"count": len(done), "rows": sum(int(r["rows"]) for r in done)}
