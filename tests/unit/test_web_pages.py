"""The dashboard over HTTP (TestClient), on SQLite and PostgreSQL: every page renders, actions
need the CSRF token and the API's permissions, forms answer 422 next to the field, and auth uses
the session cookie.
The same behaviour in a real browser is in tests/web/."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import insert, update

from tasker import Tasker, TaskerInputError
from tasker.api.app import create_app
from tasker.settings import Settings
from tasker.store.schema import dependent_systems
from tasker.web.session import SESSION_COOKIE
from tests.api.conftest import PING, order_template

PAGES = [
    "/",
    "/tasks",
    "/tasks/{id}",
    "/templates",
    "/templates/apitest/order",
    "/systems",
    "/systems/payments",
    "/analytics",
    "/events",
    "/events?task={id}",
]
READ_ONLY = [
    "tasker.task:index",
    "tasker.task:show",
    "tasker.handler:index",
    "tasker.handler:show",
    "tasker.health_status:index",
    "tasker.analytics:index",
    "tasker.events:index",
]
INLINE = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>|\sstyle=|\son[a-z]+=", re.IGNORECASE)


@pytest.fixture
def engine(make_tasker: Callable[..., Tasker], tmp_path: Path) -> Tasker:
    folder = tmp_path / "web-templates"
    folder.mkdir()
    (folder / "order.yaml").write_text(yaml.safe_dump(order_template("1.0.0")))
    (folder / "ping.yaml").write_text(yaml.safe_dump(PING))
    t = make_tasker()
    t.load_templates(folder)
    return t


@pytest.fixture
def client(engine: Tasker) -> Iterator[TestClient]:
    with TestClient(create_app(engine), follow_redirects=False) as c:
        yield c


def failed_task(engine: Tasker, step: str = "charge") -> int:
    task = engine.create_task("apitest/order", {"email": "ada@example.com", "fail": step})
    assert engine.run(task.id).status == "error"
    return task.id


def csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
    assert found, "no CSRF token on the page"
    return found.group(1)


def test_every_page_renders_without_inline_code(client: TestClient, engine: Tasker) -> None:
    task_id = failed_task(engine)
    for path in PAGES:
        response = client.get(path.format(id=task_id))
        assert response.status_code == 200, (path, response.text[:500])
        assert response.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in response.headers["content-security-policy"]
        body = response.text
        assert 'id="nav"' in body and 'id="main"' in body and 'id="auth-off-banner"' in body, path
        assert not INLINE.findall(body), (path, INLINE.findall(body))
        assert "Traceback" not in body


def test_task_page_shows_the_dag_error_and_actions(client: TestClient, engine: Tasker) -> None:
    task_id = failed_task(engine)
    body = client.get(f"/tasks/{task_id}").text
    assert '<span class="status" data-state="error" id="task-status">error</span>' in body
    for step, state in (("validate", "complete"), ("charge", "error"), ("ship", "pending")):
        assert f'<g class="node" data-step="{step}" data-state="{state}">' in body
    assert 'id="timeline"' in body and "charge was told to fail" in body
    # the failed attempt is drawn as the legend's "error", not the old orange "attempt"
    assert 'class="span run" data-outcome="error" data-look="error"' in body
    assert '<span class="key" data-look="error"></span> attempt: error' in body
    assert (
        'data-action="retry-task"' in body and 'data-action="retry-step" data-step="charge"' in body
    )


def test_unknown_task_and_bad_filters_are_pages_not_errors(client: TestClient) -> None:
    assert client.get("/tasks/999999").status_code == 404
    assert client.get("/tasks/abc").status_code == 422
    response = client.get("/tasks?created_from=yesterday&status=bogus")
    assert response.status_code == 422 and "is not a date and time" in response.text
    assert "unknown status bogus" in response.text
    assert client.get("/tasks?after=not-a-cursor").status_code == 422
    assert client.get("/analytics?hours=x").status_code == 422
    assert client.get("/events?task=x").status_code == 422
    assert client.get("/systems/nope").status_code == 404


def test_actions_need_the_csrf_token(client: TestClient, engine: Tasker) -> None:
    task_id = failed_task(engine)
    token = csrf(client.get(f"/tasks/{task_id}").text)
    for data in ({}, {"csrf_token": "0" * 64}):
        assert client.post(f"/tasks/{task_id}/retry", data=data).status_code == 403
    assert engine.get_task(task_id).status == "error"
    response = client.post(f"/tasks/{task_id}/retry", data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["location"] == f"/tasks/{task_id}"
    assert engine.get_task(task_id).status != "error"
    assert (
        "is being retried" in client.get(f"/tasks/{task_id}").text
    )  # the flash message, shown once
    assert "is being retried" not in client.get(f"/tasks/{task_id}").text


def test_resolve_refuses_bad_json_inline_then_completes(client: TestClient, engine: Tasker) -> None:
    task_id = failed_task(engine, "ship")
    token = csrf(client.get(f"/tasks/{task_id}").text)
    for text, message in (('{"tracking": ', "not valid JSON"), ("[1]", "must be a JSON object")):
        response = client.post(
            f"/tasks/{task_id}/steps/ship/resolve", data={"csrf_token": token, "results": text}
        )
        assert response.status_code == 422 and message in response.text
        assert 'class="field-error">' in response.text
    response = client.post(
        f"/tasks/{task_id}/steps/ship/resolve",
        data={"csrf_token": token, "results": '{"tracking": "XYZ"}'},
    )
    assert response.status_code == 303
    task = engine.get_task(task_id)
    assert task.status in ("complete", "resolved_manually")
    assert task.step("ship").results == {"tracking": "XYZ"}


def test_create_task_form_prefills_defaults_and_lists_violations(
    client: TestClient, engine: Tasker
) -> None:
    page = client.get("/templates/apitest/order").text
    assert "&#34;currency&#34;: &#34;EUR&#34;" in page
    token = csrf(page)
    response = client.post(
        "/templates/apitest/order/tasks",
        data={"csrf_token": token, "version": "1.0.0", "context": '{"amount": -1}'},
    )
    assert response.status_code == 422
    assert "<code>$.amount</code>" in response.text and "email" in response.text
    response = client.post(
        "/templates/apitest/order/tasks",
        data={"csrf_token": token, "version": "1.0.0", "context": '{"email": "a@b.co"}'},
    )
    assert response.status_code == 303
    task_id = int(response.headers["location"].rsplit("/", 1)[1])
    assert engine.get_task(task_id).context["currency"] == "EUR"


def test_tasks_pages_with_cursors_and_bulk_cancel(client: TestClient, engine: Tasker) -> None:
    ids = [engine.create_task("other/ping", {"n": i}).id for i in range(55)]
    first = client.get("/tasks?namespace=other").text
    assert 'id="prev-page"' not in first and 'id="next-page"' in first
    rows = re.findall(r'<tr data-task-id="(\d+)">', first)
    assert [int(r) for r in rows] == ids[::-1][:50]
    older = re.search(r'id="next-page" href="([^"]+)"', first)
    assert older
    second = client.get(older.group(1).replace("&amp;", "&")).text
    assert [int(r) for r in re.findall(r'<tr data-task-id="(\d+)">', second)] == ids[::-1][50:]
    assert 'id="prev-page"' in second and 'id="next-page"' not in second
    token = csrf(first)
    response = client.post(
        "/tasks/bulk",
        data={
            "csrf_token": token,
            "action": "cancel",
            "ids": [ids[0], ids[1]],
            "next": "/tasks?namespace=other",
        },
    )
    assert response.status_code == 303 and response.headers["location"] == "/tasks?namespace=other"
    assert [engine.get_task(i).status for i in ids[:3]] == ["cancelled", "cancelled", "pending"]


def test_static_assets_are_cached_and_small(client: TestClient) -> None:
    page = client.get("/").text
    total = len(page)
    for asset in re.findall(r'(?:href|src)="(/static/dashboard/[^"]+)"', page):
        response = client.get(asset.replace("&amp;", "&"))
        assert response.status_code == 200 and "immutable" in response.headers["cache-control"]
        total += len(response.content)
    assert total < 100_000


def test_the_analytics_page_reads_both_reports_at_once(engine: Tasker) -> None:
    """`insight.analytics` (one read, for the page) answers what the API's two reports answer."""
    failed_task(engine)
    engine.run(engine.create_task("apitest/order", {"email": "ada@example.com"}).id)
    perf_report, bottle_report = engine.insight.analytics(24, namespace="apitest")
    perf, bottle = perf_report.model_dump(), bottle_report.model_dump()

    def same(report: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in report.items() if k not in ("generated_at", "since")}

    assert same(perf) == same(engine.insight.performance(24, namespace="apitest").model_dump())
    assert same(bottle) == same(engine.insight.bottlenecks(24, namespace="apitest").model_dump())
    assert perf["totals"]["created"] == 2 and bottle["scope"]["tasks"] == 2
    with pytest.raises(TaskerInputError):
        engine.insight.analytics(24, limit=0)


