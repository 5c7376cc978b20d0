"""Count, from the services' own state, what a registration run left behind.

This is what Marcus did by hand at 4:30 AM in the story, checking each service to see which users
were in which state. Neither coordinator's opinion counts here: only the rows each service stored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable
from typing import Any

from tasker.demos.microservices.services.runner import ServiceFleet


def reconcile(fleet: ServiceFleet) -> dict[str, int]:
    """Users and what each lacks, and duplicates in every service (each extra row counts once)."""
    users = fleet.user.state()["rows"]["users"]
    profiles = fleet.billing.state()["rows"]["billing_profiles"]
    prefs = fleet.preferences.state()["rows"]["preferences"]
    notification = fleet.notification.state()["rows"]
    sequences, emails = notification["welcome_sequences"], notification["emails"]

    billed = {p["user_id"] for p in profiles}
    with_prefs = {p["user_id"] for p in prefs}
    welcomed = {s["user_id"] for s in sequences}
    ids = [u["id"] for u in users]
    return {
        "users": len(users),
        "users_registered": sum(1 for u in users if u["status"] == "registration_complete"),
        "users_without_billing": sum(1 for i in ids if i not in billed),
        "users_without_preferences": sum(1 for i in ids if i not in with_prefs),
        "users_without_welcome": sum(1 for i in ids if i not in welcomed),
        "users_not_registered": sum(1 for u in users if u["status"] != "registration_complete"),
        "duplicate_users": extras(u["email"] for u in users),
        "duplicate_billing_profiles": extras(p["user_id"] for p in profiles),
        "duplicate_preferences": extras(p["user_id"] for p in prefs),
        "duplicate_welcome_sequences": extras(s["user_id"] for s in sequences),
        "duplicate_emails": extras((e["recipient"], e["kind"]) for e in emails),
        "emails_sent": len(emails),
    }


def extras(keys: Iterable[Hashable]) -> int:
    """Rows beyond the first for each key: 0 when every key is unique."""
    return sum(n - 1 for n in Counter(keys).values() if n > 1)


def partial(figures: dict[str, Any]) -> int:
    """Users left half-registered: someone has to find and repair each of them."""
    return int(figures["users_not_registered"])
