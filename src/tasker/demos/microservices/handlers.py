"""The step handlers of `blog_examples/user_registration`: one HTTP call each, to the step's own
service.

Everything about HTTP (idempotency key and correlation id headers, status classification,
Retry-After, 409 resolution, timings, the service_call_* events) comes from `tasker.ApiStepHandler`;
these classes only say what to send (`payloads.py`, shared with the naive coordinator) and what to
keep for later steps. Every result carries the correlation id, and every log line names it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx

from tasker import ApiRequest, ApiStepHandler, PermanentError, StepContext
from tasker.demos.microservices import payloads


class RegistrationStep(ApiStepHandler):
    """What the five steps share: a required id in the response, and results that name the
    service."""

    service: ClassVar[str] = ""
    #: The field of the response body that must be there (the created resource's id).
    id_field: ClassVar[str] = "id"
    #: Its name in the step's results.
    result_id: ClassVar[str] = "id"

    def process_response(self, ctx: StepContext, response: httpx.Response) -> dict[str, Any]:
        results = super().process_response(ctx, response)
        body = results.get("response")
        if not isinstance(body, dict) or body.get(self.id_field) is None:
            raise PermanentError(
                f"{self.service} answered {response.status_code} without '{self.id_field}' "
                f"[correlation_id={ctx.correlation_id}]",
                error_code=f"MISSING_{self.result_id.upper()}_IN_RESPONSE",
            )
        results[self.result_id] = body[self.id_field]
        results["service"] = self.service
        results["status"] = "created"
        results.update(self.keep(ctx, body))
        ctx.logger.info(
            "%s: %s %s=%s in %.1f ms [correlation_id=%s]",
            ctx.step_name,
            self.service,
            self.result_id,
            body[self.id_field],
            results["response_time_ms"],
            ctx.correlation_id,
        )
        return results

    def on_conflict(self, ctx: StepContext, response: httpx.Response) -> dict[str, Any]:
        """The resource exists and matches what we asked for: an earlier attempt (or run) made
        it."""
        results = super().on_conflict(ctx, response)
        results["status"] = "already_exists"
        ctx.logger.info(
            "%s: %s already had it, the same as requested [correlation_id=%s]",
            ctx.step_name,
            self.service,
            ctx.correlation_id,
        )
        return results

    def keep(self, ctx: StepContext, body: dict[str, Any]) -> dict[str, Any]:
        """Further fields of the response that later steps need."""
        return {}

    @staticmethod
    def user(ctx: StepContext) -> dict[str, Any]:
        user: dict[str, Any] = ctx.result_of("create_user_account")
        return user


class CreateUserAccountHandler(RegistrationStep):
    service = "UserService"
    result_id = "user_id"

    def build_request(self, ctx: StepContext) -> ApiRequest:
        return ApiRequest("POST", "/users", json=payloads.user_body(ctx.context))

    def keep(self, ctx: StepContext, body: dict[str, Any]) -> dict[str, Any]:
        return {"email": body.get("email"), "plan": body.get("plan")}


class SetupBillingProfileHandler(RegistrationStep):
    service = "BillingService"
    result_id = "profile_id"

    def build_request(self, ctx: StepContext) -> ApiRequest:
        return ApiRequest(
            "POST", "/billing_profiles", json=payloads.billing_body(ctx.context, self.user(ctx))
        )

    def keep(self, ctx: StepContext, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "user_id": body.get("user_id"),
            "plan": body.get("plan"),
            "monthly_price_cents": body.get("monthly_price_cents"),
        }


class InitializePreferencesHandler(RegistrationStep):
    service = "PreferencesService"
    result_id = "preferences_id"

    def build_request(self, ctx: StepContext) -> ApiRequest:
        return ApiRequest(
            "POST", "/preferences", json=payloads.preferences_body(ctx.context, self.user(ctx))
        )

    def keep(self, ctx: StepContext, body: dict[str, Any]) -> dict[str, Any]:
        return {"user_id": body.get("user_id"), "newsletter": body.get("newsletter")}


class SendWelcomeSequenceHandler(RegistrationStep):
    service = "NotificationService"
    result_id = "sequence_id"

    def build_request(self, ctx: StepContext) -> ApiRequest:
        billing = ctx.results.get("setup_billing_profile") or {}
        plan = billing.get("plan") or payloads.plan_of(ctx.context)
        return ApiRequest(
            "POST",
            "/welcome_sequences",
            json=payloads.welcome_body(ctx.context, self.user(ctx), plan),
        )

    def keep(self, ctx: StepContext, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "plan": body.get("plan"),
            "emails_sent": body.get("emails_sent"),
            "email_ids": [e.get("id") for e in body.get("emails") or []],
        }


class SendConfirmationReminderHandler(RegistrationStep):
    """The user did not confirm their e-mail address in time (`confirm_email` timed out and was
    skipped): send one reminder."""

    service = "NotificationService"
    result_id = "reminder_id"

    def build_request(self, ctx: StepContext) -> ApiRequest:
        info = payloads.user_info(ctx.context)
        return ApiRequest(
            "POST",
            "/reminders",
            json={
                "user_id": self.user(ctx)["user_id"],
                "recipient": info["email"],
                "name": info["name"],
                "kind": "confirm_email",
            },
        )

    def keep(self, ctx: StepContext, body: dict[str, Any]) -> dict[str, Any]:
        return {"reminder_id": body.get("id"), "kind": body.get("kind")}


class UpdateUserStatusHandler(RegistrationStep):
    service = "UserService"
    result_id = "user_id"

    def build_request(self, ctx: StepContext) -> ApiRequest:
        done = [s for s in payloads.STEPS if s in ctx.results]
        return ApiRequest(
            "PUT", f"/users/{self.user(ctx)['user_id']}/status", json=payloads.status_body(done)
        )

    def keep(self, ctx: StepContext, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "status": body.get("status"),
            "registration_complete": body.get("status") == "registration_complete",
            "completed_steps": body.get("completed_steps"),
        }


class DeactivateUserAccountHandler(RegistrationStep):
    """`create_user_account`'s compensation: when billing refuses the customer for good, the
    account it created is suspended, so that no user exists without billing."""

    service = "UserService"
    result_id = "user_id"

    def build_request(self, ctx: StepContext) -> ApiRequest:
        user_id = (ctx.forward_results or {})["user_id"]
        return ApiRequest(
            "PUT", f"/users/{user_id}/status", json={"status": "suspended", "completed_steps": []}
        )

    def keep(self, ctx: StepContext, body: dict[str, Any]) -> dict[str, Any]:
        return {"status": body.get("status")}
