"""A service's own persistent state: one SQLite file, one connection, one lock.

Each example service owns its data the way a real microservice owns its database: nobody else reads
the file, and the demo counts duplicates from what the service itself stored. Every stored row
carries the correlation id of the request that wrote it, so a registration can be traced through all
four services.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Tables every service has: stored idempotent responses and the request log.
COMMON_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    correlation_id TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL,
    correlation_id TEXT,
    idempotency_key TEXT,
    replayed INTEGER NOT NULL DEFAULT 0,
    fault TEXT,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL
);
"""


class Store:
    """SQLite with a lock: requests run on many threads, and a service's writes are short."""

    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(COMMON_SCHEMA + schema)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit of work; the lock makes check-then-insert (409 on a duplicate)
        race-free."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def rows(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [_decode(dict(r)) for r in self._conn.execute(sql, params)]

    def row(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> dict[str, Any] | None:
        found = self.rows(sql, params)
        return found[0] if found else None

    def count(self, table: str) -> int:
        with self._lock:
            return int(self._conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    """JSON columns (named *_json) come back as data, under their name without the suffix."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k.endswith("_json"):
            out[k[:-5]] = json.loads(v) if v is not None else None
        else:
            out[k] = v
    return out
