"""Tasks over HTTP: create (201/200 idempotent), list with filters and pagination, show, cancel,
retry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from tasker import Tasker
from tasker.engine import queries
from tests.api.conftest import create, error_of

API = "/api/v1"


def test_create_answers_201_with_the_task_its_steps_and_a_location(client: TestClient) -> None:
    r = client.post(
        f"{API}/tasks",
        json={
            "template": "apitest/order",
            "context": {"email": "ada@example.com"},
            "correlation_id": "corr-abc",
        },
    )
    assert r.status_code == 201, r.text
    task = r.json()
    assert r.headers["location"] == f"{API}/tasks/{task['id']}"
    assert task["template"] == "apitest/order@1.1.0"  # the latest version when none is given
    assert task["status"] == "pending" and task["deduplicated"] is False
    assert task["context"] == {
        "email": "ada@example.com",
        "currency": "EUR",
    }  # schema default applied
    assert task["correlation_id"] == "corr-abc"
    assert [(s["name"], s["status"], s["parents"]) for s in task["steps"]] == [
        ("validate", "ready", []),
        ("charge", "pending", ["validate"]),
        ("reserve", "pending", ["validate"]),
        ("ship", "pending", ["charge", "reserve"]),
    ]
    assert task["step_counts"] == {"ready": 1, "pending": 3}
    assert [t["to_state"] for t in task["transitions"]] == ["pending"]


def test_a_repeated_idempotency_key_answers_200_with_the_first_task(client: TestClient) -> None:
    first = create(client, idempotency_key="order-42")
    again = client.post(
        f"{API}/tasks",
        json={
            "template": "apitest/order",
            "idempotency_key": "order-42",
            "context": {"email": "ada@example.com", "amount": 12.5},
        },
    )
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first["id"] and again.json()["deduplicated"] is True
    assert "location" not in again.headers
    # without a key (and no identity: in the template), every request is a new task
    same = create(client, context={"email": "bob@example.com"})
    repeat = client.post(
        f"{API}/tasks", json={"template": "apitest/order", "context": {"email": "bob@example.com"}}
    )
    assert repeat.status_code == 201 and repeat.json()["id"] != same["id"]
    assert repeat.json()["deduplicated"] is False


def test_a_version_can_be_pinned_by_field_or_by_reference(client: TestClient) -> None:
    assert create(client, version="1.0.0")["version"] == "1.0.0"
    assert (
        create(client, template="apitest/order@1.0.0", context={"email": "x@example.com"})[
            "version"
        ]
        == "1.0.0"
    )
    error = error_of(
        client.post(f"{API}/tasks", json={"template": "apitest/order", "version": "9.9.9"}),
        404,
        "unknown_template",
    )
    assert "apitest/order@1.0.0" in error["message"] and "apitest/order@1.1.0" in error["message"]


def test_an_unknown_template_is_404_naming_those_that_exist(client: TestClient) -> None:
    error = error_of(
        client.post(f"{API}/tasks", json={"template": "nope/missing"}), 404, "unknown_template"
    )
    assert "nope/missing" in error["message"]
    for known in ("apitest/order@1.0.0", "apitest/order@1.1.0", "other/ping@0.1.0"):
        assert known in error["message"]


def test_a_context_that_violates_the_schema_lists_every_violation(client: TestClient) -> None:
    r = client.post(
        f"{API}/tasks",
        json={
            "template": "apitest/order",
            "context": {"email": "not-an-email", "amount": -1, "currency": "GBP"},
        },
    )
    error = error_of(r, 422, "invalid_context")
    assert sorted(d["path"] for d in error["details"]) == ["$.amount", "$.currency", "$.email"]
    missing = error_of(
        client.post(f"{API}/tasks", json={"template": "apitest/order"}), 422, "invalid_context"
    )
    assert missing["details"] == [{"path": "$", "message": "'email' is a required property"}]


MALFORMED_BODIES = [
    ({"template": "apitest/order", "handler_class": "os:system"}, "$.handler_class"),
    ({"context": {}}, "$.template"),
    ({"template": 5}, "$.template"),
    ({"template": "apitest/order", "context": [1, 2]}, "$.context"),
    ({"template": "apitest/order", "context": "{}"}, "$.context"),
    ({"template": "apitest/order", "idempotency_key": ""}, "$.idempotency_key"),
    ({"template": "apitest/order", "idempotency_key": "k" * 256}, "$.idempotency_key"),
    ({"template": "apitest/order", "correlation_id": "line\nbreak"}, "$.correlation_id"),
    ({"template": "apitest/order", "version": "latest"}, "$.version"),
    ({"template": "a/b/c"}, "$.template"),
    ({"template": "x" * 5000}, "$.template"),
]


def test_malformed_create_bodies_are_422_with_the_field_path(client: TestClient) -> None:
    for body, path in MALFORMED_BODIES:
        error = error_of(client.post(f"{API}/tasks", json=body), 422, "validation_error")
        assert path in [d["path"] for d in error["details"]], (body, error)
        assert path in error["message"]


def test_show_a_task_with_its_steps_after_it_ran(client: TestClient, engine: Tasker) -> None:
    task_id = create(client)["id"]
    engine.run(task_id)
    task = client.get(f"{API}/tasks/{task_id}").json()
    assert task["status"] == "complete" and task["duration_seconds"] is not None
    assert task["step_counts"] == {"complete": 4}
    assert all(s["attempts"] == 1 and s["results"]["step"] == s["name"] for s in task["steps"])
    assert [t["to_state"] for t in task["transitions"]] == ["pending", "in_progress", "complete"]


def test_unknown_and_malformed_ids(client: TestClient) -> None:
    response = client.get(f"{API}/tasks/999999")
    assert (
        "GET /api/v1/tasks" in error_of(response, 404, "not_found")["message"]
    )  # the API's hint, not the CLI's
    for bad in ("0", "-1", "abc", "1.5", str(2**63), str(10**40), "%00", "' OR 1=1 --", "1e3"):
        error = error_of(client.get(f"{API}/tasks/{bad}"), 422, "validation_error")
        assert error["details"][0]["path"] == "path.task_id", (bad, error)


def test_list_filters_and_paginates_newest_first(client: TestClient, engine: Tasker) -> None:
    ids = [create(client, context={"email": f"u{i}@example.com"})["id"] for i in range(3)]
    old = create(client, version="1.0.0", context={"email": "old@example.com"})["id"]
    ping = create(client, template="other/ping", context={})["id"]
    engine.run(ping)

    page = client.get(f"{API}/tasks", params={"limit": 2}).json()
    assert page["total"] == 5 and page["limit"] == 2 and page["offset"] == 0
    assert page["total_capped"] is False
    assert [t["id"] for t in page["tasks"]] == [ping, old]
    assert "steps" not in page["tasks"][0]
    rest = client.get(f"{API}/tasks", params={"limit": 2, "offset": 4}).json()
    assert [t["id"] for t in rest["tasks"]] == [ids[0]]

    def ids_for(**params: object) -> list[int]:
        response = client.get(f"{API}/tasks", params=params)
        assert response.status_code == 200, response.text
        return [t["id"] for t in response.json()["tasks"]]

    assert ids_for(namespace="other") == [ping]
    assert ids_for(namespace="apitest", name="order", version="1.0.0") == [old]
    assert ids_for(status="complete") == [ping]
    assert ids_for(status="pending", name="order") == [old, *reversed(ids)]
    now = datetime.now(UTC)
    assert ids_for(created_after=(now + timedelta(hours=1)).isoformat()) == []
    assert len(ids_for(created_before=(now + timedelta(hours=1)).isoformat())) == 5
    assert (
        len(ids_for(created_after=(now - timedelta(hours=1)).replace(tzinfo=None).isoformat())) == 5
    )
    assert ids_for(offset=2**63 - 1) == []


def test_the_total_stops_counting_at_the_cap(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(4):
        create(client, context={"email": f"u{i}@example.com"})
    monkeypatch.setattr(queries, "TOTAL_CAP", 3)

    page = client.get(f"{API}/tasks", params={"limit": 1}).json()
    assert (page["total"], page["total_capped"]) == (3, True)
    page = client.get(f"{API}/tasks", params={"limit": 1, "name": "order"}).json()
    assert (page["total"], page["total_capped"]) == (3, True)
    page = client.get(f"{API}/tasks", params={"include_total": "false"}).json()
    assert (page["total"], page["total_capped"]) == (None, None)
    page = client.get(f"{API}/tasks", params={"status": "complete"}).json()
    assert (page["total"], page["total_capped"]) == (0, False)


BAD_FILTERS: list[dict[str, str | int]] = [
    {"limit": 0},
    {"limit": 501},
    {"limit": "ten"},
    {"offset": -1},
    {"offset": 2**63},
    {"status": "done"},
    {"namespace": "' OR 1=1 --"},
    {"name": "<script>alert(1)</script>"},
    {"version": "../../etc/passwd"},
    {"namespace": "a\x00b"},
    {"created_after": "yesterday"},
    {"created_before": "9999-12-31T23:59:59-23:59"},
    {"created_after": "0001-01-01T00:00:00+23:00"},
    {"namespace": "n" * 65},
]


def test_bad_list_filters_are_422_naming_the_parameter(client: TestClient) -> None:
    for params in BAD_FILTERS:
        error = error_of(client.get(f"{API}/tasks", params=params), 422)
        assert f"query.{next(iter(params))}" in error["message"], (params, error)


def test_cancel_a_pending_task_with_a_reason_then_again_is_409(client: TestClient) -> None:
    task_id = create(client)["id"]
    r = client.post(f"{API}/tasks/{task_id}/cancel", json={"reason": "customer changed their mind"})
    assert r.status_code == 200, r.text
    task = r.json()
    assert task["status"] == "cancelled" and task["step_counts"] == {"cancelled": 4}
    assert task["transitions"][-1]["reason"] == "customer changed their mind"
    error = error_of(client.post(f"{API}/tasks/{task_id}/cancel"), 409, "conflict")
    assert "already cancelled" in error["message"]


def test_cancel_needs_no_body_and_refuses_bad_ones(client: TestClient) -> None:
    task_id = create(client)["id"]
    error_of(
        client.post(f"{API}/tasks/{task_id}/cancel", json={"why": "x"}), 422, "validation_error"
    )
    error_of(client.post(f"{API}/tasks/{task_id}/cancel", json={"reason": "r" * 1001}), 422)
    error_of(client.post(f"{API}/tasks/{task_id}/cancel", json={"reason": "nul\x00"}), 422)
    assert client.post(f"{API}/tasks/{task_id}/cancel").json()["status"] == "cancelled"
    error_of(client.post(f"{API}/tasks/424242/cancel"), 404, "not_found")


def test_retry_rearms_a_task_in_error_and_refuses_others(
    client: TestClient, engine: Tasker
) -> None:
    task_id = create(client, context={"email": "a@example.com", "fail": "charge"})["id"]
    assert engine.run(task_id).status == "error"
    r = client.post(f"{API}/tasks/{task_id}/retry")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "pending"
    assert {s["name"]: s["status"] for s in r.json()["steps"]}["charge"] == "ready"
    error = error_of(client.post(f"{API}/tasks/{task_id}/retry"), 409, "conflict")
    assert "only a task in error can be retried" in error["message"]
    error_of(client.post(f"{API}/tasks/424242/retry"), 404)


def test_compensate_refuses_a_task_not_in_error_or_with_nothing_to_undo(
    client: TestClient, engine: Tasker
) -> None:
    running = create(client)["id"]
    error = error_of(client.post(f"{API}/tasks/{running}/compensate"), 409, "conflict")
    assert "only a task in error can be compensated" in error["message"]
    assert "--compensate" in error["message"]
    failed = create(client, context={"email": "a@example.com", "fail": "charge"})["id"]
    assert engine.run(failed).status == "error"
    error = error_of(client.post(f"{API}/tasks/{failed}/compensate"), 409, "conflict")
    assert "nothing to undo" in error["message"]
    error_of(client.post(f"{API}/tasks/424242/compensate"), 404)
    r = client.post(f"{API}/tasks/{running}/cancel", json={"compensate": True})
    assert r.status_code == 200 and r.json()["status"] == "cancelled"  # nothing had completed
