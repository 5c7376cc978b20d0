"""Pages of tasks for the dashboard and the API: the `engine.listing` part of `Tasker`.

The dashboard and the JSON API are delivery layers: they hold no SQL and call these use cases
through the `Tasker` facade. Each read is bounded by an index (migration 0004), so a page costs the
same with a thousand tasks or a million: listings walk an index from a cursor instead of skipping
rows with OFFSET, and never COUNT the matching rows, which on PostgreSQL visits every one of them.

Cursors are opaque to callers (base64 of a tagged task id) so that the ordering key can change later
without breaking bookmarked URLs silently: a cursor that does not decode is refused.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

from tasker.domain.errors import TaskerInputError
from tasker.domain.listing import TOTAL_CAP, TaskPage, TaskQuery, Total
from tasker.domain.states import TaskState
from tasker.store import listing
from tasker.store.database import Database

#: The most tasks one page may hold (the API's and the dashboard's limit).
MAX_PAGE = 500
_CURSOR_TAG = "t1:"
_INT64_MAX = 2**63 - 1


class TaskListing:
    """Keyset pages of the tasks of one store, newest first, and full counts for the API."""

    def __init__(self, db: Database):
        self.db = db

    def page(
        self,
        query: TaskQuery | None = None,
        *,
        limit: int = 50,
        after: str | None = None,
        before: str | None = None,
        offset: int = 0,
    ) -> TaskPage:
        """A keyset page of tasks, newest first, without steps: `after`/`before` are the cursors of
        a page.

        Fast at any depth and any table size (an index walk from the cursor, no OFFSET, no COUNT);
        `offset` is only for the API's older clients.
        """
        return page_tasks(
            self.db, query or TaskQuery(), limit=limit, after=after, before=before, offset=offset
        )

    def count(self, query: TaskQuery | None = None) -> int:
        """How many tasks match `query`, exactly; reads every match, so listings do not call it."""
        return listing.count_matching(self.db, check_query(query or TaskQuery()))

    def total(self, query: TaskQuery | None = None, *, cap: int | None = None) -> Total:
        """How many tasks match `query`, counted up to `cap` (`TOTAL_CAP` by default; a read of at
        most `cap + 1` index entries): what a listing shows as "N tasks" or "10,000+ tasks"."""
        cap = TOTAL_CAP if cap is None else cap
        if cap < 0:
            raise TaskerInputError("cap: must be 0 or more")
        found = listing.count_matching(self.db, check_query(query or TaskQuery()), cap)
        return Total(count=min(found, cap), capped=found > cap)


# -- cursors ---------------------------------------------------------------------------------------
def encode_cursor(task_id: int) -> str:
    raw = f"{_CURSOR_TAG}{task_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, name: str = "cursor") -> int:
    """The task id a cursor stands for; anything this module did not write is refused."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    digits = text[len(_CURSOR_TAG) :] if text.startswith(_CURSOR_TAG) else ""
    if not digits.isascii() or not digits.isdigit() or len(digits) > 19 or int(digits) > _INT64_MAX:
        raise TaskerInputError(
            f"{name}: not a cursor of this listing; fix: use the cursor a page returned"
        )
    return int(digits)


# -- tasks --------------------------------------------------------------------------------------
def check_query(query: TaskQuery) -> TaskQuery:
    """Refuse statuses that are not task states; drop empty strings (a form's "any")."""
    known = {s.value for s in TaskState}
    unknown = [s for s in query.statuses if s not in known]
    if unknown:
        raise TaskerInputError(
            f"status: unknown task state(s) {', '.join(map(repr, unknown))}; "
            f"fix: use one of {', '.join(sorted(known))}"
        )
    return TaskQuery(
        namespace=query.namespace or None,
        name=query.name or None,
        version=query.version or None,
        statuses=tuple(sorted(set(query.statuses))),
        created_from=_utc(query.created_from),
        created_to=_utc(query.created_to),
        key=query.key or None,
        min_priority=query.min_priority,
        by_priority=query.by_priority,
    )


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def page_tasks(
    db: Database,
    query: TaskQuery,
    *,
    limit: int,
    after: str | None,
    before: str | None,
    offset: int = 0,
) -> TaskPage:
    """A page of tasks newest first: the first, the one older than `after` or newer than `before`.

    One extra row is read to learn whether a further page exists, which is all a pager needs. Going
    back (`before`) reads upwards from the cursor and reverses, so pages are the same ones met going
    forward as long as no task was created in between. `offset` serves the API's older clients (it
    cannot be combined with a cursor); the cursors it answers let them switch to keyset paging.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise TaskerInputError(f"limit: must be between 1 and {MAX_PAGE}")
    if after is not None and before is not None:
        raise TaskerInputError("after and before: give at most one cursor")
    if offset and (after is not None or before is not None):
        raise TaskerInputError(
            "offset: cannot be combined with a cursor; fix: use after/before alone"
        )
    if not 0 <= offset <= _INT64_MAX:
        raise TaskerInputError("offset: must be between 0 and 2**63-1")
    if query.by_priority:
        if after is not None or before is not None:
            raise TaskerInputError(
                "sort by priority pages by offset; fix: drop after/before, or sort by creation"
            )
        found = listing.read_page(db, check_query(query), limit=limit + 1, offset=offset)
        return TaskPage(found[:limit], None, None)
    after_id = decode_cursor(after, "after") if after is not None else None
    before_id = decode_cursor(before, "before") if before is not None else None
    found = listing.read_page(
        db, check_query(query), limit=limit + 1, after=after_id, before=before_id, offset=offset
    )
    more = len(found) > limit
    if before_id is not None:
        found = found[:limit][::-1]  # read upwards; the extra row is the newest one
        newer, older = more, True
    else:
        found = found[:limit]
        newer, older = after_id is not None or offset > 0, more
    if not found:  # an empty page still links back to where it came from
        return TaskPage(
            [],
            encode_cursor(min(before_id + 1, _INT64_MAX)) if before_id is not None else None,
            encode_cursor(after_id - 1) if after_id is not None and after_id > 0 else None,
        )
    return TaskPage(
        tasks=found,
        next_cursor=encode_cursor(found[-1].id) if older else None,
        prev_cursor=encode_cursor(found[0].id) if newer else None,
    )
