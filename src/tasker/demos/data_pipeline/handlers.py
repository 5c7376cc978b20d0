"""Step handlers of `data_pipeline/customer_analytics`, and its task handler.

The handlers are thin on purpose: an extraction asks the (synthetic) source for its table, a
transform reads its parents' records with `ctx.result_of` and hands them to `metrics`, a delivery
publishes what the insights step found. Data flows only through step results, so every intermediate
table is stored with its step and a retried step reads exactly what its parents produced.

A source that drops the connection raises `RetryableError`; a request the source can never answer
(an end date before the start date) raises `PermanentError` so no attempt is wasted on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from tasker import (
    PermanentError,
    RetryableError,
    StepContext,
    StepHandler,
    StepState,
    Task,
    TaskHandler,
)
from tasker.demos.data_pipeline import metrics, warehouse

DASHBOARD_PREFIX = "customer_analytics"


def period(ctx: StepContext) -> tuple[date, date]:
    """The context's date range (schema defaults applied), refused at once when it is backwards."""
    rng = ctx.context["date_range"]
    start, end = date.fromisoformat(rng["start_date"]), date.fromisoformat(rng["end_date"])
    if end < start:
        raise PermanentError(
            f"date_range.end_date {end} is before date_range.start_date {start}; fix: swap or"
            " correct the dates",
            error_code="INVALID_DATE_RANGE",
        )
    return start, end


def orders_of(ctx: StepContext, start: date, end: date) -> list[dict[str, Any]]:
    """The warehouse's orders of the context's seed and volume between `start` and `end`."""
    vol = ctx.context["volume"]
    return warehouse.orders(
        ctx.context["seed"],
        vol["orders"],
        start,
        end,
        customer_count=vol["customers"],
        product_count=vol["products"],
    )


def failures_planned(ctx: StepContext) -> int:
    """How many first attempts of this step fail: the context's `simulate_failures` wins over
    handler_config."""
    planned = ctx.context.get("simulate_failures", {}).get(ctx.step_name)
    if planned is None:
        planned = ctx.handler_config.get("fail_first_attempts", 0)
    return int(planned)


class ExtractHandler(StepHandler):
    """Fetch one table from its source: wait the source's latency, maybe drop the connection, return
    records.

    The failure comes after the latency, as a real dropped connection would, so the failed attempt
    is visible in the step's transitions with its duration.
    """

    table = ""

    def records(self, ctx: StepContext, start: date, end: date) -> list[dict[str, Any]]:
        raise NotImplementedError

    def process(self, ctx: StepContext) -> dict[str, Any]:
        start, end = period(ctx)
        time.sleep(float(ctx.handler_config.get("latency_seconds", 0)))
        planned = failures_planned(ctx)
        if ctx.attempt <= planned:
            raise RetryableError(
                f"{ctx.dependent_system}: connection reset while reading {self.table} "
                f"(simulated failure {ctx.attempt} of {planned})",
                error_code="SOURCE_UNAVAILABLE",
            )
        rows = self.records(ctx, start, end)
        ctx.logger.info("extracted %d %s", len(rows), self.table)
        return {
            "table": self.table,
            "source": ctx.dependent_system,
            "count": len(rows),
            "records": rows,
            "attempt": ctx.attempt,
        }


class ExtractOrdersHandler(ExtractHandler):
    table = "orders"

    def records(self, ctx: StepContext, start: date, end: date) -> list[dict[str, Any]]:
        return orders_of(ctx, start, end)


class ExtractUsersHandler(ExtractHandler):
    table = "customers"

    def records(self, ctx: StepContext, start: date, end: date) -> list[dict[str, Any]]:
        return warehouse.customers(ctx.context["seed"], ctx.context["volume"]["customers"])


class ExtractProductsHandler(ExtractHandler):
    table = "products"

    def records(self, ctx: StepContext, start: date, end: date) -> list[dict[str, Any]]:
        return warehouse.products(ctx.context["seed"], ctx.context["volume"]["products"])


class TransformCustomerMetricsHandler(StepHandler):
    def process(self, ctx: StepContext) -> dict[str, Any]:
        orders = ctx.result_of("extract_orders")["records"]
        customers = ctx.result_of("extract_users")["records"]
        return {
            "inputs": {"orders": len(orders), "customers": len(customers)},
            **metrics.customer_metrics(orders, customers),
        }


class TransformProductMetricsHandler(StepHandler):
    def process(self, ctx: StepContext) -> dict[str, Any]:
        orders = ctx.result_of("extract_orders")["records"]
        products = ctx.result_of("extract_products")["records"]
        return {
            "inputs": {"orders": len(orders), "products": len(products)},
            **metrics.product_metrics(orders, products),
        }


class GenerateInsightsHandler(StepHandler):
    def process(self, ctx: StepContext) -> dict[str, Any]:
        found = metrics.insights(
            ctx.result_of("transform_customer_metrics"), ctx.result_of("transform_product_metrics")
        )
        return {"insights": found, "warnings": sum(1 for i in found if i["severity"] == "warning")}


