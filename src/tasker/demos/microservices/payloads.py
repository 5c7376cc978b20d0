"""What a registration sends to each service, built from the registration's context.

Shared by the workflow's step handlers and the naive coordinator, so both sides of the demo make
exactly the same requests. Bodies are pure functions of the context and earlier results, never of
the clock or the attempt: a retry under the same `Idempotency-Key` must send the same body, or the
service refuses it as a different request.
"""

from __future__ import annotations

from typing import Any

#: Which step of the workflow talks to which service (the step names are the template's).
STEPS = (
    "create_user_account",
    "setup_billing_profile",
    "initialize_preferences",
    "send_welcome_sequence",
    "update_user_status",
)

#: Plan-specific welcome content: the features to announce and the onboarding steps to suggest.
PLAN_FEATURES: dict[str, list[str]] = {
    "free": ["basic_features", "community_support"],
    "pro": ["analytics", "priority_support", "integrations"],
    "enterprise": [
        "advanced_analytics",
        "priority_support",
        "custom_integrations",
        "dedicated_account_manager",
    ],
}
BASE_ONBOARDING = ["complete_profile", "verify_email", "tour_dashboard"]
PLAN_ONBOARDING: dict[str, list[str]] = {
    "free": [],
    "pro": ["connect_first_integration"],
    "enterprise": ["schedule_kickoff_call", "invite_team"],
}


def user_info(context: dict[str, Any]) -> dict[str, Any]:
    return dict(context.get("user_info") or {})


def plan_of(context: dict[str, Any]) -> str:
    return str(user_info(context).get("plan") or "free")


def user_body(context: dict[str, Any]) -> dict[str, Any]:
    """POST /users. Only fields the service stores, so a 409's `existing` user can be compared field
    by field."""
    info = user_info(context)
    prefs = context.get("preferences") or {}
    body: dict[str, Any] = {
        "email": info["email"],
        "name": info["name"],
        "plan": info.get("plan", "free"),
        "source": info.get("source", "web"),
        "marketing_consent": bool(prefs.get("marketing_emails", False)),
    }
    for optional in ("phone", "referral_code"):
        if info.get(optional):
            body[optional] = info[optional]
    return body


def billing_body(context: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """POST /billing_profiles: the plan is billed even when free (a $0 profile), as in the story."""
    info = user_info(context)
    billing = context.get("billing_info") or {}
    body: dict[str, Any] = {
        "user_id": user["user_id"],
        "email": info["email"],
        "name": info["name"],
        "plan": plan_of(context),
    }
    if billing.get("payment_method"):
        body["payment_method"] = billing["payment_method"]
    address = {k: v for k, v in (billing.get("billing_address") or {}).items() if v is not None}
    if address:
        body["billing_address"] = address
    return body


def preferences_body(context: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """POST /preferences: the booleans the user chose (schema defaults: false) and sensible display
    defaults."""
    prefs = context.get("preferences") or {}
    newsletter = bool(prefs.get("newsletter", False))
    return {
        "user_id": user["user_id"],
        "marketing_emails": bool(prefs.get("marketing_emails", False)),
        "product_updates": bool(prefs.get("product_updates", False)),
        "newsletter": newsletter,
        "newsletter_frequency": "weekly" if newsletter else "never",
        "theme": "light",
        "language": "en",
        "timezone": "UTC",
    }


def welcome_body(context: dict[str, Any], user: dict[str, Any], plan: str) -> dict[str, Any]:
    """POST /welcome_sequences: a welcome, the onboarding steps, and what the plan brings."""
    info = user_info(context)
    name = info["name"]
    features = PLAN_FEATURES.get(plan, PLAN_FEATURES["free"])
    onboarding = BASE_ONBOARDING + PLAN_ONBOARDING.get(plan, [])
    emails = [
        {
            "kind": "welcome",
            "subject": f"Welcome to GrowthCorp, {name}!",
            "body": f"Hi {name}, your {plan} account is ready.",
        },
        {
            "kind": "getting_started",
            "subject": "Your first steps",
            "body": "Start here: " + ", ".join(s.replace("_", " ") for s in onboarding) + ".",
        },
    ]
    if plan != "free":
        emails.append(
            {
                "kind": f"{plan}_features",
                "subject": f"What your {plan.title()} plan includes",
                "body": "Included: " + ", ".join(f.replace("_", " ") for f in features) + ".",
            }
        )
    if plan == "enterprise":
        emails.append(
            {
                "kind": "account_manager",
                "subject": "Meet your account manager",
                "body": "Your dedicated account manager will reach out to schedule a kickoff call.",
            }
        )
    return {
        "user_id": user["user_id"],
        "recipient": info["email"],
        "name": name,
        "plan": plan,
        "emails": emails,
    }


def status_body(completed_steps: list[str]) -> dict[str, Any]:
    """PUT /users/{id}/status: the registration is complete, with the steps that made it so."""
    return {"status": "registration_complete", "completed_steps": completed_steps}
