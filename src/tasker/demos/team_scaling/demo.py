"""The team-scaling story, run end to end: two teams' `process_refund`, a deploy of 2.1.0, a
cross-namespace call.

1. Payments 2.0.0 and customer success 1.4.0 are loaded; the payments team starts a refund of its
   own.
2. Payments deploys 2.1.0 (loaded beside 2.0.0); a caller pins 2.0.0 explicitly for one more refund.
3. A customer's ticket becomes a customer-success refund, whose `refund_payment` step runs the
   payments team's `payments/process_refund` (unpinned, so 2.1.0) as a sub-workflow: a child task
   it waits for without holding a worker or polling.
4. One worker runs everything: the task created before the deploy runs 2.0.0's four steps, the new
   one 2.1.0's five. The gateway times out once on the way; the refund still happens exactly once.

`run_story(engine)` returns the task ids; `describe(engine, ids)` turns them into lines to print.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tasker import Task, Tasker
from tasker.demos.team_scaling import services
from tasker.demos.team_scaling.services import Payment, Ticket

TEMPLATES = Path(__file__).parent / "templates"
PAYMENTS_2_0_0 = TEMPLATES / "payments" / "process_refund-2.0.0.yaml"
PAYMENTS_2_1_0 = TEMPLATES / "payments" / "process_refund-2.1.0.yaml"
CUSTOMER_SUCCESS_1_4_0 = TEMPLATES / "customer_success" / "process_refund-1.4.0.yaml"
PAYMENTS = "payments/process_refund"
CUSTOMER_SUCCESS = "customer_success/process_refund"


def seed_world() -> services.World:
    """A fresh world: three captured payments and one open ticket about the first."""
    world = services.reset()
    today = datetime.now(UTC).date()
    world.add_payment(Payment("pay_1001", "ada@example.com", 4_999, today - timedelta(days=5)))
    world.add_payment(Payment("pay_1002", "grace@example.com", 18_000, today - timedelta(days=2)))
    world.add_payment(Payment("pay_1003", "alan@example.com", 2_500, today - timedelta(days=1)))
    world.open_ticket(Ticket("T-1001", "ada@example.com"))
    return world


def refund_request(ticket_id: str = "T-1001", **overrides: Any) -> dict[str, Any]:
    """A customer-success refund context for the seeded ticket (a damaged item bought five days
    ago)."""
    purchased = datetime.now(UTC).date() - timedelta(days=5)
    return {
        "ticket_id": ticket_id,
        "customer_email": "ada@example.com",
        "payment_id": "pay_1001",
        "amount_cents": 4_999,
        "reason": "damaged",
        "purchased_on": purchased.isoformat(),
        **overrides,
    }


def run_story(engine: Tasker) -> dict[str, int]:
    world = seed_world()
    engine.load_templates(PAYMENTS_2_0_0)
    engine.load_templates(CUSTOMER_SUCCESS_1_4_0)
    before_deploy = engine.create_task(
        PAYMENTS, {"payment_id": "pay_1003", "amount_cents": 2_500, "reason": "duplicate_charge"}
    )
    engine.load_templates(PAYMENTS_2_1_0)  # the deploy: 2.1.0 is now the latest, 2.0.0 stays loaded
    pinned = engine.create_task(
        PAYMENTS,
        {"payment_id": "pay_1002", "amount_cents": 3_000, "reason": "goodwill"},
        version="2.0.0",
    )
    request = engine.create_task(CUSTOMER_SUCCESS, refund_request())
    world.fail_gateway(1)  # the next gateway call times out
    engine.work(until_idle=True)
    (child,) = engine.child_tasks(request.id)
    return {
        "before_deploy": before_deploy.id,
        "pinned": pinned.id,
        "customer_success": request.id,
        "spawned": child,
    }


def _steps(task: Task) -> str:
    return ", ".join(
        f"{s.name}" + (f" (x{s.attempts})" if s.attempts > 1 else "") for s in task.steps
    )


def describe(engine: Tasker, ids: dict[str, int]) -> Iterator[str]:
    world = services.current()
    labels = {
        "before_deploy": "payments refund created before the 2.1.0 deploy",
        "pinned": "payments refund pinned to version 2.0.0",
        "customer_success": "customer-success refund request for ticket T-1001",
        "spawned": "payments refund run by that request's refund_payment step",
    }
    yield "templates loaded: " + ", ".join(t.key for t in engine.registry.all())
    for label, task_id in ids.items():
        task = engine.get_task(task_id)
        yield f"\ntask {task.id} {task.template_key}: {task.status}  ({labels[label]})"
        yield f"  steps: {_steps(task)}"
        yield f"  correlation id: {task.correlation_id}"
    request = engine.get_task(ids["customer_success"])
    step = request.step("refund_payment")
    refund = (step.results or {}).get("process_gateway_refund", {})
    yield (
        f"\nrefund_payment ran payments task {ids['spawned']} as a sub-workflow, waiting without"
        f" holding a worker or polling ({step.attempts} attempt); refund {refund.get('refund_id')}"
    )
    ticket = world.ticket("T-1001")
    if ticket is not None:
        yield f"ticket {ticket.ticket_id}: {ticket.status} ({'; '.join(ticket.notes)})"
    yield (
        f"gateway: {world.gateway_calls} calls, {len(world.refunds)} refunds issued: "
        + ", ".join(
            f"{r.refund_id} {r.payment_id} {r.amount_cents}c" for r in world.refunds.values()
        )
    )
    yield "outbox:"
    for m in world.outbox.values():
        yield f"  {m.sender:<17} -> {m.to}: {m.subject}"
