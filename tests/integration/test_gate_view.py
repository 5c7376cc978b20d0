"""The workers' gate (`GATE_SQL`) and its view (`tasker_gate`, migration 0019) answer alike on
both stores, for each thing that shuts it; and the driver-level cycle's statements stay short
enough for psycopg to cache their converted text."""

from __future__ import annotations

from collections.abc import Callable

import psycopg._queries
import pytest
import sqlalchemy as sa

from tasker import Tasker
from tasker.store import pg_cycle
from tasker.store.cycle_rows import GATE_SQL
from tests.fixture_types import LoadTemplate
from tests.integration.support import step


def answers(tasker: Tasker) -> tuple[bool, bool]:
    with tasker.db.read() as conn:
        inline = bool(conn.execute(sa.text(f"SELECT {GATE_SQL}")).scalar())
        view = bool(conn.execute(sa.text("SELECT open FROM tasker_gate")).scalar())
    return inline, view


SHUTTERS: dict[str, Callable[[Tasker], None]] = {
    "an in-flight limit": lambda t: t.systems.configure("a", max_in_flight=3),
    "a rate limit": lambda t: t.systems.configure("b", rate_limit="5/second"),
    "a configured default breaker": lambda t: t.systems.configure("default", failure_threshold=2),
    "a namespace limit": lambda t: t.systems.set_namespace_limit("ns", 4),
}


@pytest.mark.parametrize("shutter", sorted(SHUTTERS))
def test_the_view_shuts_when_the_gate_does(tasker: Tasker, shutter: str) -> None:
    assert answers(tasker) == (True, True)
    SHUTTERS[shutter](tasker)
    assert answers(tasker) == (False, False)


def test_fair_share_and_priorities_shut_both(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load("plain", [step("a")])
    tasker.create_task(ref, {"key": key})
    assert answers(tasker) == (True, True)
    tasker.create_task(ref, {"key": key}, priority=2)
    assert answers(tasker) == (False, False)
    tasker.work()
    assert answers(tasker) == (True, True)  # a finished prioritized step restricts nothing
    load("keyed", [step("a")], concurrency_key="context.key", max_in_flight_per_key=1)
    assert answers(tasker) == (False, False)


def test_the_cycle_statements_fit_psycopgs_cache() -> None:
    limit = psycopg._queries.MAX_CACHED_STATEMENT_LENGTH
    texts = [*pg_cycle._FIRST.values(), *pg_cycle._CLAIM_ONLY.values(), pg_cycle._SETTLE]
    assert max(len(t) for t in texts) <= limit - 200  # room for the next change
