"""Keyset pages of tasks on both stores: every filter, forward and back, none skipped or repeated.

The store is filled with a few hundred tasks of three templates whose statuses and creation times
are then scattered by SQL (creation times deliberately out of id order), and every page walk is
compared with the same filter applied in Python to the whole table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import bindparam, select, update

from tasker import Tasker, TaskerInputError
from tasker.domain.listing import TaskPage, TaskQuery, Total
from tasker.engine.queries import decode_cursor, encode_cursor
from tasker.store import listing
from tasker.store.schema import tasks
from tests.integration.support import step

Load = Callable[..., str]
STATUSES = ("pending", "in_progress", "complete", "error", "cancelled")
BASE = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Row:
    id: int
    namespace: str
    name: str
    version: str
    status: str
    created_at: datetime
    idempotency_key: str
    correlation_id: str


def _fill(tasker: Tasker, load: Load, key: str, n: int = 240) -> list[Row]:
    """n tasks over three templates (two versions of one), statuses and creation times scattered."""
    load("alpha", [step("a")], version="1.0.0")
    load("alpha", [step("a")], version="2.0.0")
    load("beta", [step("a")], namespace="billing")
    refs = [("itest/alpha", "1.0.0"), ("itest/alpha", "2.0.0"), ("billing/beta", None)]
    for i in range(n):
        ref, version = refs[i % 3]
        tasker.create_tasks(ref, [{"key": key, "n": i}], version=version)
    with tasker.db.write() as conn:
        ids = sorted(r[0] for r in conn.execute(select(tasks.c.id)))
        conn.execute(
            update(tasks)
            .where(tasks.c.id == bindparam("tid"))
            .values(status=bindparam("st"), created_at=bindparam("ca")),
            [
                {
                    "tid": tid,
                    "st": STATUSES[(tid * 7) % 5],
                    "ca": BASE + timedelta(minutes=(tid * 37) % n),
                }
                for tid in ids
            ],
        )
        rows = conn.execute(select(tasks)).all()
    return [
        Row(
            r.id,
            r.namespace,
            r.name,
            r.version,
            r.status,
            r.created_at,
            r.idempotency_key,
            r.correlation_id,
        )
        for r in rows
    ]


def _expected(rows: list[Row], q: TaskQuery) -> list[int]:
    def keep(r: Row) -> bool:
        return (
            (not q.namespace or r.namespace == q.namespace)
            and (not q.name or r.name == q.name)
            and (not q.version or r.version == q.version)
            and (not q.statuses or r.status in q.statuses)
            and (q.created_from is None or r.created_at >= q.created_from)
            and (q.created_to is None or r.created_at < q.created_to)
            and (not q.key or q.key in (r.idempotency_key, r.correlation_id))
        )

    return sorted((r.id for r in rows if keep(r)), reverse=True)


def _walk(tasker: Tasker, q: TaskQuery, limit: int) -> list[TaskPage]:
    """Every page from the first, forward through `next_cursor`."""
    pages = [tasker.listing.page(q, limit=limit)]
    assert pages[0].prev_cursor is None
    while pages[-1].next_cursor is not None:
        pages.append(tasker.listing.page(q, limit=limit, after=pages[-1].next_cursor))
        assert len(pages) < 1000
    return pages


def _ids(page: TaskPage) -> list[int]:
    return [t.id for t in page.tasks]


def test_pages_forward_and_back_visit_every_task_once_for_every_filter(
    tasker: Tasker, load: Load, key: str
) -> None:
    rows = _fill(tasker, load, key)
    middle = BASE + timedelta(minutes=60)
    queries = [
        TaskQuery(),
        TaskQuery(namespace="itest"),
        TaskQuery(namespace="itest", name="alpha"),
        TaskQuery(namespace="itest", name="alpha", version="2.0.0"),
        TaskQuery(name="beta"),
        TaskQuery(statuses=("error",)),
        TaskQuery(statuses=("error", "pending", "cancelled")),
        TaskQuery(namespace="itest", name="alpha", statuses=("complete", "in_progress")),
        TaskQuery(created_from=middle),
        TaskQuery(created_from=middle, created_to=middle + timedelta(minutes=90)),
        TaskQuery(
            namespace="billing",
            statuses=("pending", "error"),
            created_to=middle + timedelta(hours=2),
        ),
        TaskQuery(namespace="nowhere"),
    ]
    for q in queries:
        expected = _expected(rows, q)
        for limit in (7, 50):
            pages = _walk(tasker, q, limit)
            forward = [i for p in pages for i in _ids(p)]
            assert forward == expected, (q, limit)
            assert all(len(p.tasks) == limit for p in pages[:-1]), (q, limit)
            assert all(t.steps == [] for p in pages for t in p.tasks)
            # Back from the last page through prev_cursor: the same pages in reverse order.
            back = [pages[-1]]
            while back[-1].prev_cursor is not None:
                back.append(tasker.listing.page(q, limit=limit, before=back[-1].prev_cursor))
                assert len(back) <= len(pages)
            assert [_ids(p) for p in reversed(back)] == [_ids(p) for p in pages], (q, limit)
            assert back[-1].prev_cursor is None


def test_a_walk_stays_consistent_while_tasks_are_created(
    tasker: Tasker, load: Load, key: str
) -> None:
    ref = load("gamma", [step("a")])
    tasker.create_tasks(ref, [{"key": key, "n": i} for i in range(30)])
    first = tasker.listing.page(limit=10)
    tasker.create_tasks(
        ref, [{"key": key, "n": 100 + i} for i in range(5)]
    )  # newer than the first page
    seen = _ids(first)
    page = first
    while page.next_cursor:
        page = tasker.listing.page(limit=10, after=page.next_cursor)
        seen += _ids(page)
    assert len(seen) == 30 and len(set(seen)) == 30
    newest = tasker.listing.page(
        limit=10, before=first.prev_cursor or encode_cursor(_ids(first)[0])
    )
    assert len(newest.tasks) == 5 and newest.prev_cursor is None and newest.next_cursor is not None
    assert min(_ids(newest)) > max(_ids(first))


def test_key_finds_a_task_by_idempotency_key_or_correlation_id(
    tasker: Tasker, load: Load, key: str
) -> None:
    ref = load("delta", [step("a")])
    by_key = tasker.create_task(ref, {"key": key, "n": 1}, idempotency_key=f"order-{key}")
    by_corr = tasker.create_task(ref, {"key": key, "n": 2}, correlation_id=f"corr-{key}")
    both = tasker.create_task(ref, {"key": key, "n": 3}, idempotency_key=f"shared-{key}")
    other = tasker.create_task(ref, {"key": key, "n": 4}, correlation_id=f"shared-{key}")
    assert _ids(tasker.listing.page(TaskQuery(key=f"order-{key}"))) == [by_key.id]
    assert _ids(tasker.listing.page(TaskQuery(key=f"corr-{key}"))) == [by_corr.id]
    assert _ids(tasker.listing.page(TaskQuery(key=f"shared-{key}"))) == [other.id, both.id]
    assert _ids(tasker.listing.page(TaskQuery(key=f"order-{key}", namespace="other"))) == []
    assert _ids(tasker.listing.page(TaskQuery(key="order"))) == []  # exact, not a prefix


def test_empty_strings_mean_any_and_bad_input_is_refused(
    tasker: Tasker, load: Load, key: str
) -> None:
    ref = load("epsilon", [step("a")])
    ids = tasker.create_tasks(ref, [{"key": key, "n": i} for i in range(3)])
    assert (
        _ids(tasker.listing.page(TaskQuery(namespace="", name="", version="", key=""))) == ids[::-1]
    )
    for bad in (
        {"after": "nope!"},
        {"after": encode_cursor(1)[:-1] + "@"},
        {"before": "dDE6LTE"},
        {"after": encode_cursor(1), "before": encode_cursor(2)},
        {"limit": 0},
        {"limit": 501},
        {"after": encode_cursor(1), "offset": 1},
    ):
        with pytest.raises(TaskerInputError):
            tasker.listing.page(**bad)
    with pytest.raises(TaskerInputError, match="unknown task state"):
        tasker.listing.page(TaskQuery(statuses=("done",)))
    assert decode_cursor(encode_cursor(2**63 - 1)) == 2**63 - 1
    with pytest.raises(TaskerInputError):
        decode_cursor(encode_cursor(2**63))


def test_an_empty_page_links_back_to_where_it_came_from(
    tasker: Tasker, load: Load, key: str
) -> None:
    ref = load("zeta", [step("a")])
    ids = tasker.create_tasks(ref, [{"key": key, "n": i} for i in range(4)])
    past_end = tasker.listing.page(limit=2, after=encode_cursor(min(ids)))
    assert past_end.tasks == [] and past_end.next_cursor is None
    assert past_end.prev_cursor is not None
    assert _ids(tasker.listing.page(limit=2, before=past_end.prev_cursor)) == [ids[1], ids[0]]
    above = tasker.listing.page(limit=2, before=encode_cursor(max(ids)))
    assert above.tasks == [] and above.prev_cursor is None and above.next_cursor is not None
    assert _ids(tasker.listing.page(limit=2, after=above.next_cursor)) == [ids[3], ids[2]]


def test_offset_pages_for_older_api_clients_and_the_count(
    tasker: Tasker, load: Load, key: str
) -> None:
    ref = load("eta", [step("a")])
    ids = tasker.create_tasks(ref, [{"key": key, "n": i} for i in range(9)])[::-1]
    page = tasker.listing.page(limit=4, offset=4)
    assert _ids(page) == ids[4:8] and page.prev_cursor is not None and page.next_cursor is not None
    assert _ids(tasker.listing.page(limit=4, after=page.next_cursor)) == ids[8:]
    assert tasker.listing.count() == 9
    assert tasker.listing.count(TaskQuery(namespace="itest", statuses=("pending", "error"))) == 9
    assert tasker.listing.count(TaskQuery(statuses=("complete",))) == 0


def test_the_total_is_counted_up_to_a_cap(tasker: Tasker, load: Load, key: str) -> None:
    ref = load("theta", [step("a")])
    tasker.create_tasks(ref, [{"key": key, "n": i} for i in range(7)])
    pending = TaskQuery(statuses=("pending",))

    assert tasker.listing.total(cap=3) == Total(count=3, capped=True)
    assert tasker.listing.total(pending, cap=7) == Total(count=7, capped=False)
    assert tasker.listing.total(pending, cap=6) == Total(count=6, capped=True)
    assert tasker.listing.total(TaskQuery(statuses=("complete",)), cap=0) == Total(0, False)
    assert tasker.listing.total() == Total(count=7, capped=False)  # TOTAL_CAP by default
    found, total = tasker.list_tasks(limit=2, count_cap=5)
    assert len(found) == 2 and total == 5
    assert tasker.list_tasks(status="pending", offset=6)[1] == 7
    with pytest.raises(TaskerInputError, match="cap"):
        tasker.listing.total(cap=-1)


def test_capped_counts_agree_whichever_index_they_walk(
    tasker: Tasker, load: Load, key: str
) -> None:
    """The capped count takes the newest matches (id order) where one index holds them in that
    order, and any matches elsewhere: the same numbers either way, on every filter shape."""
    ref = load("kappa", [step("a")])
    ids = tasker.create_tasks(ref, [{"key": key, "n": i} for i in range(6)])
    tasker.cancel_task(ids[0])
    ordered = [
        TaskQuery(),
        TaskQuery(statuses=("pending",)),
        TaskQuery(namespace="itest"),
        TaskQuery(namespace="itest", name="kappa", version="1.0.0"),
    ]
    unordered = [
        TaskQuery(statuses=("pending", "cancelled")),
        TaskQuery(namespace="itest", statuses=("pending",)),
        TaskQuery(name="kappa"),
        TaskQuery(min_priority=0),
        TaskQuery(created_from=datetime.now(UTC) - timedelta(hours=1)),
    ]
    assert [listing._one_index_in_id_order(q) for q in ordered] == [True] * 4
    assert [listing._one_index_in_id_order(q) for q in unordered] == [False] * 5
    with tasker.db.read() as conn:
        for q in ordered + unordered:
            exact = listing.count(conn, q)
            for cap in (0, 2, 5, 10):
                assert listing.count(conn, q, cap) == min(exact, cap + 1), (q, cap)
    assert listing.count_statement(TaskQuery(), 5).compile().string.count("ORDER BY") == 1
    assert "ORDER BY" not in listing.count_statement(TaskQuery(name="kappa"), 5).compile().string


def test_template_versions_lists_every_loaded_version_in_order(tasker: Tasker, load: Load) -> None:
    for version in ("1.10.0", "1.9.0", "2.0.0-rc.1", "2.0.0"):
        load("theta", [step("a")], version=version)
    load("iota", [step("a")], namespace="aaa")
    found = [(t.namespace_name, t.name, t.version) for t in tasker.templates.versions()]
    assert found == [
        ("aaa", "iota", "1.0.0"),
        ("itest", "theta", "1.9.0"),
        ("itest", "theta", "1.10.0"),
        ("itest", "theta", "2.0.0-rc.1"),
        ("itest", "theta", "2.0.0"),
    ]


@pytest.mark.parametrize("range_first", [True, False])
def test_both_ways_of_reading_a_creation_range_give_the_same_pages(
    tasker: Tasker, load: Load, key: str, range_first: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whichever plan `_range_first` picks (reading the range, or walking ids), the pages are
    exact."""
    rows = _fill(tasker, load, key, n=120)
    monkeypatch.setattr(listing, "_range_first", lambda *args: range_first)
    middle = BASE + timedelta(minutes=30)
    for q in (
        TaskQuery(created_from=middle, created_to=middle + timedelta(minutes=50)),
        TaskQuery(created_to=middle, statuses=("error", "complete")),
        TaskQuery(created_from=middle, namespace="itest", name="alpha"),
    ):
        pages = _walk(tasker, q, 6)
        assert [i for p in pages for i in _ids(p)] == _expected(rows, q), q
        back = [pages[-1]]
        while back[-1].prev_cursor is not None:
            back.append(tasker.listing.page(q, limit=6, before=back[-1].prev_cursor))
        assert [_ids(p) for p in reversed(back)] == [_ids(p) for p in pages], q
