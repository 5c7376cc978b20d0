"""The dashboard's bulk actions and re-run form over HTTP (TestClient), on SQLite and PostgreSQL:
the preview's dry-run counts, "all matching" needing `tasker.task:bulk` while selected rows need
only the per-task permission, the result and refusal messages, and the re-run form's refusals.
The same in a real browser is tests/web/test_bulk_actions.py."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tasker import Tasker
from tasker.api.app import create_app
from tasker.settings import Settings
from tests.unit.test_web_pages import csrf, engine, failed_task, sign_in  # noqa: F401


@pytest.fixture
def client(engine: Tasker) -> Iterator[TestClient]:  # noqa: F811
    with TestClient(create_app(engine), follow_redirects=False) as c:
        yield c


def _flash(client: TestClient, response: Any) -> str:
    assert response.status_code == 303, response.text
    page = client.get(response.headers["location"]).text
    found = re.search(r'<p class="flash flash-(\w+)"[^>]*>([^<]*)</p>', page)
    assert found, "no flash message"
    return f"{found.group(1)}: {html.unescape(found.group(2))}"


def test_the_preview_counts_what_each_action_would_change(
    client: TestClient,
    engine: Tasker,  # noqa: F811
) -> None:
    failed = [failed_task(engine) for _ in range(2)]
    pending = engine.create_task("other/ping", {}).id
    ids = {"ids": [*failed, pending]}
    preview = client.get("/tasks/bulk/preview", params={"action": "retry", **ids}).json()
    assert preview == {
        "what": "3 selected task(s)",
        "selected": 3,
        "action": "retry",
        "would_change": 2,
    }
    assert (
        client.get("/tasks/bulk/preview", params={"action": "cancel", **ids}).json()["would_change"]
        == 3
    )
    everything = {"scope": "filter", "namespace": "apitest"}
    assert client.get("/tasks/bulk/preview", params=everything).json() == {
        "what": "every task matching this filter (namespace apitest)",
        "selected": 0,
        "matching": 2,
        "capped": False,
    }
    finished = {**everything, "status": "complete", "action": "retry"}
    refused = client.get("/tasks/bulk/preview", params=finished).json()
    assert "never applies to tasks that are complete" in refused["error"]
    for params, message in (
        ({"action": "retry"}, "select the tasks first"),
        ({"action": "retry", "ids": "x"}, "is not a task id"),
        ({"action": "retry", "ids": "0"}, "is not a task id"),
        ({"action": "explode", "ids": "1"}, "choose retry, cancel or purge"),
        ({"scope": "filter", "created_from": "soon"}, "is not a date and time"),
    ):
        assert message in client.get("/tasks/bulk/preview", params=params).json()["error"]


def test_bulk_actions_report_what_they_did(
    client: TestClient,
    engine: Tasker,  # noqa: F811
) -> None:
    failed = [failed_task(engine) for _ in range(3)]
    pings = [engine.create_task("other/ping", {}).id for _ in range(2)]
    token = csrf(client.get("/tasks").text)
    form = {"csrf_token": token, "next": "/tasks"}
    done = client.post("/tasks/bulk", data={**form, "action": "retry", "ids": failed[:2]})
    assert _flash(client, done) == "ok: 2 of 2 selected tasks retried"
    none = client.post("/tasks/bulk", data={**form, "action": "retry", "ids": failed[:2]})
    assert _flash(client, none).startswith("error: 0 of 2 selected tasks retried; 2 skipped")
    everything = {**form, "scope": "filter", "namespace": "other", "status": "pending"}
    cancelled = client.post("/tasks/bulk", data={**everything, "action": "cancel"})
    assert _flash(client, cancelled) == "ok: 2 of 2 matching tasks cancelled"
    bad = client.post("/tasks/bulk", data={**everything, "action": "purge"})
    assert "never applies to tasks that are pending" in _flash(client, bad)
    purged = client.post(
        "/tasks/bulk", data={**form, "scope": "filter", "namespace": "other", "action": "purge"}
    )
    assert _flash(client, purged) == "ok: 2 of 2 matching tasks purged"
    assert engine.get_tasks(pings) == []
    assert engine.get_task(failed[2]).status == "error"
    unfiltered = client.post("/tasks/bulk", data={**form, "scope": "filter", "action": "retry"})
    assert "needs at least one of" in _flash(client, unfiltered)


def test_every_matching_task_needs_the_bulk_permission(engine: Tasker) -> None:  # noqa: F811
    failed = [failed_task(engine) for _ in range(2)]
    keys = {
        name: engine.keys.create(name, grants)[1]
        for name, grants in (
            ("operator", ["tasker.task:index", "tasker.task:retry", "tasker.task:cancel"]),
            ("bulk", ["tasker.task:index", "tasker.task:bulk"]),
        )
    }
    settings = Settings(auth_enabled=True)
    with TestClient(create_app(engine, settings), follow_redirects=False) as client:
        sign_in(client, keys["operator"])
        page = client.get("/tasks").text
        assert 'data-action="bulk-retry"' in page and 'id="select-matching"' not in page
        assert 'data-action="bulk-purge"' not in page
        form = {"csrf_token": csrf(page), "next": "/tasks"}
        everything = {**form, "scope": "filter", "namespace": "apitest", "action": "retry"}
        denied = client.post("/tasks/bulk", data=everything)
        assert denied.status_code == 403 and "lacks the permission tasker.task:bulk" in denied.text
        rows = client.post("/tasks/bulk", data={**form, "action": "purge", "ids": failed[0]})
        assert rows.status_code == 403
        assert {engine.get_task(i).status for i in failed} == {"error"}
        ok = client.post("/tasks/bulk", data={**form, "action": "retry", "ids": failed[0]})
        assert _flash(client, ok) == "ok: 1 of 1 selected task retried"

        client.cookies.clear()
        sign_in(client, keys["bulk"])
        page = client.get("/tasks").text
        assert 'id="select-matching"' in page and 'data-action="bulk-purge"' in page
        form = {**everything, "csrf_token": csrf(page)}
        assert _flash(client, client.post("/tasks/bulk", data=form)) == (
            "ok: 1 of 1 matching task retried"
        )


def test_the_rerun_form_offers_the_failed_step_and_reports_refusals(
    client: TestClient,
    engine: Tasker,  # noqa: F811
) -> None:
    task_id = failed_task(engine)
    page = client.get(f"/tasks/{task_id}").text
    assert 'id="rerun-form"' in page and '<option value="charge" selected>' in page
    token = csrf(page)
    refused = client.post(f"/tasks/{task_id}/rerun", data={"csrf_token": token, "step": "ship"})
    assert "waits for charge, which did not complete" in _flash(client, refused)
    unknown = client.post(f"/tasks/{task_id}/rerun", data={"csrf_token": token, "step": "nope"})
    assert "has no step 'nope'" in _flash(client, unknown)
    empty = client.post(f"/tasks/{task_id}/rerun", data={"csrf_token": token, "step": ""})
    assert _flash(client, empty) == "error: choose the step to re-run from"
    forged = client.post(f"/tasks/{task_id}/rerun", data={"step": "charge"})
    assert forged.status_code == 403
    rerun = client.post(
        f"/tasks/{task_id}/rerun",
        data={"csrf_token": token, "step": "charge", "reason": "fixed"},
    )
    assert _flash(client, rerun) == f"ok: task {task_id} is re-running from step 'charge'"
    assert engine.get_task(task_id).status == "pending"
    page = client.get(f"/tasks/{task_id}").text
    assert re.search(r'id="rerun-form"[^>]*\shidden>', page.replace("\n", " "))
