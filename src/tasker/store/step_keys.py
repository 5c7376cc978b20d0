"""Each step's idempotency key: derived from its task's key and its name, so a task re-created
with the same key gives its steps the same keys (and a fan-out's instances keys of their own)."""

from __future__ import annotations

import hashlib


def step_idempotency_key(namespace: str, name: str, task_key: str, step: str) -> str:
    return hashlib.sha256(f"{namespace}/{name}/{task_key}/{step}".encode()).hexdigest()[:32]