def dashboard(ctx: StepContext) -> dict[str, Any]:
    """The dashboard document: KPIs, breakdowns and findings, with no clock in it, so a rerun is
    byte-identical."""
    cust = ctx.result_of("transform_customer_metrics")
    prod = ctx.result_of("transform_product_metrics")
    start, end = period(ctx)
    return {
        "workflow": f"{ctx.namespace}/{ctx.task_name}@{ctx.version}",
        "task_id": ctx.task_id,
        "period": {"start_date": start.isoformat(), "end_date": end.isoformat()},
        "kpis": {
            "revenue_cents": cust["revenue_cents"],
            "orders_completed": cust["orders_completed"],
            "average_order_value_cents": cust["average_order_value_cents"],
            "active_customers": cust["active_customers"],
            "repeat_rate": cust["repeat_rate"],
            "units_sold": prod["units_sold"],
            "gross_margin_cents": prod["gross_margin_cents"],
            "margin_rate": prod["margin_rate"],
        },
        "revenue_by_segment": cust["by_segment"],
        "revenue_by_category": prod["by_category"],
        "top_customers": cust["top_customers"],
        "top_products": prod["top_products"],
        "insights": ctx.result_of("generate_insights")["insights"],
    }


class UpdateDashboardHandler(StepHandler):
    """Write the dashboard file atomically (temporary file, then rename), so readers never see half
    of it.

    A directory that cannot exist (a file in the way, no permission) is the context's fault:
    permanent. Any other I/O error (a full disk) may pass: retryable.
    """

    def process(self, ctx: StepContext) -> dict[str, Any]:
        doc = dashboard(ctx)
        body = json.dumps(doc, indent=2, sort_keys=True).encode()
        out_dir = Path(ctx.context["output_dir"])
        start, end = doc["period"]["start_date"], doc["period"]["end_date"]
        target = out_dir / f"{DASHBOARD_PREFIX}_{start}_{end}.json"
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{target.name}.")
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            os.replace(tmp, target)
        except (FileExistsError, NotADirectoryError, PermissionError) as exc:
            raise PermanentError(
                f"output_dir '{out_dir}' is not a writable directory ({exc.strerror}); fix: set"
                " output_dir in the task context to a directory this worker can write",
                error_code="OUTPUT_DIR_UNWRITABLE",
            ) from None
        except OSError as exc:
            raise RetryableError(
                f"could not write {target}: {exc.strerror}", error_code="DASHBOARD_WRITE_FAILED"
            ) from exc
        ctx.publish("dashboard_updated", {"path": str(target), "bytes": len(body)})
        return {
            "path": str(target),
            "bytes": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "sections": sorted(doc),
        }


class SendNotificationsHandler(StepHandler):
    """Record the messages that would go out: one email per recipient and one chat post.

    Each message carries a key derived from the step's idempotency key, which a real mailer would
    use to drop the duplicate when a retry follows a send whose acknowledgement was lost.
    """

    def process(self, ctx: StepContext) -> dict[str, Any]:
        found = ctx.result_of("generate_insights")
        revenue = ctx.result_of("transform_customer_metrics")["revenue_cents"]
        start, end = period(ctx)
        subject = (
            f"Customer analytics {start}..{end}: revenue {metrics.dollars(revenue)}, "
            f"{found['warnings']} warning(s)"
        )
        lines = [f"[{i['severity']}] {i['message']}" for i in found["insights"]]
        messages: list[dict[str, Any]] = [
            {
                "channel": "email",
                "to": to,
                "subject": subject,
                "body": "\n".join(lines),
                "idempotency_key": f"{ctx.idempotency_key}:email:{to}",
            }
            for to in ctx.context["notify"]
        ]
        channel = ctx.handler_config.get("slack_channel")
        if channel:
            warnings = [i["message"] for i in found["insights"] if i["severity"] == "warning"]
            messages.append(
                {
                    "channel": "slack",
                    "to": channel,
                    "subject": subject,
                    "body": "\n".join(warnings),
                    "idempotency_key": f"{ctx.idempotency_key}:slack:{channel}",
                }
            )
        return {"messages": messages, "count": len(messages)}


class CustomerAnalyticsTask(TaskHandler):
    """Annotate the finished task with what an operator looks for first: the file, the revenue, the
    warnings."""

    def on_complete(self, task: Task) -> dict[str, Any] | None:
        dash = task.step("update_dashboard").results or {}
        cust = task.step("transform_customer_metrics").results or {}
        found = task.step("generate_insights").results or {}
        extract = task.step("extract_orders")
        return {
            "dashboard": dash.get("path"),
            "revenue_cents": cust.get("revenue_cents"),
            "warnings": found.get("warnings"),
            "extract_orders_attempts": extract.attempts,
        }

    def on_error(self, task: Task) -> dict[str, Any] | None:
        failed = [s for s in task.steps if s.status == StepState.ERROR]
        return {
            "failed_steps": [s.name for s in failed],
            "reasons": {s.name: s.last_error["message"] if s.last_error else None for s in failed},
        }
