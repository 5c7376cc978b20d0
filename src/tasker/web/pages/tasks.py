"""The tasks list: filters in the URL, keyset pages (`engine.listing.page` cursors), bulk actions.

One page of tasks is one indexed read, whatever the table's size: no OFFSET, no COUNT, no read per
row. Needs `tasker.task:index`.

Bulk actions (retry, cancel, purge) apply to the rows selected, or to every task matching the
list's filter ("all N matching"), through `engine.bulk` with a `TaskFilter` of the selected ids or
of the list's filter. Before a form is sent, dashboard.js asks `/tasks/bulk/preview` for the dry
run's count and shows it in the confirmation. Retrying or cancelling selected rows needs the
permission of the per-task API route (`tasker.task:retry`, `tasker.task:cancel`); purging rows, or
acting on every matching task, needs `tasker.task:bulk`, as the bulk API routes do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tasker.api.auth import Permission
from tasker.domain.bulk import BulkAction, BulkReport, FilterError, TaskFilter
from tasker.domain.errors import TaskerInputError
from tasker.domain.listing import TaskQuery
from tasker.domain.priorities import MAX_PRIORITY
from tasker.domain.retention import ArchiveError
from tasker.domain.states import TaskState
from tasker.engine.tasker import Tasker
from tasker.web.access import (
    Pages,
    actor,
    field_of,
    finish,
    forbidden,
    page,
    read_form,
    redirect,
    settings_of,
    viewer,
)
from tasker.web.pages.login import safe_next
from tasker.web.rendering import query

pages = Pages()
PAGE_SIZE = 50
#: The most selected rows one bulk action may name (a page is 50; a crafted form cannot ask for
#: millions: "all matching" is the way to act on more, with its own permission).
MAX_BULK = 500
#: The permission of each action on selected rows: the per-task API route's (purge has none).
BULK = {
    "retry": Permission.TASK_RETRY,
    "cancel": Permission.TASK_CANCEL,
    "purge": Permission.TASK_BULK,
}
FILTERS = (
    "namespace",
    "template",
    "version",
    "created_from",
    "created_to",
    "key",
    "min_priority",
    "sort",
)
#: How many refusals a result message quotes.
QUOTED_REFUSALS = 3


@dataclass
class Filters:
    """The filter form as typed, with the errors of its fields by name."""

    values: dict[str, str]
    statuses: list[str]
    errors: dict[str, str] = field(default_factory=dict)

    def task_query(self) -> TaskQuery:
        return TaskQuery(
            namespace=self.values["namespace"] or None,
            name=self.values["template"] or None,
            version=self.values["version"] or None,
            statuses=tuple(self.statuses),
            created_from=_date(self.values["created_from"]),
            created_to=_date(self.values["created_to"]),
            key=self.values["key"] or None,
            min_priority=int(self.values["min_priority"]) if self.values["min_priority"] else None,
            by_priority=self.by_priority,
        )

    @property
    def by_priority(self) -> bool:
        return self.values["sort"] == "priority"

    def url(self, **cursor: str | None) -> str:
        return query("/tasks", **self.values, status=self.statuses, **cursor)

    def task_filter(self) -> TaskFilter:
        """The bulk operations' filter of exactly the tasks this listing shows."""
        q = self.task_query()
        if q.min_priority is not None:
            raise FilterError(
                "min_priority",
                "the bulk operations do not filter by priority; select the rows instead",
            )
        return TaskFilter(
            namespace=q.namespace,
            name=q.name,
            version=q.version,
            statuses=tuple(TaskState(s) for s in q.statuses),
            created_since=q.created_from,
            created_until=q.created_to,
            key=q.key,
        )


def _date(text: str) -> datetime | None:
    if not text:
        return None
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_filters(request: Request) -> Filters:
    params = request.query_params
    return filters_of(lambda name: params.get(name, ""), params.getlist)


