"""An idempotency key reused with a different payload is refused (`IdempotencyConflict`, 409), in
code and over the API, on both stores; the same payload still returns the first task."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tasker import IdempotencyConflict, Tasker, TaskerInputError
from tests.api.conftest import error_of

API = "/api/v1"
CONTEXT = {"email": "ada@example.com", "amount": 12.5}


def test_the_same_payload_returns_the_first_task(engine: Tasker) -> None:
    first = engine.create_task("apitest/order", CONTEXT, idempotency_key="k-1")
    again = engine.create_task("apitest/order", dict(CONTEXT), idempotency_key="k-1")
    assert again.id == first.id and again.deduplicated and not first.deduplicated
    # the defaults the schema applies, and 12.5 vs 12.50, are not differences
    same = engine.create_task(
        "apitest/order", {**CONTEXT, "currency": "EUR", "amount": 12.50}, idempotency_key="k-1"
    )
    assert same.id == first.id


def test_a_different_context_names_the_differing_paths(engine: Tasker) -> None:
    first = engine.create_task("apitest/order", CONTEXT, idempotency_key="k-2")
    with pytest.raises(IdempotencyConflict) as caught:
        engine.create_task(
            "apitest/order",
            {"email": "ada@example.com", "amount": 99, "note": "x"},
            idempotency_key="k-2",
        )
    conflict = caught.value
    assert isinstance(conflict, TaskerInputError)
    assert conflict.task_id == first.id and conflict.key == "k-2"
    assert conflict.differences == ["context $.amount", "context $.note (only in the new request)"]
    message = str(conflict)
    assert "'k-2'" in message and f"task {first.id}" in message and "$.amount" in message
    assert "fix:" in message
    assert len(engine.list_tasks()[0]) == 1  # nothing was created


def test_a_different_pinned_version_is_a_conflict(engine: Tasker) -> None:
    engine.create_task("apitest/order", CONTEXT, version="1.0.0", idempotency_key="k-3")
    with pytest.raises(IdempotencyConflict, match=r"template version 1\.1\.0 != 1\.0\.0"):
        engine.create_task("apitest/order", CONTEXT, version="1.1.0", idempotency_key="k-3")
    with pytest.raises(IdempotencyConflict, match="version"):
        engine.create_task("apitest/order@1.1.0", CONTEXT, idempotency_key="k-3")


def test_an_unpinned_retry_after_a_newer_version_loaded_is_the_same_request(engine: Tasker) -> None:
    first = engine.create_task("apitest/order", CONTEXT, version="1.0.0", idempotency_key="k-4")
    assert (
        engine.create_task("apitest/order", CONTEXT, idempotency_key="k-4").id == first.id
    )  # latest: 1.1.0


def test_a_nested_difference_is_named_by_its_path(engine: Tasker) -> None:
    engine.create_task("apitest/order", {**CONTEXT, "note": "a"}, idempotency_key="k-5")
    with pytest.raises(IdempotencyConflict, match=r"context \$\.note"):
        engine.create_task("apitest/order", {**CONTEXT, "note": "b"}, idempotency_key="k-5")


def test_the_api_answers_409_with_the_difference(client: TestClient) -> None:
    body = {"template": "apitest/order", "context": CONTEXT, "idempotency_key": "api-1"}
    first = client.post(f"{API}/tasks", json=body)
    assert first.status_code == 201
    assert client.post(f"{API}/tasks", json=body).status_code == 200
    changed = client.post(f"{API}/tasks", json={**body, "context": {**CONTEXT, "amount": 1}})
    error = error_of(changed, 409, "idempotency_conflict")
    assert "$.amount" in error["message"] and f"task {first.json()['id']}" in error["message"]
    pinned = client.post(f"{API}/tasks", json={**body, "version": "1.0.0"})
    assert "template version" in error_of(pinned, 409, "idempotency_conflict")["message"]
    assert client.get(f"{API}/tasks").json()["total"] == 1