def test_only_an_open_circuit_offers_a_reset(client: TestClient, engine: Tasker) -> None:
    failed_task(engine)
    page = client.get("/systems").text
    assert 'data-circuit="closed"' in page and 'data-action="reset-circuit"' not in page
    assert 'data-action="reset-circuit"' not in client.get("/systems/payments").text
    now = datetime.now(UTC)
    opened = {"circuit_state": "open", "open_until": now + timedelta(hours=1), "updated_at": now}
    with engine.db.write() as conn:  # no row until the circuit first changes: write one
        table = dependent_systems
        if not conn.execute(
            update(table).where(table.c.name == "payments").values(opened)
        ).rowcount:
            conn.execute(insert(table).values(name="payments", **opened))
    page = client.get("/systems").text
    assert page.count('data-action="reset-circuit"') == 1
    assert 'data-action="reset-circuit" data-system="payments"' in page
    assert 'data-action="reset-circuit"' in client.get("/systems/payments").text


# -- auth on ------------------------------------------------------------------------------------
@pytest.fixture
def secured(engine: Tasker) -> Iterator[tuple[TestClient, dict[str, str]]]:
    keys = {
        name: engine.keys.create(name, grants)[1]
        for name, grants in (("admin", ["*"]), ("viewer", READ_ONLY))
    }
    with TestClient(create_app(engine, Settings(auth_enabled=True)), follow_redirects=False) as c:
        yield c, keys


