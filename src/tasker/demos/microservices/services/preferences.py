"""PreferencesService: one set of notification and display preferences per user.

POST /preferences               create (201); 409 with the existing preferences if the user has them
GET  /preferences/{user_id}
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from tasker.demos.microservices.services.base import (
    Service,
    conflict,
    correlation_id,
    not_found,
    now,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS preferences (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    marketing_emails INTEGER NOT NULL,
    product_updates INTEGER NOT NULL,
    newsletter INTEGER NOT NULL,
    newsletter_frequency TEXT NOT NULL,
    theme TEXT NOT NULL,
    language TEXT NOT NULL,
    timezone TEXT NOT NULL,
    correlation_id TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS preferences_user ON preferences (user_id);
"""

BOOLEANS = ("marketing_emails", "product_updates", "newsletter")


class NewPreferences(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(ge=1)
    marketing_emails: bool = False
    product_updates: bool = False
    newsletter: bool = False
    newsletter_frequency: Literal["never", "weekly", "monthly"] = "never"
    theme: Literal["light", "dark", "system"] = "light"
    language: str = Field("en", min_length=2, max_length=10)
    timezone: str = Field("UTC", min_length=1, max_length=64)


class PreferencesService(Service):
    name = "preferences"
    display_name = "PreferencesService"
    schema = SCHEMA
    tables = ("preferences",)

    def add_routes(self, app: FastAPI) -> None:
        @app.post("/preferences", status_code=201)
        def create_preferences(body: NewPreferences, request: Request) -> dict[str, Any]:
            with self.store.transaction() as conn:
                existing = conn.execute(
                    "SELECT * FROM preferences WHERE user_id = ? ORDER BY id LIMIT 1",
                    (body.user_id,),
                ).fetchone()
                if existing is not None:
                    raise conflict(
                        f"user {body.user_id} already has preferences", _prefs(dict(existing))
                    )
                cur = conn.execute(
                    "INSERT INTO preferences (user_id, marketing_emails, product_updates,"
                    " newsletter, newsletter_frequency, theme, language, timezone, correlation_id,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        body.user_id,
                        int(body.marketing_emails),
                        int(body.product_updates),
                        int(body.newsletter),
                        body.newsletter_frequency,
                        body.theme,
                        body.language,
                        body.timezone,
                        correlation_id(request),
                        now(),
                    ),
                )
                row = conn.execute(
                    "SELECT * FROM preferences WHERE id = ?", (cur.lastrowid,)
                ).fetchone()
            return _prefs(dict(row))

        @app.get("/preferences/{user_id}")
        def get_preferences(user_id: int) -> dict[str, Any]:
            row = self.store.row(
                "SELECT * FROM preferences WHERE user_id = ? ORDER BY id LIMIT 1", (user_id,)
            )
            if row is None:
                raise not_found(f"user {user_id} has no preferences")
            return _prefs(row)

    def present(self, table: str, row: dict[str, Any]) -> dict[str, Any]:
        return _prefs(row)


def _prefs(row: dict[str, Any]) -> dict[str, Any]:
    for key in BOOLEANS:
        row[key] = bool(row[key])
    return row