def filters_of(get: Callable[[str], str], getlist: Callable[[str], list[str]]) -> Filters:
    """The filter form's fields as typed, from a query string or a POSTed form."""
    values = {name: get(name).strip()[:200] for name in FILTERS}
    statuses = [s for s in getlist("status") if s]
    errors: dict[str, str] = {}
    for name in ("created_from", "created_to"):
        try:
            _date(values[name])
        except ValueError:
            errors[name] = f"'{values[name][:40]}' is not a date and time like 2025-01-31T14:00"
    level = values["min_priority"]
    if level and not (level.isdigit() and int(level) <= MAX_PRIORITY):
        errors["min_priority"] = f"'{level[:20]}' is not a priority; use a whole number 0 to 1000"
    if values["sort"] not in ("", "created", "priority"):
        errors["sort"] = "sort by created or priority"
    known = {s.value for s in TaskState}
    unknown = [s for s in statuses if s not in known]
    if unknown:
        errors["status"] = (
            f"unknown status {', '.join(unknown)[:80]}; use one of {', '.join(sorted(known))}"
        )
    return Filters(values, statuses, errors)


@pages.get("/tasks")
async def tasks(request: Request) -> Response:
    v = await viewer(request, Permission.TASK_INDEX)
    filters = parse_filters(request)
    after = request.query_params.get("after") or None
    before = request.query_params.get("before") or None
    raw_offset = request.query_params.get("offset", "")
    offset = int(raw_offset) if raw_offset.isdigit() and len(raw_offset) < 10 else 0
    engine: Tasker = request.app.state.tasker
    found = None
    if not filters.errors:
        try:
            found = await run_in_threadpool(
                engine.listing.page,
                filters.task_query(),
                limit=PAGE_SIZE,
                after=None if filters.by_priority else after,
                before=None if filters.by_priority else before,
                offset=offset if filters.by_priority else 0,
            )
        except TaskerInputError as exc:
            filters.errors["_"] = str(exc)
    next_url = prev_url = None
    if found and filters.by_priority:  # by priority: pages by offset
        if len(found.tasks) == PAGE_SIZE:
            next_url = filters.url(offset=str(offset + PAGE_SIZE))
        if offset:
            prev_url = filters.url(offset=str(max(0, offset - PAGE_SIZE)))
    elif found:
        next_url = filters.url(after=found.next_cursor) if found.next_cursor else None
        prev_url = filters.url(before=found.prev_cursor) if found.prev_cursor else None
    status = 422 if filters.errors else 200
    return page(
        request,
        v,
        "tasks.html",
        "Tasks",
        "tasks",
        status=status,
        filters=filters,
        found=found,
        states=[s.value for s in TaskState],
        next_url=next_url,
        prev_url=prev_url,
        can_retry=v.can(Permission.TASK_RETRY),
        can_cancel=v.can(Permission.TASK_CANCEL),
        can_bulk=v.can(Permission.TASK_BULK),
    )


def _ids(values: list[str]) -> list[int]:
    out: list[int] = []
    for raw in values:
        if not raw.isdigit() or len(raw) > 19:
            raise TaskerInputError(f"'{raw[:20]}' is not a task id")
        if int(raw) not in out:
            out.append(int(raw))
    return out


@dataclass(frozen=True)
class Selection:
    """What a bulk form or preview names: the selected rows (`ids`), or every task matching the
    list's filter (`everything`), as the filter the engine runs."""

    task_filter: TaskFilter
    ids: list[int]
    everything: bool

    @property
    def what(self) -> str:
        if self.everything:
            return f"every task matching this filter ({self.task_filter.describe()})"
        return f"{len(self.ids)} selected task(s)"


def selection(get: Callable[[str], str], getlist: Callable[[str], list[str]]) -> Selection | str:
    """The tasks a bulk form or preview names, or why it cannot be used (a message)."""
    if get("scope") == "filter":
        filters = filters_of(get, getlist)
        if filters.errors:
            return "; ".join(f"{k}: {v}" for k, v in filters.errors.items())
        try:
            picked = filters.task_filter()
        except FilterError as exc:
            return str(exc)
        return Selection(picked, [], True)
    try:
        ids = _ids(getlist("ids"))
        if len(ids) > MAX_BULK:
            return f"at most {MAX_BULK} selected tasks at once; select every matching task instead"
        picked = TaskFilter(ids=tuple(ids))
    except TaskerInputError as exc:  # not a number, or not a task id (0)
        return str(exc)
    if not ids:
        return "select the tasks first, or every task matching the filter"
    return Selection(picked, ids, False)


