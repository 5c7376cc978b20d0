"""Limit rows are set in place, never deleted and inserted again: a claim locking them while
another process loads its templates (which sets the same limits again) must still find them. With
a delete in between, PostgreSQL's `FOR UPDATE` skipped the deleted row and the claim ran without
the limit (a fair-share key overran by a whole claim in a four-worker test)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from tasker import Tasker
from tasker.store import systems
from tasker.store.schema import key_limits, namespace_limits


@pytest.mark.parametrize("table", ["key", "namespace"])
def test_a_claim_waiting_on_a_limit_row_still_finds_it_after_a_reload(
    tasker: Tasker, table: str
) -> None:
    if not tasker.db.is_postgres:
        pytest.skip("row locks of concurrent transactions: PostgreSQL's")
    now = datetime.now(UTC)
    rows, column, name = (
        (key_limits, "scope", "ns/t@1.0.0")
        if table == "key"
        else (namespace_limits, "namespace", "ns")
    )

    def set_limit(conn: sa.Connection) -> None:
        if table == "key":
            systems.set_key_limit(conn, name, 3, now)
        else:
            systems.set_namespace_limit(conn, name, 3, now)

    with tasker.db.write() as conn:
        set_limit(conn)
    lock = sa.select(rows).with_for_update()
    found: list[int] = []
    holder = tasker.db.writer.connect()
    holder.begin()
    holder.execute(lock)  # a claim holding the limit rows

    def reload() -> None:  # another process loading its templates
        with tasker.db.write() as conn:
            set_limit(conn)

    def claim() -> None:  # a second claim, waiting for the rows
        with tasker.db.writer.connect() as conn, conn.begin():
            found.append(len(conn.execute(lock).all()))

    loader = threading.Thread(target=reload)
    loader.start()
    time.sleep(0.3)
    claimer = threading.Thread(target=claim)
    claimer.start()
    time.sleep(0.3)
    holder.commit()
    holder.close()
    loader.join(10)
    claimer.join(10)
    assert found == [1]
    with tasker.db.read() as conn:
        assert conn.execute(sa.select(rows.c[column], rows.c.max_in_flight)).all() == [(name, 3)]
