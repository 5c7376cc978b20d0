"""API keys: what a key looks like, what it may be granted, and the queries on `tasker_api_keys`.

A key is `tk_<8 hex>_<43 url-safe characters>` (256 random bits). Only its SHA-256 digest is stored,
so a copy of the database cannot be used to call the API; the `tk_<8 hex>` prefix is stored in the
clear so an operator can tell keys apart in listings and logs. Lookup is by digest (an indexed,
unique column): a digest leaks nothing an attacker could use to guess a key byte by byte, unlike
comparing the keys.

The permission vocabulary lives here rather than in the API package because the engine validates
grants when it creates a key, and the engine may not depend on the delivery layer.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.engine import Connection

from tasker.domain.errors import TaskerInputError
from tasker.store.schema import api_keys

KEY_PREFIX = "tk_"
_KEY_RE = re.compile(r"^tk_[0-9a-f]{8}_[A-Za-z0-9_-]{43}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")

#: Every action of every resource a credential can be granted (named like the Ruby engine's).
RESOURCES: dict[str, tuple[str, ...]] = {
    "tasker.task": ("index", "show", "create", "update", "cancel", "retry", "signal", "bulk"),
    "tasker.workflow_step": ("index", "show", "update", "retry"),
    "tasker.handler": ("index", "show"),
    "tasker.health_status": ("index",),
    "tasker.metrics": ("index",),
    "tasker.analytics": ("index",),
    "tasker.events": ("index",),
    "tasker.schedule": ("index", "create", "update", "trigger", "delete"),
}
PERMISSIONS: tuple[str, ...] = tuple(
    f"{r}:{a}" for r, actions in RESOURCES.items() for a in actions
)
#: `*` grants everything, `<resource>:*` every action of one resource.
WILDCARDS: tuple[str, ...] = ("*", *(f"{r}:*" for r in RESOURCES))
GRANTABLE = frozenset(PERMISSIONS) | frozenset(WILDCARDS)
#: A key's `last_used_at` is written at most this often, so authenticating is a read, not a write,
#: per request.
TOUCH_EVERY = timedelta(minutes=1)


def grants(granted: Iterable[str], needed: str) -> bool:
    """Whether a set of granted permissions (wildcards included) covers the permission `needed`."""
    held = set(granted)
    resource = needed.split(":", 1)[0]
    return needed in held or "*" in held or f"{resource}:*" in held


def check_permissions(names: Iterable[str]) -> tuple[str, ...]:
    """The grants, deduplicated in the order given; an unknown name is refused with the valid ones
    listed."""
    out: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name not in GRANTABLE:
            raise TaskerInputError(
                f"unknown permission '{name}'; valid permissions: {', '.join(PERMISSIONS)};"
                f" wildcards: {', '.join(WILDCARDS)}"
            )
        if name not in out:
            out.append(name)
    if not out:
        raise TaskerInputError(
            f"an API key needs at least one permission; valid permissions: {', '.join(PERMISSIONS)}"
        )
    return tuple(out)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise TaskerInputError(
            f"invalid API key name {name!r}; fix: use 1 to 128 letters, digits or '_.@-', starting"
            " with a letter or digit"
        )
    return name


def generate_key() -> tuple[str, str]:
    """A new secret key and its public prefix."""
    prefix = KEY_PREFIX + secrets.token_hex(4)
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


def looks_like_key(value: str) -> bool:
    """Whether a credential has the shape of one of our keys (so a bearer token can be one, not a
    JWT)."""
    return bool(_KEY_RE.match(value))


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """A stored key as users see it: never the secret, never its digest."""

    id: int
    name: str
    prefix: str
    permissions: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def can(self, permission: str) -> bool:
        return not self.revoked and grants(self.permissions, permission)


_COLUMNS = (
    api_keys.c.id,
    api_keys.c.name,
    api_keys.c.prefix,
    api_keys.c.permissions,
    api_keys.c.created_at,
    api_keys.c.last_used_at,
    api_keys.c.revoked_at,
)


def _record(row: Any) -> ApiKey:
    return ApiKey(
        row.id,
        row.name,
        row.prefix,
        tuple(row.permissions or ()),
        row.created_at,
        row.last_used_at,
        row.revoked_at,
    )


def name_taken(conn: Connection, name: str) -> bool:
    return conn.execute(select(api_keys.c.id).where(api_keys.c.name == name)).first() is not None


def insert_key(
    conn: Connection,
    *,
    name: str,
    prefix: str,
    key_hash: str,
    permissions: tuple[str, ...],
    now: datetime,
) -> ApiKey:
    row = conn.execute(
        insert(api_keys)
        .values(
            name=name,
            prefix=prefix,
            key_hash=key_hash,
            permissions=list(permissions),
            created_at=now,
        )
        .returning(*_COLUMNS)
    ).one()
    return _record(row)


def list_keys(conn: Connection) -> list[ApiKey]:
    return [_record(r) for r in conn.execute(select(*_COLUMNS).order_by(api_keys.c.name))]


def get_key(conn: Connection, name: str) -> ApiKey | None:
    row = conn.execute(select(*_COLUMNS).where(api_keys.c.name == name)).first()
    return _record(row) if row is not None else None


def revoke_key(conn: Connection, name: str, now: datetime) -> ApiKey | None:
    """Mark a key revoked (a second revoke keeps the first date); None when no key has that name."""
    conn.execute(
        update(api_keys)
        .where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return get_key(conn, name)


def find_by_key(conn: Connection, key: str) -> ApiKey | None:
    """The stored key whose digest matches `key`, revoked or not; None for an unknown key."""
    wanted = digest(key)
    row = conn.execute(
        select(*_COLUMNS, api_keys.c.key_hash).where(api_keys.c.key_hash == wanted)
    ).first()
    if row is None or not hmac.compare_digest(row.key_hash, wanted):
        return None
    return _record(row)


def touch(conn: Connection, key_id: int, now: datetime, every: timedelta = TOUCH_EVERY) -> None:
    """Record a use, unless one was recorded less than `every` ago (the condition settles racing
    writers)."""
    conn.execute(
        update(api_keys)
        .where(
            api_keys.c.id == key_id,
            or_(api_keys.c.last_used_at.is_(None), api_keys.c.last_used_at <= now - every),
        )
        .values(last_used_at=now)
    )
