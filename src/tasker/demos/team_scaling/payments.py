"""The payments team's step handlers for `payments/process_refund` (2.0.0 and 2.1.0 share them).

Versions pin a workflow's structure (its steps, their order, their retry policy), not the Python
code: a task created on 2.0.0 runs 2.0.0's steps after 2.1.0 is deployed, but those steps call the
classes that are installed. So a handler shared by two versions stays compatible with both, and a
step whose behaviour must change gets a new class (here `ScreenForFraudHandler`, which only 2.1.0
has).
"""

from __future__ import annotations

from typing import Any

from tasker import PermanentError, RetryableError, StepContext, StepHandler
from tasker.demos.team_scaling import services
from tasker.demos.team_scaling.services import GatewayUnavailable, Message, RefundRefused


def dollars(cents: int) -> str:
    return f"${cents / 100:,.2f}"


class ValidatePaymentEligibilityHandler(StepHandler):
    """The payment exists and still has the amount left to refund; otherwise no retry can help."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        pid, amount = ctx.context["payment_id"], ctx.context["amount_cents"]
        pay = services.current().payment(pid)
        if pay is None:
            raise PermanentError(
                f"payment {pid} does not exist; fix: check payment_id",
                error_code="PAYMENT_NOT_FOUND",
            )
        if amount > pay.refundable_cents:
            raise PermanentError(
                f"refund of {dollars(amount)} exceeds the {dollars(pay.refundable_cents)} left on"
                f" payment {pid}",
                error_code="REFUND_EXCEEDS_PAYMENT",
            )
        return {
            "payment_id": pid,
            "amount_cents": amount,
            "refundable_cents": pay.refundable_cents,
            "customer_email": pay.customer_email,
        }


class ScreenForFraudHandler(StepHandler):
    """New in 2.1.0: large refunds wait for the risk team.

    The hold is a `PermanentError` on purpose: retrying cannot approve it, a person must. After
    review, the risk team resolves the step by hand (`tasker tasks resolve ID screen_for_fraud`) and
    the refund proceeds as if the screen had passed.
    """

    def process(self, ctx: StepContext) -> dict[str, Any]:
        amount = ctx.context["amount_cents"]
        limit = int(ctx.handler_config.get("review_above_cents", 50_000))
        if amount > limit:
            raise PermanentError(
                f"refund of {dollars(amount)} is above the {dollars(limit)} review limit and needs"
                " the risk team; fix: after review, resolve this step by hand",
                error_code="MANUAL_REVIEW_REQUIRED",
            )
        return {"risk": "low", "review_above_cents": limit}


class ProcessGatewayRefundHandler(StepHandler):
    """Refund through the gateway under the step's idempotency key, so a retry after a timeout
    refunds once."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        try:
            refund = services.current().gateway_refund(
                ctx.context["payment_id"],
                ctx.context["amount_cents"],
                ctx.context["reason"],
                key=ctx.idempotency_key,
            )
        except GatewayUnavailable as exc:
            raise RetryableError(str(exc), error_code="GATEWAY_UNAVAILABLE") from exc
        except RefundRefused as exc:
            raise PermanentError(
                f"the gateway refused the refund: {exc}", error_code="REFUND_REFUSED"
            ) from exc
        return {"refund_id": refund.refund_id, "amount_cents": refund.amount_cents}


class UpdatePaymentRecordsHandler(StepHandler):
    def process(self, ctx: StepContext) -> dict[str, Any]:
        world = services.current()
        refund = world.refund_by_id(ctx.result_of("process_gateway_refund")["refund_id"])
        if refund is None:
            raise PermanentError(
                "the gateway has no record of the refund it returned", error_code="REFUND_MISSING"
            )
        left = world.record_refund(refund)
        return {"refund_id": refund.refund_id, "remaining_refundable_cents": left}


class SendRefundReceiptHandler(StepHandler):
    """Mail the customer a receipt; the outbox keys messages by the step's idempotency key, so a
    resend is one mail."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        email = ctx.result_of("validate_payment_eligibility")["customer_email"]
        refund = ctx.result_of("process_gateway_refund")
        subject = f"Receipt: {dollars(refund['amount_cents'])} refunded ({refund['refund_id']})"
        services.current().send(Message("payments", email, subject, ctx.idempotency_key))
        return {
            "sent_to": email,
            "subject": subject,
            "workflow": f"{ctx.namespace}/{ctx.task_name}@{ctx.version}",
        }
