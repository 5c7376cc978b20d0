"""Step handlers of `data_pipeline/daily_revenue`: a fan-out over partitions found at run time.

`discover_partitions` lists the days that have orders, `aggregate_partition` runs once per day
(`ctx.item` is its partition, `ctx.index` its place in the list) and `build_report` reads the list
of every day's aggregate (`ctx.result_of("aggregate_partition")`), in day order. The orders come
from the synthetic warehouse, so every figure can be recomputed from the seed.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import date
from typing import Any

from tasker import RetryableError, StepContext, StepHandler
from tasker.demos.data_pipeline.handlers import orders_of, period


def period_orders(ctx: StepContext) -> list[dict[str, Any]]:
    """The orders of the context's date range, as the warehouse holds them."""
    return orders_of(ctx, *period(ctx))


def day_aggregate(orders: list[dict[str, Any]], day: str) -> dict[str, Any]:
    """One day's figures: completed orders, revenue, refunds and units (pure, for tests)."""
    todays = [o for o in orders if o["placed_on"] == day]
    completed = [o for o in todays if o["status"] == "completed"]
    return {
        "day": day,
        "orders": len(completed),
        "refunds": len(todays) - len(completed),
        "revenue_cents": sum(o["total_cents"] for o in completed),
        "units": sum(o["quantity"] for o in completed),
    }


class DiscoverPartitionsHandler(StepHandler):
    """The partitions: each day of the range with at least one order, oldest first."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        per_day = Counter(o["placed_on"] for o in period_orders(ctx))
        days = sorted(per_day)
        return {
            "partitions": [{"day": d, "orders": per_day[d]} for d in days],
            "days_without_orders": (period(ctx)[1] - period(ctx)[0]).days + 1 - len(days),
        }


class AggregatePartitionHandler(StepHandler):
    """One partition: that day's aggregate. The context's `flaky_partition` loses its first
    attempt to a dropped connection; the retry recovers."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        day = str(ctx.item["day"])
        date.fromisoformat(day)  # a partition is a day; anything else is a bug upstream
        time.sleep(float(ctx.handler_config.get("latency_seconds", 0)))
        if ctx.index == ctx.context.get("flaky_partition") and ctx.attempt == 1:
            raise RetryableError(
                f"{ctx.dependent_system}: connection reset while reading partition {day}",
                error_code="SOURCE_UNAVAILABLE",
            )
        return {**day_aggregate(period_orders(ctx), day), "attempt": ctx.attempt}


class BuildReportHandler(StepHandler):
    """The period's report from the list of partition aggregates (in day order)."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        days: list[dict[str, Any]] = ctx.result_of("aggregate_partition")
        best = max(days, key=lambda d: d["revenue_cents"], default=None)
        return {
            "partitions": len(days),
            "orders": sum(d["orders"] for d in days),
            "refunds": sum(d["refunds"] for d in days),
            "revenue_cents": sum(d["revenue_cents"] for d in days),
            "units": sum(d["units"] for d in days),
            "best_day": best["day"] if best else None,
            "retried_partitions": [d["day"] for d in days if d["attempt"] > 1],
        }
