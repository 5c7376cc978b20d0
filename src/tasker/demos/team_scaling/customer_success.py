"""The customer-success team's step handlers for `customer_success/process_refund`.

This team owns the ticket, the refund policy and the approval; it does not move money. For that it
asks the payments team's workflow, the way it would call another team's service:
`execute_refund_workflow` creates a `payments/process_refund` task with `ctx.create_task`
(idempotent across the step's retries, so a lost reply never asks for the refund twice), and
`wait_for_refund` reads that task with `ctx.get_task`, raising `RetryableError(retry_after=...)`
while it is still running, so the wait holds no worker and survives restarts. A payments task that
fails makes this step fail with its reason.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from tasker import PermanentError, RetryableError, StepContext, StepHandler, StepState
from tasker.demos.team_scaling import services
from tasker.demos.team_scaling.payments import dollars
from tasker.demos.team_scaling.services import Message

FINISHED_OK = ("complete", "resolved_manually")
FINISHED_BADLY = ("error", "cancelled")


def simulate_lost_reply(ctx: StepContext) -> None:
    """Fail the first attempts named in `simulate_failures` after the step's work is done (a lost
    reply)."""
    planned = int(ctx.context.get("simulate_failures", {}).get(ctx.step_name, 0))
    if ctx.attempt <= planned:
        raise RetryableError(
            f"connection lost before the reply (simulated failure {ctx.attempt} of {planned})"
        )


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
    """Small refunds are approved by policy; larger ones need the manager named in the context.

    Without one the step stops (`PermanentError`: retrying cannot produce a manager). A manager who
    approves later resolves the step by hand with `{"approved_by": "<manager>"}` and the refund
    proceeds.
    """

    def process(self, ctx: StepContext) -> dict[str, Any]:
        policy = ctx.result_of("check_refund_policy")
        if not policy["requires_approval"]:
            return {"approved": True, "approved_by": "policy:auto"}
        manager = ctx.context.get("manager_id")
        if not manager:
            raise PermanentError(
                f"refund of {dollars(ctx.context['amount_cents'])} is above the"
                f" {dollars(policy['auto_approve_limit_cents'])} auto-approval limit; fix: a"
                ' manager resolves this step by hand with {"approved_by": "<manager>"}',
                error_code="APPROVAL_REQUIRED",
            )
        return {"approved": True, "approved_by": manager}


class ExecuteRefundWorkflowHandler(StepHandler):
    """Create the payments team's refund task: a cross-namespace call, made once however often this
    step runs."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        template = ctx.handler_config.get("payments_template", "payments/process_refund")
        version = ctx.handler_config.get("payments_version")
        child_id = ctx.create_task(
            template,
            {
                "payment_id": ctx.context["payment_id"],
                "amount_cents": ctx.context["amount_cents"],
                "reason": ctx.context["reason"],
                "requested_by": "customer_success",
                "ticket_id": ctx.context["ticket_id"],
            },
            version=None if version in (None, "", "latest") else str(version),
        )
        simulate_lost_reply(ctx)
        child = ctx.get_task(child_id)
        ctx.logger.info("asked payments for the refund: task %s (%s)", child_id, child.template_key)
        return {"payments_task_id": child_id, "payments_workflow": child.template_key}


class WaitForRefundHandler(StepHandler):
    """Poll the payments task: done -> its refund, failed -> fail with its reason, else ask to be
    run again later.

    The poll interval doubles from `poll_seconds` up to `max_poll_seconds`: a refund that finishes
    in a second is seen at once, one held up by an outage costs a poll a minute, not one a second.
    """

    def process(self, ctx: StepContext) -> dict[str, Any]:
        child_id = ctx.result_of("execute_refund_workflow")["payments_task_id"]
        child = ctx.get_task(child_id)
        if child.status in FINISHED_OK:
            refund = child.step("process_gateway_refund").results or {}
            return {
                "payments_task_id": child_id,
                "payments_status": child.status,
                "refund_id": refund.get("refund_id"),
                "polls": ctx.attempt,
            }
        if child.status in FINISHED_BADLY:
            failed = next((s for s in child.steps if s.status == StepState.ERROR), None)
            # the child's own "fix:" is for the payments team; this step's reader gets the reason
            # and its own fix
            reason = (
                (failed.last_error["message"] if failed.last_error else "").split("; fix:")[0]
                if failed
                else ""
            )
            why = f" at step {failed.name}: {reason}" if failed else ""
            raise PermanentError(
                f"payments task {child_id} ended {child.status}{why}; fix: once the payments team"
                " has retried or resolved it, retry this task",
                error_code="PAYMENTS_REFUND_FAILED",
            )
        first = float(ctx.handler_config.get("poll_seconds", 1))
        delay = min(
            first * 2 ** (ctx.attempt - 1), float(ctx.handler_config.get("max_poll_seconds", 60))
        )
        # Not an outage of anything: the refund is simply not done yet, so the breaker must not
        # count it.
        raise RetryableError(
            f"payments task {child_id} is {child.status}",
            retry_after=delay,
            error_code="PAYMENTS_REFUND_RUNNING",
            system_fault=False,
        )


class UpdateTicketStatusHandler(StepHandler):
    def process(self, ctx: StepContext) -> dict[str, Any]:
        done = ctx.result_of("wait_for_refund")
        note = f"refund {done['refund_id']} issued by payments task {done['payments_task_id']}"
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
