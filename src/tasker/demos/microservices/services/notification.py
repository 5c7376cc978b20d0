"""NotificationService: sends welcome sequences (a few emails each).

    POST /welcome_sequences         send every email of the sequence now (201)
    POST /reminders                 send one reminder e-mail now (201)
    GET  /welcome_sequences?user_id=..., GET /emails?recipient=...

Like a real email provider it does not refuse a second sequence to the same person: each request
sends mail. Only an `Idempotency-Key` makes a repeated request harmless, so the duplicate emails the
demo counts here measure whether the caller used its keys well.

Like a real provider it also has a sending quota: at most `EMAIL_QUOTA_PER_SECOND` sequences in any
second (`NOTIFICATION_EMAIL_QUOTA` in the environment overrides it); past it a request answers 429
with `Retry-After`. The second story's "NotificationService email limit: user fully registered, but
no welcome email" is that answer given up on. The registration template keeps under the quota with
a `rate_limit` on `notification_service`, so no request meets it; `GET /quota` says how many did.

    GET  /quota                     the quota, and the requests it refused
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Any, Literal

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from tasker.demos.microservices.services.base import (
    Email,
    Service,
    ServiceError,
    correlation_id,
    now,
)

#: Welcome sequences the provider sends per second, at most.
EMAIL_QUOTA_PER_SECOND = 10

SCHEMA = """
CREATE TABLE IF NOT EXISTS welcome_sequences (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    recipient TEXT NOT NULL,
    plan TEXT NOT NULL,
    correlation_id TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS emails (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sequence_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    recipient TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    correlation_id TEXT,
    sent_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS emails_recipient ON emails (recipient);
"""


class EmailSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1, max_length=64)
    subject: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=10_000)


class NewSequence(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(ge=1)
    recipient: Email
    name: str = Field(min_length=1, max_length=200)
    plan: Literal["free", "pro", "enterprise"]
    emails: list[EmailSpec] = Field(min_length=1, max_length=20)


class NewReminder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(ge=1)
    recipient: Email
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["confirm_email"]


class EmailQuota:
    """At most `limit` sends in any one second (a sliding window), as a provider counts them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.refused = 0
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()

    def take(self) -> float | None:
        """Count one send now; None when allowed, else the seconds until the window has room."""
        with self._lock:
            at = time.monotonic()
            while self._sent and self._sent[0] <= at - 1.0:
                self._sent.popleft()
            if len(self._sent) >= self.limit:
                self.refused += 1
                return max(0.0, self._sent[0] + 1.0 - at)
            self._sent.append(at)
            return None


class NotificationService(Service):
    name = "notification"
    display_name = "NotificationService"
    schema = SCHEMA
    tables = ("welcome_sequences", "emails")

    def add_routes(self, app: FastAPI) -> None:
        self.quota = EmailQuota(
            int(os.environ.get("NOTIFICATION_EMAIL_QUOTA") or EMAIL_QUOTA_PER_SECOND)
        )

        @app.get("/quota")
        def quota() -> dict[str, Any]:
            return {"limit": self.quota.limit, "per": "second", "refused": self.quota.refused}

        @app.post("/welcome_sequences", status_code=201)
        def send_sequence(body: NewSequence, request: Request) -> dict[str, Any]:
            wait = self.quota.take()
            if wait is not None:
                raise ServiceError(
                    429,
                    "rate_limited",
                    f"email quota of {self.quota.limit} sequences a second used up",
                    retry_after=round(wait, 3),
                )
            corr = correlation_id(request)
            at = now()
            with self.store.transaction() as conn:
                seq = conn.execute(
                    "INSERT INTO welcome_sequences (user_id, recipient, plan, correlation_id,"
                    " created_at) VALUES (?, ?, ?, ?, ?)",
                    (body.user_id, body.recipient, body.plan, corr, at),
                ).lastrowid
                emails = []
                for mail in body.emails:
                    email_id = conn.execute(
                        "INSERT INTO emails (sequence_id, user_id, recipient, kind, subject, body,"
                        " correlation_id, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            seq,
                            body.user_id,
                            body.recipient,
                            mail.kind,
                            mail.subject,
                            mail.body,
                            corr,
                            at,
                        ),
                    ).lastrowid
                    emails.append({"id": email_id, "kind": mail.kind, "subject": mail.subject})
            return {
                "id": seq,
                "user_id": body.user_id,
                "recipient": body.recipient,
                "plan": body.plan,
                "emails": emails,
                "emails_sent": len(emails),
                "correlation_id": corr,
                "created_at": at,
            }

        @app.post("/reminders", status_code=201)
        def send_reminder(body: NewReminder, request: Request) -> dict[str, Any]:
            corr = correlation_id(request)
            at = now()
            subject = "Please confirm your e-mail address"
            with self.store.transaction() as conn:
                email_id = conn.execute(
                    "INSERT INTO emails (sequence_id, user_id, recipient, kind, subject, body,"
                    " correlation_id, sent_at) VALUES (0, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        body.user_id,
                        body.recipient,
                        f"reminder_{body.kind}",
                        subject,
                        f"Hi {body.name}, one click and your account is ready.",
                        corr,
                        at,
                    ),
                ).lastrowid
            return {
                "id": email_id,
                "user_id": body.user_id,
                "recipient": body.recipient,
                "kind": f"reminder_{body.kind}",
                "correlation_id": corr,
                "created_at": at,
            }

        @app.get("/welcome_sequences")
        def find_sequences(user_id: int | None = None) -> list[dict[str, Any]]:
            if user_id is None:
                return self.store.rows("SELECT * FROM welcome_sequences ORDER BY id")
            return self.store.rows(
                "SELECT * FROM welcome_sequences WHERE user_id = ? ORDER BY id", (user_id,)
            )

        @app.get("/emails")
        def find_emails(recipient: str | None = None) -> list[dict[str, Any]]:
            if recipient is None:
                return self.store.rows("SELECT * FROM emails ORDER BY id")
            return self.store.rows(
                "SELECT * FROM emails WHERE recipient = ? ORDER BY id", (recipient,)
            )
