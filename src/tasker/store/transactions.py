"""Write transactions that record transitions, run again when PostgreSQL aborts them for contention.

The engine hands over what to write (`fn(conn, journal)`); this module owns the transaction, the
journal and the retries, so the engine never holds a connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection

from tasker.domain.errors import StoreContention
from tasker.store.database import Database
from tasker.store.journal import Journal

T = TypeVar("T")
#: Events a transaction recorded, to publish once it committed: (name, payload).
Events = list[tuple[str, dict[str, Any]]]

#: Runs of one transaction when PostgreSQL reports a deadlock or a serialization failure.
ATTEMPTS = 5


def journaled(
    db: Database,
    fn: Callable[[Connection, Journal], T],
    *,
    attempts: int = ATTEMPTS,
    clock: Callable[[], datetime] | None = None,
) -> tuple[T, Events]:
    """Run `fn` in a write transaction with a fresh journal, flushed before the commit; `clock`
    stamps it (the engine's clock, virtual in users' workflow tests; default: real time).

    Returns what `fn` returned and the events to publish. A transaction aborted for contention
    (`StoreContention`: it changed nothing) runs again, up to `attempts` times, after a short pause.
    """
    for attempt in range(1, attempts + 1):
        try:
            with db.write() as conn:
                # Stamped once the write lock is held, so transitions are in commit order.
                journal = Journal(clock() if clock is not None else datetime.now(UTC))
                out = fn(conn, journal)
                journal.flush(conn)
        except StoreContention:
            if attempt == attempts:
                raise
            time.sleep(0.02 * attempt)
            continue
        return out, journal.events
    raise AssertionError("unreachable")  # pragma: no cover
