"""API keys: the `engine.keys` part of `Tasker` (`tasker keys ...`, and the API's authentication).

Only a digest of each key is stored: the key itself is shown once, when it is created.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from tasker.domain.errors import NotFoundError, StoreConflict, StoreError, TaskerInputError
from tasker.engine import clock
from tasker.store import api_keys as key_store
from tasker.store.api_keys import ApiKey
from tasker.store.database import Database

log = logging.getLogger("tasker")


def utcnow() -> datetime:
    return clock.now()


class ApiKeys:
    """The API keys of one store."""

    def __init__(self, db: Database):
        self.db = db

    def create(self, name: str, permissions: Sequence[str] | str) -> tuple[ApiKey, str]:
        """Store a new API key; returns its record and the key itself, which exists nowhere else.

        Only a digest is stored, so a lost key cannot be shown again: revoke it and create another.
        """
        key_store.check_name(name)
        grants = key_store.check_permissions(
            permissions.split(",") if isinstance(permissions, str) else permissions
        )
        taken = TaskerInputError(
            f"an API key named '{name}' already exists (names of revoked keys stay taken); "
            "fix: choose another name"
        )
        secret, prefix = key_store.generate_key()
        try:
            with self.db.write() as conn:
                if key_store.name_taken(conn, name):
                    raise taken
                record = key_store.insert_key(
                    conn,
                    name=name,
                    prefix=prefix,
                    key_hash=key_store.digest(secret),
                    permissions=grants,
                    now=utcnow(),
                )
        except StoreConflict:  # a concurrent create took the name
            raise taken from None
        return record, secret

    def all(self) -> list[ApiKey]:
        """Every key, revoked ones included, by name (never the secrets)."""
        with self.db.read() as conn:
            return key_store.list_keys(conn)

    def revoke(self, name: str) -> ApiKey:
        """Refuse a key from now on; revoking twice keeps the first date."""
        with self.db.write() as conn:
            record = key_store.revoke_key(conn, name, utcnow())
        if record is None:
            raise NotFoundError(
                f"no API key named '{name}'; fix: list keys with 'tasker keys list'"
            )
        return record

    def authenticate(self, key: str) -> ApiKey | None:
        """The active key matching `key`, or None (unknown, malformed or revoked); records when it
        was used."""
        if not isinstance(key, str) or not key_store.looks_like_key(key):
            return None
        with self.db.read() as conn:
            record = key_store.find_by_key(conn, key)
        if record is None or record.revoked:
            return None
        now = utcnow()
        if record.last_used_at is None or now - record.last_used_at >= key_store.TOUCH_EVERY:
            try:
                with self.db.write() as conn:
                    key_store.touch(conn, record.id, now)
            except StoreError:  # bookkeeping only: a busy store must not refuse a valid key
                log.warning("could not record the use of API key %s", record.prefix, exc_info=True)
        return record
