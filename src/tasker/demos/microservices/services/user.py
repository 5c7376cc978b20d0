"""UserService: accounts, one per email address.

POST /users                     create (201); 409 with the existing user if the email is taken
GET  /users/{id}, GET /users?email=...
PUT  /users/{id}/status         set the registration status (200); 404 for an unknown user
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from tasker.demos.microservices.services.base import (
    Email,
    Service,
    conflict,
    correlation_id,
    not_found,
    now,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    email TEXT NOT NULL,
    name TEXT NOT NULL,
    plan TEXT NOT NULL,
    source TEXT NOT NULL,
    phone TEXT,
    marketing_consent INTEGER NOT NULL DEFAULT 0,
    referral_code TEXT,
    status TEXT NOT NULL,
    completed_steps_json TEXT,
    correlation_id TEXT,
    status_correlation_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS users_email ON users (email);
"""


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Email
    name: str = Field(min_length=1, max_length=200)
    plan: Literal["free", "pro", "enterprise"] = "free"
    source: Literal["web", "mobile", "api"] = "web"
    phone: str | None = Field(None, max_length=40)
    marketing_consent: bool = False
    referral_code: str | None = Field(None, max_length=64)


class StatusUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["pending", "active", "registration_complete", "suspended"]
    completed_steps: list[str] = Field(default_factory=list)


class UserService(Service):
    name = "user"
    display_name = "UserService"
    schema = SCHEMA
    tables = ("users",)

    def add_routes(self, app: FastAPI) -> None:
        @app.post("/users", status_code=201)
        def create_user(body: NewUser, request: Request) -> dict[str, Any]:
            with self.store.transaction() as conn:
                existing = conn.execute(
                    "SELECT * FROM users WHERE email = ? ORDER BY id LIMIT 1", (body.email,)
                ).fetchone()
                if existing is not None:
                    raise conflict(
                        f"a user with email {body.email} already exists", _user(dict(existing))
                    )
                at = now()
                cur = conn.execute(
                    "INSERT INTO users (email, name, plan, source, phone, marketing_consent,"
                    " referral_code, status, correlation_id, created_at, updated_at) VALUES (?, ?,"
                    " ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                    (
                        body.email,
                        body.name,
                        body.plan,
                        body.source,
                        body.phone,
                        int(body.marketing_consent),
                        body.referral_code,
                        correlation_id(request),
                        at,
                        at,
                    ),
                )
                row = conn.execute("SELECT * FROM users WHERE id = ?", (cur.lastrowid,)).fetchone()
            return _user(dict(row))

        @app.get("/users/{user_id}")
        def get_user(user_id: int) -> dict[str, Any]:
            return self._get(user_id)

        @app.get("/users")
        def find_users(email: str | None = None) -> list[dict[str, Any]]:
            if email is None:
                return [_user(r) for r in self.store.rows("SELECT * FROM users ORDER BY id")]
            return [
                _user(r)
                for r in self.store.rows(
                    "SELECT * FROM users WHERE email = ? ORDER BY id", (email,)
                )
            ]

        @app.put("/users/{user_id}/status")
        def set_status(user_id: int, body: StatusUpdate, request: Request) -> dict[str, Any]:
            with self.store.transaction() as conn:
                found = conn.execute(
                    "UPDATE users SET status = ?, completed_steps_json = ?, status_correlation_id ="
                    " ?, updated_at = ? WHERE id = ?",
                    (
                        body.status,
                        json.dumps(body.completed_steps),
                        correlation_id(request),
                        now(),
                        user_id,
                    ),
                ).rowcount
            if not found:
                raise not_found(f"no user with id {user_id}")
            return self._get(user_id)

    def present(self, table: str, row: dict[str, Any]) -> dict[str, Any]:
        return _user(row)

    def _get(self, user_id: int) -> dict[str, Any]:
        row = self.store.row("SELECT * FROM users WHERE id = ?", (user_id,))
        if row is None:
            raise not_found(f"no user with id {user_id}")
        return _user(row)


def _user(row: dict[str, Any]) -> dict[str, Any]:
    steps = row.pop("completed_steps_json", None)
    if "completed_steps" not in row:
        row["completed_steps"] = json.loads(steps) if isinstance(steps, str) else steps
    row["marketing_consent"] = bool(row["marketing_consent"])
    return row
