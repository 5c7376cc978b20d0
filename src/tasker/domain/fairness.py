"""Fair share per key: at most N steps in flight per value of a template's `concurrency_key`.

A template declares `concurrency_key: <CEL over the context>` (say `context.tenant_id`) and
`max_in_flight_per_key: N`. Each task's key is evaluated once, at creation, and its steps carry it
scoped to the template (`<namespace>/<name>@<version>:<value>`), so tenants of different templates
never share a count. A claim takes a step only while fewer than N steps of its key run; steps of a
key that is full are passed over, so a tenant with a burst of ten thousand tasks holds N workers'
slots and the steps of a tenant with ten go by it.

Scopes contain no `:` (names and versions cannot), so the scope of a stored key is its text up to
the first `:`.
"""

from __future__ import annotations

from collections.abc import Mapping

MAX_KEY_LENGTH = 255


def key_scope(namespace: str, name: str, version: str) -> str:
    """The scope of a template's keys: its namespace, name and version."""
    return f"{namespace}/{name}@{version}"


def step_key(scope: str, value: object) -> str:
    """The key a task's steps carry: the scope and the key's value as text."""
    text = value if isinstance(value, str) else _text(value)
    key = f"{scope}:{text}"
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(
            f"the concurrency key is {len(key)} characters with its template's scope; it may be"
            f" at most {MAX_KEY_LENGTH}: key on a shorter value (an id rather than a name)"
        )
    return key


def scope_of(key: str) -> str:
    return key.partition(":")[0]


def key_room(limits: Mapping[str, int], busy: Mapping[str, int]) -> dict[str, int]:
    """Steps that may still start for each key now running steps (`busy`), under its scope's limit;
    a key with nothing running is not here: `ClaimPlan.admit` gives it its scope's whole limit."""
    return {k: max(0, limits[scope_of(k)] - n) for k, n in busy.items() if scope_of(k) in limits}


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
