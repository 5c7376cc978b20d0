"""`OrderProcessingHandler`: the workflow-level logic of `ecommerce/process_order` (the
"ConfiguredTask").

The steps know nothing of each other; what concerns the whole checkout lives here. Before the first
step, the order's priority and the customer's tier become explicit settings in the stored context
(so every step, and anyone inspecting the task later, reads the same decision). When the task ends,
its outcome is summarised in annotations an operator or a dashboard can read without opening every
step.
"""

from __future__ import annotations

import copy
from typing import Any

from tasker import StepState, Task, TaskHandler

#: What express and overnight orders get; `delivery_days` feeds the order's estimated delivery date.
EXPRESS_SETTINGS: dict[str, dict[str, Any]] = {
    "express": {
        "delivery_days": 2,
        "payment_timeout_ms": 15000,
        "warehouse_queue": "priority",
        "email_template": "express_confirmation",
    },
    "overnight": {
        "delivery_days": 1,
        "payment_timeout_ms": 15000,
        "warehouse_queue": "same_day",
        "email_template": "express_confirmation",
    },
}
PREMIUM_TIERS = ("premium", "enterprise")
#: Error codes of failures after which the charge had been refunded already.
REFUNDED_ON = ("PAYMENT_REFUNDED",)


class OrderProcessingHandler(TaskHandler):
    def prepare_context(self, context: dict[str, Any]) -> dict[str, Any]:
        """Add `express_processing` for express/overnight orders and `premium_processing` for
        premium tiers."""
        ctx = copy.deepcopy(context)
        priority = ctx.get("priority", "standard")
        if priority in EXPRESS_SETTINGS:
            ctx["express_processing"] = {"priority": priority, **EXPRESS_SETTINGS[priority]}
        if (ctx.get("customer_info") or {}).get("tier") in PREMIUM_TIERS:
            ctx["premium_processing"] = {"priority": "high", "faster_processing": True}
        return ctx

    def on_complete(self, task: Task) -> dict[str, Any]:
        """The order number, what was charged and how long the checkout took, retries included."""
        order = _results(task, "create_order")
        cart = _results(task, "validate_cart")
        duration = task.duration_seconds
        return {
            "order_number": order.get("order_number"),
            "order_total": cart.get("total"),
            "checkout_duration_seconds": round(duration, 3) if duration is not None else None,
            "attempts": sum(s.attempts for s in task.steps),
            "retried_steps": sorted(s.name for s in task.steps if s.attempts > 1),
        }

    def on_error(self, task: Task) -> dict[str, Any]:
        """Which step failed and whether money is held without an order, which an operator must know
        first (also called when the task was compensated: its refund is `undo:process_payment`)."""
        failed = [s for s in task.steps if s.status == StepState.ERROR]
        payment = next((s for s in task.steps if s.name == "process_payment"), None)
        charged = payment is not None and payment.status in (
            StepState.COMPLETE,
            StepState.RESOLVED_MANUALLY,
        )
        first = failed[0] if failed else None
        error: dict[str, Any] = dict(first.last_error or {}) if first else {}
        refund = next((s for s in task.steps if s.name == "undo:process_payment"), None)
        refunded = (refund is not None and refund.status == StepState.COMPLETE) or (
            error.get("error_code") in REFUNDED_ON
        )
        return {
            "failed_step": first.name if first else None,
            "error_code": error.get("error_code"),
            "payment_captured": charged and not refunded,
            "payment_refunded": charged and refunded,
            "needs_attention": charged and not refunded,
        }


def _results(task: Task, step: str) -> dict[str, Any]:
    for s in task.steps:
        if s.name == step:
            return s.results or {}
    return {}
