"""Run the pipeline once and describe what happened: a timeline of step attempts and the figures
computed.

Used by `python -m tasker.demos.data_pipeline`; the acceptance tests drive the engine directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from tasker import StepState, Task, Tasker, TaskState
from tasker.demos.data_pipeline.metrics import dollars

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "data_pipeline/customer_analytics"
DAILY = "data_pipeline/daily_revenue"
EXTRACTS = ("extract_orders", "extract_users", "extract_products")


#: The template's 7 AM schedule (its YAML's `schedules:`).
SCHEDULE = "morning"


def run_pipeline(engine: Tasker, output_dir: Path, **context: Any) -> Task:
    """Load the template and run its 7 AM schedule's task now (a tick triggered by hand, as an
    operator would with `tasker schedules trigger`), to the end in this process."""
    engine.load_templates(TEMPLATES)
    schedule = engine.schedules.find(TEMPLATE, SCHEDULE)
    task = engine.schedules.trigger(schedule.id, {"output_dir": str(output_dir), **context})
    return engine.run(task.id)


def describe_schedule(engine: Tasker) -> Iterator[str]:
    """The schedule the pipeline runs on, and its next tick in its own time zone and in UTC."""
    s = engine.schedules.find(TEMPLATE, SCHEDULE)
    local = s.next_at.astimezone(ZoneInfo(s.timezone))
    yield (
        f"schedule '{s.name}': '{s.cron}' in {s.timezone} (catch_up: {s.catch_up}); this run was"
        f" triggered now; next tick {local:%Y-%m-%d %H:%M %Z} ({s.next_at:%H:%M} UTC)"
    )


def attempts(engine: Tasker, task: Task) -> list[dict[str, Any]]:
    """Every attempt of every step as {step, attempt, started, ended, outcome, error}, in start
    order.

    Built from the transitions table: an attempt starts with the move to `in_progress` and ends with
    the next transition of the same step.
    """
    names = {s.id: s.name for s in task.steps}
    open_: dict[int, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for t in engine.history.step_transitions(task.id):
        sid = t["step_id"]
        if t["to_state"] == StepState.IN_PROGRESS:
            open_[sid] = {
                "step": names[sid],
                "attempt": t["attempt"],
                "started": t["at"],
                "ended": None,
                "outcome": None,
                "error": None,
            }
            out.append(open_[sid])
        elif sid in open_:
            run = open_.pop(sid)
            run.update(ended=t["at"], outcome=t["to_state"], error=t["error_message"])
    return out


def _ms(at: datetime | None, origin: datetime) -> str:
    return "     -" if at is None else f"{(at - origin).total_seconds() * 1000:6.0f}"


def describe(engine: Tasker, task: Task, *, output_kept: bool = True) -> Iterator[str]:
    """Lines a person reads: the attempts timeline, the step table, the figures and the deliveries.

    With `output_kept=False` the dashboard went to a temporary directory deleted at exit, so its
    file is named without the directory: a path that is gone would only send the reader looking.
    """
    yield from describe_schedule(engine)
    yield f"task {task.id} {task.template_key}: {task.status} in {task.duration_seconds or 0:.2f}s"
    runs = attempts(engine, task)
    origin = min(r["started"] for r in runs) if runs else task.created_at
    yield ""
    yield "  start_ms  end_ms  step                        attempt  outcome"
    for r in runs:
        note = f"  ({r['error']})" if r["error"] else ""
        yield (
            f"  {_ms(r['started'], origin)}  {_ms(r['ended'], origin)}  {r['step']:<27}"
            f" {r['attempt']:>7}  {r['outcome']}{note}"
        )
    if task.status != TaskState.COMPLETE:
        for s in task.steps:
            if s.status == StepState.ERROR:
                yield f"\n{s.name} failed: {s.last_error['message'] if s.last_error else None}"
        return
    first = [r for r in runs if r["step"] in EXTRACTS and r["attempt"] == 1]
    if len(first) == len(EXTRACTS):
        overlap = min(r["ended"] for r in first) - max(r["started"] for r in first)
        yield (
            f"\nthe three extractions overlapped for {overlap.total_seconds() * 1000:.0f} ms"
            " (fan-out)"
        )
    cust = task.step("transform_customer_metrics").results or {}
    prod = task.step("transform_product_metrics").results or {}
    yield (
        f"revenue {dollars(cust['revenue_cents'])} from {cust['orders_completed']} orders; "
        f"{cust['active_customers']} active customers, {prod['units_sold']} units, "
        f"gross margin {dollars(prod['gross_margin_cents'])}"
    )
    yield "insights:"
    for i in (task.step("generate_insights").results or {})["insights"]:
        yield f"  [{i['severity']}] {i['message']}"
    dash = task.step("update_dashboard").results or {}
    if output_kept:
        yield f"dashboard: {dash['path']} ({dash['bytes']} bytes)"
    else:
        yield (
            f"dashboard: {Path(dash['path']).name} ({dash['bytes']} bytes, in a temporary "
            "directory removed at exit; --output-dir DIR keeps it)"
        )
    sent = (task.step("send_notifications").results or {})["messages"]
    yield "notifications recorded: " + ", ".join(f"{m['channel']} to {m['to']}" for m in sent)
    notes = dict(task.annotations or {})
    if not output_kept and notes.get("dashboard"):
        notes["dashboard"] = Path(notes["dashboard"]).name
    yield f"annotations: {notes}"


def run_daily(engine: Tasker, **context: Any) -> Task:
    """Load the templates, create one daily revenue rollup and run it to the end here."""
    engine.load_templates(TEMPLATES)
    return engine.run(engine.create_task(DAILY, context).id)


def describe_daily(task: Task) -> Iterator[str]:
    """Lines a person reads about a daily revenue rollup: the fan-out and the report."""
    yield f"task {task.id} {task.template_key}: {task.status} in {task.duration_seconds or 0:.2f}s"
    found = (task.step("discover_partitions").results or {}).get("partitions", [])
    yield f"discover_partitions found {len(found)} days with orders (decided at run time)"
    fan = task.step("aggregate_partition")
    yield f"aggregate_partition: {fan.decision}; {task.fanout_progress(fan)}"
    for s in task.instances(fan):
        if s.attempts > 1 or s.status != StepState.COMPLETE:
            yield f"  {s.name}: {s.status} after {s.attempts} attempts"
    if task.status != TaskState.COMPLETE:
        for s in task.steps:
            if s.status == StepState.ERROR:
                yield f"{s.name} failed: {s.last_error['message'] if s.last_error else None}"
        return
    r = task.step("build_report").results or {}
    yield (
        f"report: {r['partitions']} partitions, {r['orders']} orders, revenue"
        f" {dollars(r['revenue_cents'])}, {r['refunds']} refunds, best day {r['best_day']}"
    )
    if r["retried_partitions"]:
        yield "recovered after a retry: " + ", ".join(r["retried_partitions"])
