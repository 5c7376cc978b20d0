"""`POST /api/v1/tasks/bulk/retry|cancel|purge` on both stores: counts for a dry run and a real
run, idempotent when sent again, `after`/`limit` to go on where a run stopped, 422 with the field's
path for every body the engine cannot use, and the permission `tasker.task:bulk` (403 without,
even for a key that may retry one task)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tasker import Tasker
from tasker.settings import Settings

URL = "/api/v1/tasks/bulk"
AUTH = Settings(auth_enabled=True)


def _failed(engine: Tasker, n: int, step: str = "charge") -> list[int]:
    ids = engine.create_tasks(
        "apitest/order", [{"email": f"c{i}@example.com", "fail": step} for i in range(n)]
    )
    engine.work()
    assert {engine.get_task(i).status for i in ids} == {"error"}
    return ids


def test_bulk_retry_dry_run_then_for_real_then_again(client: TestClient, engine: Tasker) -> None:
    ids = _failed(engine, 4)
    complete = engine.run(engine.create_task("other/ping", {}).id).id
    body = {"template": "apitest/order", "error_class": "PermanentError", "step": "charge"}
    dry = client.post(f"{URL}/retry", json={**body, "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert dry.json() == {
        "action": "retry",
        "filter": "template apitest/order, step charge in error or waiting_retry with error"
        " class PermanentError",
        "matched": 4,
        "changed": 0,
        "skipped": 0,
        "dry_run": True,
        "refusals": [],
        "last_id": None,
        "more": False,
        "archived": 0,
    }
    assert {engine.get_task(i).status for i in ids} == {"error"}
    done = client.post(f"{URL}/retry", json={**body, "reason": "card processor back", "chunk": 3})
    assert done.status_code == 200, done.text
    assert (done.json()["matched"], done.json()["changed"]) == (4, 4)
    assert done.json()["last_id"] == max(ids)
    assert {engine.get_task(i).status for i in ids} == {"pending"}
    reasons = [t["reason"] for t in engine.history.task_transitions(ids[0])]
    assert reasons[-1] == "bulk retry: card processor back"
    again = client.post(f"{URL}/retry", json=body)
    assert (again.json()["matched"], again.json()["changed"]) == (0, 0)
    assert engine.get_task(complete).status == "complete"


def test_bulk_cancel_and_purge_with_limit_and_after(client: TestClient, engine: Tasker) -> None:
    ids = engine.create_tasks("other/ping", [{"n": i} for i in range(5)])
    first = client.post(
        f"{URL}/cancel", json={"template": "other/ping", "limit": 3, "reason": "not needed"}
    ).json()
    assert (first["matched"], first["changed"], first["more"]) == (3, 3, True)
    rest = client.post(
        f"{URL}/cancel", json={"template": "other/ping", "after": first["last_id"]}
    ).json()
    assert (rest["matched"], rest["changed"], rest["more"]) == (2, 2, False)
    assert {engine.get_task(i).status for i in ids} == {"cancelled"}
    assert engine.history.task_transitions(ids[0])[-1]["reason"] == "bulk cancel: not needed"
    purged = client.post(f"{URL}/purge", json={"ids": ids[:2], "status": ["cancelled"]})
    assert purged.json()["changed"] == 2
    assert [t.id for t in engine.get_tasks(ids)] == ids[2:]
    assert client.post(f"{URL}/purge", json={"ids": ids[:2]}).json()["matched"] == 0


@pytest.mark.parametrize(
    ("route", "body", "path", "message"),
    [
        ("retry", {}, "$", "needs at least one of"),
        ("retry", {"dry_run": True}, "$", "needs at least one of"),
        ("retry", {"status": ["complete"]}, "$.status", "never applies to tasks that are"),
        ("purge", {"status": ["pending"]}, "$.status", "never applies to tasks that are"),
        ("retry", {"status": ["finished"]}, "$.status[0]", "Input should be"),
        ("cancel", {"template": "a/b/c"}, "$.template", "String should match pattern"),
        ("retry", {"template": "a/x", "namespace": "y"}, "$.namespace", "contradicts"),
        ("retry", {"since": "lately"}, "$.since", "neither a duration nor a time"),
        ("retry", {"since": "1h", "until": "2h"}, "$.until", "is not after since"),
        ("retry", {"until": "9999-12-31T23:59:59-14:00"}, "$.until", "out of range"),
        ("retry", {"ids": [0]}, "$.ids[0]", "greater than or equal to 1"),
        ("retry", {"ids": "1,2"}, "$.ids", "valid list"),
        ("retry", {"status": ["error"], "chunk": 0}, "$.chunk", "greater than or equal to 1"),
        ("cancel", {"status": ["error"], "compensate": "maybe"}, "$.compensate", "boolean"),
        ("purge", {"status": ["error"], "reason": "x"}, "$.reason", "unknown field"),
        ("retry", {"status": ["error"], "nope": 1}, "$.nope", "unknown field"),
        ("retry", {"step_state": ["dead"]}, "$.step_state[0]", "Input should be"),
        ("retry", {"error_class": ""}, "$.error_class", "at least 1 character"),
    ],
)
def test_bad_bodies_answer_422_with_the_field(
    client: TestClient, engine: Tasker, route: str, body: Any, path: str, message: str
) -> None:
    ids = _failed(engine, 1)
    response = client.post(f"{URL}/{route}", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"][0]["path"] == path, error
    assert message in error["details"][0]["message"], error
    assert engine.get_task(ids[0]).status == "error"  # nothing changed


def test_a_body_that_is_not_json_answers_422(client: TestClient) -> None:
    response = client.post(
        f"{URL}/retry", content=b"status=error", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 422 and response.json()["error"]["details"][0]["path"] == "$"


def test_the_bulk_permission_is_needed(
    make_client: Callable[..., TestClient], engine: Tasker
) -> None:
    ids = _failed(engine, 2)
    client = make_client(AUTH)
    _, retrier = engine.keys.create("retrier", ["tasker.task:retry", "tasker.task:cancel"])
    _, bulk = engine.keys.create("bulk", ["tasker.task:bulk"])
    _, everything = engine.keys.create("tasks", ["tasker.task:*"])
    body = {"status": ["error"]}
    assert client.post(f"{URL}/retry", json=body).status_code == 401
    for route in ("retry", "cancel", "purge"):
        denied = client.post(f"{URL}/{route}", json=body, headers={"X-API-Key": retrier})
        assert denied.status_code == 403, route
        assert "lacks the permission tasker.task:bulk" in denied.json()["error"]["message"]
    assert {engine.get_task(i).status for i in ids} == {"error"}
    ok = client.post(f"{URL}/retry", json={**body, "dry_run": True}, headers={"X-API-Key": bulk})
    assert ok.status_code == 200 and ok.json()["matched"] == 2
    done = client.post(f"{URL}/cancel", json=body, headers={"X-API-Key": everything})
    assert done.status_code == 200 and done.json()["changed"] == 2


def test_the_routes_are_in_the_spec_with_their_permission(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for route in ("retry", "cancel", "purge"):
        operation = spec["paths"][f"{URL}/{route}"]["post"]
        assert {"200", "401", "403", "422"} <= set(operation["responses"]), route
    body = spec["components"]["schemas"]["BulkCancel"]["properties"]
    assert {"template", "status", "since", "error_class", "step", "dry_run", "compensate"} <= set(
        body
    )


def test_a_bulk_purge_archives_as_the_server_is_configured(
    make_client: Callable[..., TestClient], engine: Tasker
) -> None:
    ids = engine.create_tasks("other/ping", [{"n": i} for i in range(3)])
    engine.work()
    client = make_client(Settings(archive="table"))
    done = client.post(f"{URL}/purge", json={"template": "other/ping"}).json()
    assert (done["changed"], done["archived"]) == (3, 3)
    assert engine.get_tasks(ids) == []
