"""The story's "before": a registration coordinator that calls the four services in order, and
nothing more.

It makes the same requests as the workflow (`payloads.py`), with plain httpx calls, one after the
other: create the user, set up billing, initialise preferences, send the welcome sequence, mark the
user registered. It has no retries, no idempotency keys and no memory of what it did: the first
failure propagates, and whatever was already created stays behind. That is the 4:30 AM of the story:
users with an account but no billing profile, no preferences, no welcome mail, found later by hand.
It exists to be measured, not imitated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from tasker.demos.microservices import payloads


class RegistrationFailed(Exception):
    """One registration stopped at `step`; the services keep what the earlier steps created."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step


def register(
    client: httpx.Client, urls: Mapping[str, str], context: dict[str, Any]
) -> dict[str, Any]:
    """Register one user across the four services; raises `RegistrationFailed` at the first
    failure."""
    headers = (
        {"X-Correlation-ID": str(context.get("correlation_id") or "")}
        if context.get("correlation_id")
        else {}
    )

    def call(step: str, method: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = client.request(method, url, json=body, headers=headers)
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            raise RegistrationFailed(
                step, f"{exc.response.status_code} {exc.response.text[:200]}"
            ) from exc
        except httpx.HTTPError as exc:
            raise RegistrationFailed(step, f"{type(exc).__name__}: {exc}") from exc
        return dict(response.json())

    user = call("create_user_account", "POST", f"{urls['user']}/users", payloads.user_body(context))
    ref = {"user_id": user["id"]}
    billing = call(
        "setup_billing_profile",
        "POST",
        f"{urls['billing']}/billing_profiles",
        payloads.billing_body(context, ref),
    )
    call(
        "initialize_preferences",
        "POST",
        f"{urls['preferences']}/preferences",
        payloads.preferences_body(context, ref),
    )
    call(
        "send_welcome_sequence",
        "POST",
        f"{urls['notification']}/welcome_sequences",
        payloads.welcome_body(context, ref, billing.get("plan") or payloads.plan_of(context)),
    )
    return call(
        "update_user_status",
        "PUT",
        f"{urls['user']}/users/{user['id']}/status",
        payloads.status_body(list(payloads.STEPS[:4])),
    )
