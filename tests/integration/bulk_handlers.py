"""The step handler of the bulk load test (tests/integration/test_bulk_load.py), in a module of
its own so that the `tasker worker` processes of that test import nothing else of the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasker import PermanentError, StepContext, StepHandler


class BrokenWhileFlagged(StepHandler):
    """Fails for good while the file `handler_config.flag` exists; succeeds once it is deleted
    (the fix is deployed)."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        if Path(ctx.handler_config["flag"]).exists():
            raise PermanentError("the dependency is broken", error_code="BROKEN")
        return {"ok": True}
