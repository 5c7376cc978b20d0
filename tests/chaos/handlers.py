"""Step handlers run by the worker processes of the fault tests (imported through their
handler_class paths).

`Effect` behaves like a real handler with an external side effect: it makes the effect idempotent
with the step's idempotency key (a unique key, ON CONFLICT DO NOTHING), and also logs every raw
execution so that the test can count how often delivery was repeated. Both tables live in the test's
PostgreSQL database, named by `CHAOS_PG_URL` in the worker's environment.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from tasker import PermanentError, RetryableError, StepContext, StepHandler

_local = threading.local()


def _connection() -> Any:
    import psycopg

    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(os.environ["CHAOS_PG_URL"], autocommit=True, connect_timeout=5)
        _local.conn = conn
    return conn


def _drop_connection() -> None:
    conn = getattr(_local, "conn", None)
    _local.conn = None
    if conn is not None:
        try:
            conn.close()
        except Exception:
            pass


class Effect(StepHandler):
    """Logs the execution, works for `handler_config.sleep` = [min, max] seconds, then makes its
    effect once."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        import psycopg

        lo, hi = ctx.handler_config.get("sleep", [0.0, 0.0])
        try:
            conn = _connection()
            conn.execute(
                "INSERT INTO chaos_attempts (idempotency_key, step, attempt, pid) VALUES (%s, %s,"
                " %s, %s)",
                (ctx.idempotency_key, ctx.step_name, ctx.attempt, os.getpid()),
            )
            time.sleep(random.uniform(lo, hi))
            conn.execute(
                "INSERT INTO chaos_effects (idempotency_key, step) VALUES (%s, %s) "
                "ON CONFLICT (idempotency_key) DO NOTHING",
                (ctx.idempotency_key, ctx.step_name),
            )
        except psycopg.Error as exc:
            _drop_connection()
            raise RetryableError(f"effect store unavailable: {type(exc).__name__}") from exc
        return {"step": ctx.step_name, "pid": os.getpid(), "i": ctx.index}


class Sleep(StepHandler):
    """Sleeps `handler_config.sleep` seconds; no external effect."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        time.sleep(float(ctx.handler_config.get("sleep", 0.02)))
        return {"step": ctx.step_name, "pid": os.getpid()}


class Outage(StepHandler):
    """Calls a dependent system that is down until the time (epoch seconds) written in
    `context.outage_file`."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        down_until = float(Path(ctx.context["outage_file"]).read_text())
        if time.time() < down_until:
            raise RetryableError("partner API unavailable (503)", error_code="UNAVAILABLE")
        return {"step": ctx.step_name, "pid": os.getpid()}


class SlowOnce(StepHandler):
    """Appends its pid to `<context.dir>/<step id>.runs`; the first execution of a step takes
    `context.slow` seconds, later ones (another worker's retry) are quick."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        runs = Path(ctx.context["dir"]) / f"{ctx.step_id}.runs"
        first = not runs.exists()
        with open(runs, "a") as f:
            f.write(f"{os.getpid()}\n")
        if first:
            time.sleep(float(ctx.context.get("slow", 0)))
        return {"step": ctx.step_name, "pid": os.getpid(), "attempt": ctx.attempt}


class Items(StepHandler):
    """Lists `context.count` items: what a fan-out expands over."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        return {"items": list(range(int(ctx.context["count"])))}


class CountResults(StepHandler):
    """A fan-in: how many results the fan-out step `each` gathered, and their indexes in order."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        gathered = ctx.result_of("each")
        indexes = [r.get("i") for r in gathered]
        return {"n": len(gathered), "in_order": indexes == list(range(len(gathered)))}


class Fail(StepHandler):
    """Fails for good: what sends its task into compensation."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        raise PermanentError(f"{ctx.step_name} refuses: out of stock")
