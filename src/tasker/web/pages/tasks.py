"""The tasks list: filters in the URL, keyset pages (`engine.listing.page` cursors), bulk actions.

One page of tasks is one indexed read, whatever the table's size: no OFFSET, no COUNT, no read per
row. Needs `tasker.task:index`; bulk actions need the permission of the API route each one mirrors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from tasker.api.auth import Permission
from tasker.domain.errors import TaskerInputError
from tasker.domain.listing import TaskQuery
from tasker.domain.states import TaskState
from tasker.engine.tasker import Tasker
from tasker.web.access import Pages, actor, field_of, page, read_form, redirect, viewer
from tasker.web.pages.login import safe_next
from tasker.web.rendering import query

pages = Pages()
PAGE_SIZE = 50
#: The most tasks one bulk action may touch (a page is 50; a crafted form cannot ask for millions).
MAX_BULK = 500
BULK = {"retry": Permission.TASK_RETRY, "cancel": Permission.TASK_CANCEL}
FILTERS = ("namespace", "template", "version", "created_from", "created_to", "key")


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
        )

    def url(self, **cursor: str | None) -> str:
        return query("/tasks", **self.values, status=self.statuses, **cursor)


def _date(text: str) -> datetime | None:
    if not text:
        return None
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_filters(request: Request) -> Filters:
    params = request.query_params
    values = {name: params.get(name, "").strip()[:200] for name in FILTERS}
    statuses = [s for s in params.getlist("status") if s]
    errors: dict[str, str] = {}
    for name in ("created_from", "created_to"):
        try:
            _date(values[name])
        except ValueError:
            errors[name] = f"'{values[name][:40]}' is not a date and time like 2025-01-31T14:00"
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
    engine: Tasker = request.app.state.tasker
    found = None
    if not filters.errors:
        try:
            found = await run_in_threadpool(
                engine.listing.page,
                filters.task_query(),
                limit=PAGE_SIZE,
                after=after,
                before=before,
            )
        except TaskerInputError as exc:
            filters.errors["_"] = str(exc)
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
        next_url=filters.url(after=found.next_cursor) if found and found.next_cursor else None,
        prev_url=filters.url(before=found.prev_cursor) if found and found.prev_cursor else None,
        can_retry=v.can(Permission.TASK_RETRY),
        can_cancel=v.can(Permission.TASK_CANCEL),
    )


def _ids(values: list[str]) -> list[int]:
    out: list[int] = []
    for raw in values:
        if not raw.isdigit() or len(raw) > 19:
            raise TaskerInputError(f"'{raw[:20]}' is not a task id")
        if int(raw) not in out:
            out.append(int(raw))
    return out


def _apply(engine: Tasker, action: str, ids: list[int]) -> tuple[list[int], list[str]]:
    """Run `action` on each task; a task that cannot take it is reported, the others still run."""
    done: list[int] = []
    refused: list[str] = []
    for task_id in ids:
        try:
            if action == "retry":
                engine.retry_task(task_id)
            else:
                engine.cancel_task(task_id, reason="cancelled from the dashboard")
            done.append(task_id)
        except TaskerInputError as exc:
            refused.append(f"#{task_id}: {exc}")
    return done, refused


@pages.post("/tasks/bulk")
async def bulk(request: Request) -> Response:
    form = await read_form(request)
    action = field_of(form, "action")
    await actor(request, form, BULK.get(action, Permission.TASK_UPDATE))
    back = safe_next(field_of(form, "next", "/tasks"))
    if action not in BULK:
        return redirect(request, back, "error", "choose retry or cancel")
    ids = _ids(form.get("ids", []))
    if not ids:
        return redirect(request, back, "error", f"select the tasks to {action} first")
    if len(ids) > MAX_BULK:
        return redirect(request, back, "error", f"at most {MAX_BULK} tasks at once")
    done, refused = await run_in_threadpool(_apply, request.app.state.tasker, action, ids)
    verb = "retried" if action == "retry" else "cancelled"
    message = f"{len(done)} task(s) {verb}"
    if refused:
        message += f"; {len(refused)} refused: " + "; ".join(refused[:5])
    return redirect(request, back, "error" if refused and not done else "ok", message)
