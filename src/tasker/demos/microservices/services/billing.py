"""BillingService: one billing profile per user, priced by plan.

POST /billing_profiles          create (201); 409 with the existing profile if the user has one;
                                422 when a paid plan comes without a payment method; 402 for a
                                payment method the card network refuses (`pm_refused...`)
GET  /billing_profiles/{id}, GET /billing_profiles?user_id=...
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from tasker.demos.microservices.services.base import (
    Email,
    Service,
    ServiceError,
    conflict,
    correlation_id,
    not_found,
    now,
)

#: Payment methods that start so are refused for good (402): a customer billing cannot take.
REFUSED_PAYMENT_METHOD = "pm_refused"

SCHEMA = """
CREATE TABLE IF NOT EXISTS billing_profiles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    email TEXT NOT NULL,
    name TEXT NOT NULL,
    plan TEXT NOT NULL,
    monthly_price_cents INTEGER NOT NULL,
    currency TEXT NOT NULL,
    payment_method TEXT,
    billing_address_json TEXT,
    status TEXT NOT NULL,
    correlation_id TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS billing_profiles_user ON billing_profiles (user_id);
"""

#: Monthly price of each plan, in cents.
PRICES = {"free": 0, "pro": 2900, "enterprise": 29900}


class Address(BaseModel):
    model_config = ConfigDict(extra="forbid")

    street: str | None = None
    city: str | None = None
    state: str | None = None
    zip: str | None = None


class NewProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(ge=1)
    email: Email
    name: str = Field(min_length=1, max_length=200)
    plan: Literal["free", "pro", "enterprise"]
    payment_method: str | None = Field(None, max_length=64)
    billing_address: Address | None = None


class BillingService(Service):
    name = "billing"
    display_name = "BillingService"
    schema = SCHEMA
    tables = ("billing_profiles",)

    def add_routes(self, app: FastAPI) -> None:
        @app.post("/billing_profiles", status_code=201)
        def create_profile(body: NewProfile, request: Request) -> dict[str, Any]:
            if body.plan != "free" and not body.payment_method:
                raise ServiceError(
                    422, "validation_failed", f"payment_method: required for the {body.plan} plan"
                )
            if (body.payment_method or "").startswith(REFUSED_PAYMENT_METHOD):
                raise ServiceError(
                    402, "payment_refused", "the card network refuses this payment method"
                )
            with self.store.transaction() as conn:
                existing = conn.execute(
                    "SELECT * FROM billing_profiles WHERE user_id = ? ORDER BY id LIMIT 1",
                    (body.user_id,),
                ).fetchone()
                if existing is not None:
                    raise conflict(
                        f"user {body.user_id} already has a billing profile",
                        _profile(dict(existing)),
                    )
                address = (
                    body.billing_address.model_dump(exclude_none=True)
                    if body.billing_address
                    else None
                )
                cur = conn.execute(
                    "INSERT INTO billing_profiles (user_id, email, name, plan, monthly_price_cents,"
                    " currency, payment_method, billing_address_json, status, correlation_id,"
                    " created_at) VALUES (?, ?, ?, ?, ?, 'USD', ?, ?, 'active', ?, ?)",
                    (
                        body.user_id,
                        body.email,
                        body.name,
                        body.plan,
                        PRICES[body.plan],
                        body.payment_method,
                        json.dumps(address) if address is not None else None,
                        correlation_id(request),
                        now(),
                    ),
                )
                row = conn.execute(
                    "SELECT * FROM billing_profiles WHERE id = ?", (cur.lastrowid,)
                ).fetchone()
            return _profile(dict(row))

        @app.get("/billing_profiles/{profile_id}")
        def get_profile(profile_id: int) -> dict[str, Any]:
            row = self.store.row("SELECT * FROM billing_profiles WHERE id = ?", (profile_id,))
            if row is None:
                raise not_found(f"no billing profile with id {profile_id}")
            return _profile(row)

        @app.get("/billing_profiles")
        def find_profiles(user_id: int | None = None) -> list[dict[str, Any]]:
            if user_id is None:
                rows = self.store.rows("SELECT * FROM billing_profiles ORDER BY id")
            else:
                rows = self.store.rows(
                    "SELECT * FROM billing_profiles WHERE user_id = ? ORDER BY id", (user_id,)
                )
            return [_profile(r) for r in rows]

    def present(self, table: str, row: dict[str, Any]) -> dict[str, Any]:
        return _profile(row)


def _profile(row: dict[str, Any]) -> dict[str, Any]:
    address = row.pop("billing_address_json", None)
    if "billing_address" not in row:
        row["billing_address"] = json.loads(address) if isinstance(address, str) else address
    return row
