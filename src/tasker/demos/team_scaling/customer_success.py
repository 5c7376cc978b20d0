"""The customer-success team's step handlers for `customer_success/process_refund`.

This team owns the ticket, the refund policy and the approval; it does not move money. For that
its template runs the payments team's workflow as a sub-workflow (`refund_payment`, a `task:` step
with no handler): the engine creates the `payments/process_refund` task once, the step waits for it
without holding a worker or polling, and completes with its steps' results (or fails with its
error). The approval runs only for refunds above the limit (a `when:` on the step).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from tasker import PermanentError, StepContext, StepHandler
from tasker.demos.team_scaling import services
from tasker.demos.team_scaling.payments import dollars
from tasker.demos.team_scaling.services import Message


class ValidateRefundRequestHandler(StepHandler):
    """The ticket exists, is still open, and belongs to the customer asking."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        tid, email = ctx.context["ticket_id"], ctx.context["customer_email"]
        ticket = services.current().ticket(tid)
        if ticket is None:
            raise PermanentError(
                f"ticket {tid} does not exist; fix: check ticket_id", error_code="TICKET_NOT_FOUND"
            )
        if ticket.status != "open":
            raise PermanentError(
                f"ticket {tid} is {ticket.status}, not open", error_code="TICKET_NOT_OPEN"
            )
        if ticket.customer_email.lower() != email.lower():
            raise PermanentError(
                f"ticket {tid} belongs to another customer than {email}",
                error_code="TICKET_CUSTOMER_MISMATCH",
            )
        return {
            "ticket_id": tid,
            "customer_email": email,
            "amount_cents": ctx.context["amount_cents"],
        }


class CheckRefundPolicyHandler(StepHandler):
    """The refund window and the reasons the policy covers; says whether a manager must approve."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        cfg = ctx.handler_config
        today = (
            date.fromisoformat(ctx.context["requested_on"])
            if "requested_on" in ctx.context
            else datetime.now(UTC).date()
        )
        age = (today - date.fromisoformat(ctx.context["purchased_on"])).days
        window = int(cfg.get("refund_window_days", 30))
        if age > window:
            raise PermanentError(
                f"purchase is {age} days old, outside the {window}-day refund window",
                error_code="OUTSIDE_REFUND_WINDOW",
            )
        reason = ctx.context["reason"]
        if reason in cfg.get("no_refund_reasons", []):
            raise PermanentError(
                f"refund reason '{reason}' is not covered by the refund policy",
                error_code="REASON_NOT_COVERED",
            )
        limit = int(cfg.get("auto_approve_limit_cents", 10_000))
        amount = ctx.context["amount_cents"]
        return {
            "purchase_age_days": age,
            "requires_approval": amount > limit,
            "auto_approve_limit_cents": limit,
        }


class GetManagerApprovalHandler(StepHandler):
    """Refunds above the limit need the manager named in the context (the step runs only for
    those: its `when`; smaller ones skip it).

    Without one the step stops (`PermanentError`: retrying cannot produce a manager). A manager who
    approves later resolves the step by hand with `{"approved_by": "<manager>"}` and the refund
    proceeds.
    """

    def process(self, ctx: StepContext) -> dict[str, Any]:
        policy = ctx.result_of("check_refund_policy")  # requires_approval: the step's `when`
        manager = ctx.context.get("manager_id")
        if not manager:
            raise PermanentError(
                f"refund of {dollars(ctx.context['amount_cents'])} is above the"
                f" {dollars(policy['auto_approve_limit_cents'])} auto-approval limit; fix: a"
                ' manager resolves this step by hand with {"approved_by": "<manager>"}',
                error_code="APPROVAL_REQUIRED",
            )
        return {"approved": True, "approved_by": manager}


class UpdateTicketStatusHandler(StepHandler):
    """Close the ticket with the refund the payments workflow issued (`refund_payment`'s results
    are that workflow's steps' results)."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        payments = ctx.result_of("refund_payment")
        refund = payments["process_gateway_refund"]
        note = f"refund {refund['refund_id']} issued by the payments team"
        ticket = services.current().close_ticket(ctx.context["ticket_id"], note)
        return {"ticket_id": ticket.ticket_id, "ticket_status": ticket.status, "note": note}


class NotifyCustomerHandler(StepHandler):
    """Tell the customer the ticket is settled (payments sends its own receipt: two teams, two
    messages)."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        email = ctx.context["customer_email"]
        amount = dollars(ctx.context["amount_cents"])
        subject = f"Ticket {ctx.context['ticket_id']}: your refund of {amount} is on its way"
        services.current().send(Message("customer_success", email, subject, ctx.idempotency_key))
        return {"sent_to": email, "subject": subject}
