"""The pipeline's arithmetic: aggregates and findings as pure functions over plain records.

Kept apart from the handlers so the numbers can be checked on a hand-made dataset without an engine,
and so a handler stays what the engine needs it to be: read inputs, compute, return a JSON dict.
Only completed orders count as revenue; refunded orders are reported separately.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

TOP_N = 5
LOW_REPEAT_RATE = 0.30
HIGH_REFUND_RATE = 0.05

Record = Mapping[str, Any]


def dollars(cents: int) -> str:
    return f"${cents / 100:,.2f}"


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _completed(orders: Iterable[Record]) -> list[Record]:
    return [o for o in orders if o["status"] == "completed"]


def customer_metrics(orders: list[Record], customers: list[Record]) -> dict[str, Any]:
    """Who buys: active and repeat customers, revenue and average order by segment, the top
    spenders."""
    by_id = {c["customer_id"]: c for c in customers}
    spend: dict[int, int] = defaultdict(int)
    count: dict[int, int] = defaultdict(int)
    orphans = 0
    completed = _completed(orders)
    for o in completed:
        if o["customer_id"] not in by_id:
            orphans += 1
            continue
        spend[o["customer_id"]] += o["total_cents"]
        count[o["customer_id"]] += 1
    segments: dict[str, dict[str, int]] = {}
    for cid, cents in spend.items():
        seg = segments.setdefault(
            by_id[cid]["segment"], {"customers": 0, "orders": 0, "revenue_cents": 0}
        )
        seg["customers"] += 1
        seg["orders"] += count[cid]
        seg["revenue_cents"] += cents
    revenue = sum(spend.values())
    orders_counted = sum(count.values())
    top = sorted(spend, key=lambda cid: (-spend[cid], cid))[:TOP_N]
    return {
        "customers_total": len(customers),
        "active_customers": len(spend),
        "repeat_customers": sum(1 for n in count.values() if n >= 2),
        "repeat_rate": _rate(sum(1 for n in count.values() if n >= 2), len(spend)),
        "orders_completed": orders_counted,
        "revenue_cents": revenue,
        "refunded_cents": sum(o["total_cents"] for o in orders if o["status"] == "refunded"),
        "average_order_value_cents": round(revenue / orders_counted) if orders_counted else 0,
        "by_segment": dict(sorted(segments.items())),
        "top_customers": [
            {
                "customer_id": cid,
                "name": by_id[cid]["name"],
                "segment": by_id[cid]["segment"],
                "orders": count[cid],
                "revenue_cents": spend[cid],
            }
            for cid in top
        ],
        "orders_without_customer": orphans,
    }


def product_metrics(orders: list[Record], products: list[Record]) -> dict[str, Any]:
    """What sells: units, revenue and gross margin per category, the best sellers and what did not
    sell."""
    by_id = {p["product_id"]: p for p in products}
    units: dict[int, int] = defaultdict(int)
    revenue: dict[int, int] = defaultdict(int)
    orphans = 0
    for o in _completed(orders):
        if o["product_id"] not in by_id:
            orphans += 1
            continue
        units[o["product_id"]] += o["quantity"]
        revenue[o["product_id"]] += o["total_cents"]
    margin = {pid: revenue[pid] - by_id[pid]["cost_cents"] * units[pid] for pid in units}
    categories: dict[str, dict[str, int]] = {}
    for pid in units:
        cat = categories.setdefault(
            by_id[pid]["category"], {"units": 0, "revenue_cents": 0, "margin_cents": 0}
        )
        cat["units"] += units[pid]
        cat["revenue_cents"] += revenue[pid]
        cat["margin_cents"] += margin[pid]
    total_revenue = sum(revenue.values())
    top = sorted(revenue, key=lambda pid: (-revenue[pid], pid))[:TOP_N]
    return {
        "products_total": len(products),
        "products_sold": len(units),
        "units_sold": sum(units.values()),
        "revenue_cents": total_revenue,
        "gross_margin_cents": sum(margin.values()),
        "margin_rate": _rate(sum(margin.values()), total_revenue),
        "by_category": dict(sorted(categories.items())),
        "top_products": [
            {
                "product_id": pid,
                "name": by_id[pid]["name"],
                "category": by_id[pid]["category"],
                "units": units[pid],
                "revenue_cents": revenue[pid],
            }
            for pid in top
        ],
        "unsold_products": sorted(set(by_id) - set(units)),
        "orders_without_product": orphans,
    }


def insights(customers: Mapping[str, Any], products: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Findings a person would act on, each with a severity (`info` or `warning`) and the figure
    behind it.

    The two transforms computed revenue from different joins; they must agree, and a mismatch (an
    order whose customer or product the extracts did not return) is reported as a data-quality
    warning.
    """
    found: list[dict[str, Any]] = []

    def add(kind: str, message: str, value: Any, severity: str = "info") -> None:
        found.append({"kind": kind, "severity": severity, "message": message, "value": value})

    revenue = customers["revenue_cents"]
    add(
        "revenue",
        f"revenue {dollars(revenue)} from {customers['orders_completed']} completed orders, "
        f"average order {dollars(customers['average_order_value_cents'])}",
        revenue,
    )
    orphans = customers["orders_without_customer"] + products["orders_without_product"]
    if revenue != products["revenue_cents"] or orphans:
        add(
            "data_quality",
            f"customer-side revenue {dollars(revenue)} differs from product-side revenue "
            f"{dollars(products['revenue_cents'])}: the extracts disagree",
            products["revenue_cents"] - revenue,
            "warning",
        )
    segments = customers["by_segment"]
    if segments and revenue:
        name, seg = max(segments.items(), key=lambda kv: (kv[1]["revenue_cents"], kv[0]))
        share = _rate(seg["revenue_cents"], revenue)
        add(
            "top_segment",
            f"{name} customers bring {share:.0%} of revenue ({seg['customers']} of "
            f"{customers['active_customers']} active customers)",
            share,
        )
    repeat = customers["repeat_rate"]
    add(
        "repeat_rate",
        f"{repeat:.0%} of active customers ordered more than once",
        repeat,
        "warning" if repeat < LOW_REPEAT_RATE else "info",
    )
    categories = products["by_category"]
    if categories and products["revenue_cents"]:
        name, cat = max(categories.items(), key=lambda kv: (kv[1]["revenue_cents"], kv[0]))
        share = _rate(cat["revenue_cents"], products["revenue_cents"])
        add(
            "top_category",
            f"{name} is the best-selling category with {share:.0%} of revenue",
            share,
        )
        low_name, low = min(
            categories.items(),
            key=lambda kv: (_rate(kv[1]["margin_cents"], kv[1]["revenue_cents"]), kv[0]),
        )
        low_rate = _rate(low["margin_cents"], low["revenue_cents"])
        add("lowest_margin", f"{low_name} has the lowest gross margin, {low_rate:.0%}", low_rate)
    refunded = customers["refunded_cents"]
    refund_rate = _rate(refunded, revenue + refunded)
    add(
        "refund_rate",
        f"{refund_rate:.1%} of order value was refunded ({dollars(refunded)})",
        refund_rate,
        "warning" if refund_rate > HIGH_REFUND_RATE else "info",
    )
    if products["unsold_products"]:
        n = len(products["unsold_products"])
        add(
            "unsold_products",
            f"{n} of {products['products_total']} products did not sell in the period",
            n,
            "warning",
        )
    return found