def sign_in(client: TestClient, key: str) -> Any:
    token = csrf(client.get("/login").text)
    return client.post("/login", data={"csrf_token": token, "credential": key, "next": "/tasks"})


def test_without_a_session_pages_go_to_sign_in(
    secured: tuple[TestClient, dict[str, str]], engine: Tasker
) -> None:
    client, _ = secured
    task_id = failed_task(engine)
    for path in PAGES:
        response = client.get(path.format(id=task_id))
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next=%2F"), path
    login = client.get("/login")
    assert 'id="login"' in login.text and "auth-off-banner" not in login.text
    # signed out, every nav link would lead back here: only the brand is shown
    assert 'class="brand"' in login.text and 'id="nav"' not in login.text
    response = client.post("/login", data={"csrf_token": csrf(login.text), "credential": "tk_bad"})
    assert response.status_code == 401 and 'id="login-error"' in response.text
    assert client.post("/login", data={"credential": "tk_bad"}).status_code == 403  # no CSRF token


def test_sign_in_sets_a_strict_httponly_cookie_without_the_key(
    secured: tuple[TestClient, dict[str, str]],
) -> None:
    client, keys = secured
    response = sign_in(client, keys["viewer"])
    assert response.status_code == 303 and response.headers["location"] == "/tasks"
    cookie = next(
        h for h in response.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE)
    )
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and keys["viewer"] not in cookie
    assert 'id="nav"' in client.get("/tasks").text  # signed in: the whole navigation


def test_read_only_sees_no_actions_and_forged_posts_are_403(
    secured: tuple[TestClient, dict[str, str]], engine: Tasker
) -> None:
    client, keys = secured
    task_id = failed_task(engine)
    sign_in(client, keys["viewer"])
    for path in PAGES:
        body = client.get(path.format(id=task_id)).text
        assert 'id="logout"' in body, path
        assert (
            "data-action=" not in body
            and "resolve-form" not in body
            and 'id="create-task"' not in body
        ), path
    token = csrf(client.get("/tasks").text)
    for path, data in (
        (f"/tasks/{task_id}/retry", {}),
        (f"/tasks/{task_id}/cancel", {}),
        (f"/tasks/{task_id}/steps/charge/retry", {}),
        (f"/tasks/{task_id}/steps/charge/resolve", {"results": "{}"}),
        ("/tasks/bulk", {"action": "retry", "ids": str(task_id)}),
        ("/templates/apitest/order/tasks", {"context": '{"email": "e@x.io"}'}),
        ("/systems/shop/reset", {}),
    ):
        assert client.post(path, data={"csrf_token": token, **data}).status_code == 403, path
    assert engine.get_task(task_id).status == "error"


def test_the_cookie_reads_the_api_but_never_writes(
    secured: tuple[TestClient, dict[str, str]], engine: Tasker
) -> None:
    client, keys = secured
    task_id = failed_task(engine)
    assert client.get(f"/api/v1/tasks/{task_id}").status_code == 401
    sign_in(client, keys["admin"])
    assert client.get(f"/api/v1/tasks/{task_id}").status_code == 200
    assert client.post(f"/api/v1/tasks/{task_id}/retry").status_code == 401
    token = csrf(client.get(f"/tasks/{task_id}").text)
    assert client.post(f"/tasks/{task_id}/retry", data={"csrf_token": token}).status_code == 303


def test_logout_and_revoked_keys_end_the_session(
    secured: tuple[TestClient, dict[str, str]], engine: Tasker
) -> None:
    client, keys = secured
    sign_in(client, keys["admin"])
    assert client.get("/tasks").status_code == 200
    engine.keys.revoke("admin")
    assert client.get("/tasks").headers["location"].startswith("/login")
    sign_in(client, keys["viewer"])
    token = csrf(client.get("/tasks").text)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 303
    client.cookies.clear()  # the answer deleted the cookie; TestClient keeps the jar per client
    assert client.get("/tasks").status_code == 303