def _run(
    engine: Tasker, action: BulkAction, chosen: Selection, compensate: bool, archive: str | None
) -> BulkReport:
    return engine.bulk.run(
        action,
        chosen.task_filter,
        reason="from the dashboard",
        compensate=compensate and action == BulkAction.CANCEL,
        archive=archive,
    )


def result_message(action: BulkAction, chosen: Selection, report: BulkReport) -> str:
    """What a bulk action did, for the flash message shown after it."""
    named = len(chosen.ids) if not chosen.everything else report.matched
    noun = "task" if named == 1 else "tasks"
    text = f"{report.changed:,} of {named:,} {'selected' if not chosen.everything else 'matching'}"
    text += f" {noun} {action.past}"
    left = named - report.changed
    if left:
        text += f"; {left:,} skipped (not in a state to {action.value}, or refused)"
    if report.refusals:
        text += ": " + "; ".join(report.refusals[:QUOTED_REFUSALS])
    if report.archived:
        text += f"; {report.archived:,} archived first"
    return text


@pages.get("/tasks/bulk/preview")
async def preview(request: Request) -> Response:
    """The dry run behind a bulk form's confirmation: how many tasks it would change, and, for the
    "all matching" choice, how many the list's filter matches (JSON for dashboard.js)."""
    v = await viewer(request, Permission.TASK_INDEX, page=False)
    params = request.query_params
    chosen = selection(lambda name: params.get(name, ""), params.getlist)
    if isinstance(chosen, str):
        return finish(request, v, JSONResponse({"error": chosen}))
    engine: Tasker = request.app.state.tasker
    body: dict[str, object] = {"what": chosen.what, "selected": len(chosen.ids)}
    raw = params.get("action", "")
    if raw and raw not in BULK:
        return finish(request, v, JSONResponse({"error": "choose retry, cancel or purge"}))
    try:
        if raw:
            action = BulkAction(raw)
            body["action"] = action.value
            body["would_change"] = await run_in_threadpool(
                engine.bulk.count, action, chosen.task_filter
            )
        elif chosen.everything:
            total = await run_in_threadpool(
                engine.listing.total,
                filters_of(lambda name: params.get(name, ""), params.getlist).task_query(),
            )
            body["matching"] = total.count
            body["capped"] = total.capped
    except TaskerInputError as exc:
        body = {"error": str(exc)}
    return finish(request, v, JSONResponse(body))


@pages.post("/tasks/bulk")
async def bulk(request: Request) -> Response:
    form = await read_form(request)
    raw = field_of(form, "action")
    everything = field_of(form, "scope") == "filter"
    v = await actor(request, form, None)
    # Selected rows: the per-task route's permission, or the bulk one (which covers any
    # selection); every matching task: the bulk one.
    needed = Permission.TASK_BULK if everything else BULK.get(raw, Permission.TASK_UPDATE)
    if not (v.can(needed) or v.can(Permission.TASK_BULK)):
        return forbidden(request, f"{v.principal.describe()} lacks the permission {needed}")
    back = safe_next(field_of(form, "next", "/tasks"))
    if raw not in BULK:
        return redirect(request, back, "error", "choose retry, cancel or purge")
    action = BulkAction(raw)
    chosen = selection(partial(field_of, form), lambda name: form.get(name, []))
    if isinstance(chosen, str):
        return redirect(request, back, "error", chosen.replace("the tasks", f"the tasks to {raw}"))
    compensate = field_of(form, "compensate") == "1"
    archive = settings_of(request).archive  # a purge archives as every purge does
    try:
        report = await run_in_threadpool(
            _run, request.app.state.tasker, action, chosen, compensate, archive
        )
    except TaskerInputError as exc:  # the filter names states the action never applies to
        return redirect(request, back, "error", str(exc))
    except ArchiveError as exc:  # the chunk that failed deleted nothing; earlier ones stand
        return redirect(request, back, "error", f"the purge stopped: {exc}")
    kind = "ok" if report.changed else "error"
    return redirect(request, back, kind, result_message(action, chosen, report))
