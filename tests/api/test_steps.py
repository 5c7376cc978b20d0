"""Steps over HTTP: list and show with transitions, resolve by hand with a result, retry one
step."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tasker import Tasker
from tests.api.conftest import create, error_of

API = "/api/v1"


def test_list_steps_with_attempts_results_errors_timings_and_transitions(
    client: TestClient, engine: Tasker
) -> None:
    task_id = create(client, context={"email": "a@example.com", "amount": 3, "fail": "charge"})[
        "id"
    ]
    engine.run(task_id)
    r = client.get(f"{API}/tasks/{task_id}/steps")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task_id"] == task_id
    steps = {s["name"]: s for s in body["steps"]}
    assert list(steps) == ["validate", "charge", "reserve", "ship"]
    assert steps["validate"]["results"] == {"step": "validate", "amount": 3}
    assert steps["validate"]["duration_seconds"] is not None and steps["validate"]["started_at"]
    charge = steps["charge"]
    assert (charge["status"], charge["attempts"], charge["retry_limit"]) == ("error", 1, 2)
    assert charge["dependent_system"] == "payments" and charge["parents"] == ["validate"]
    assert charge["last_error"] == {
        "error_class": "PermanentError",
        "message": "charge was told to fail",
        "retryable": False,
        "error_code": "TOLD_TO_FAIL",
        "context": None,
    }
    assert [t["to_state"] for t in charge["transitions"]] == [
        "pending",
        "ready",
        "in_progress",
        "error",
    ]
    assert charge["transitions"][-1]["error_class"] == "PermanentError"
    assert steps["ship"]["status"] == "pending" and steps["ship"]["parents"] == [
        "charge",
        "reserve",
    ]


def test_show_one_step_and_unknown_steps(client: TestClient, engine: Tasker) -> None:
    task_id = create(client)["id"]
    engine.run(task_id)
    step = client.get(f"{API}/tasks/{task_id}/steps/reserve").json()
    assert step["name"] == "reserve" and step["status"] == "complete"
    assert [t["to_state"] for t in step["transitions"]] == [
        "pending",
        "ready",
        "in_progress",
        "complete",
    ]
    error = error_of(client.get(f"{API}/tasks/{task_id}/steps/refund"), 404, "not_found")
    assert "validate, charge, reserve, ship" in error["message"]
    error_of(client.get(f"{API}/tasks/424242/steps"), 404)
    error_of(client.get(f"{API}/tasks/424242/steps/validate"), 404)
    for bad in ("%3Cscript%3E", "a%00b", "x" * 129, "1abc", "' OR 1=1 --"):
        error = error_of(client.get(f"{API}/tasks/{task_id}/steps/{bad}"), 422)
        assert error["details"][0]["path"] == "path.step_name", bad
    error_of(
        client.get(f"{API}/tasks/{task_id}/steps/..%2F..%2Fetc%2Fpasswd"), 404
    )  # no such route


def test_resolving_a_failed_step_lets_its_dependents_run(
    client: TestClient, engine: Tasker
) -> None:
    task_id = create(client, context={"email": "a@example.com", "fail": "charge"})["id"]
    engine.run(task_id)
    r = client.post(
        f"{API}/tasks/{task_id}/steps/charge/resolve", json={"result": {"charged_by": "hand"}}
    )
    assert r.status_code == 200, r.text
    assert {s["name"]: s["status"] for s in r.json()["steps"]}["charge"] == "resolved_manually"
    task = engine.run(task_id)
    assert task.status == "resolved_manually"
    step = client.get(f"{API}/tasks/{task_id}/steps/charge").json()
    assert step["results"] == {"charged_by": "hand"}
    assert client.get(f"{API}/tasks/{task_id}/steps/ship").json()["status"] == "complete"


def test_resolve_refuses_finished_steps_and_bad_results(client: TestClient, engine: Tasker) -> None:
    task_id = create(client, context={"email": "a@example.com", "fail": "charge"})["id"]
    engine.run(task_id)
    url = f"{API}/tasks/{task_id}/steps/charge/resolve"
    for body, path in (
        ({"result": [1]}, "$.result"),
        ({"result": "done"}, "$.result"),
        ({"results": {}}, "$.results"),
        ({"result": {"a": {"b": 1}}, "extra": 1}, "$.extra"),
    ):
        error = error_of(client.post(url, json=body), 422, "validation_error")
        assert error["details"][0]["path"] == path, error
    error = error_of(
        client.post(f"{API}/tasks/{task_id}/steps/validate/resolve", json={}), 409, "conflict"
    )
    assert "validate' of task" in error["message"] and "complete" in error["message"]
    # A pending step cannot overtake its unfinished parents (409 naming them); once they are
    # resolved or complete it may be resolved before it runs, and an empty body resolves with an
    # empty result.
    error = error_of(client.post(f"{API}/tasks/{task_id}/steps/ship/resolve"), 409, "conflict")
    assert "parent charge (error) is not finished" in error["message"], error
    error_of(client.post(f"{API}/tasks/424242/steps/validate/resolve", json={}), 404)
    error_of(client.post(f"{API}/tasks/{task_id}/steps/nope/resolve", json={}), 404)
    assert client.post(url, json={"result": {"by": "hand"}}).status_code == 200
    pending = client.post(f"{API}/tasks/{task_id}/steps/ship/resolve")
    assert pending.status_code == 200, pending.text
    assert client.get(f"{API}/tasks/{task_id}/steps/ship").json()["results"] == {}


def test_retry_one_failed_step(client: TestClient, engine: Tasker) -> None:
    task_id = create(client, context={"email": "a@example.com", "fail": "charge"})["id"]
    engine.run(task_id)
    error = error_of(client.post(f"{API}/tasks/{task_id}/steps/validate/retry"), 409, "conflict")
    assert "only a step in error can be retried" in error["message"]
    r = client.post(f"{API}/tasks/{task_id}/steps/charge/retry")
    assert r.status_code == 200, r.text
    charge = {s["name"]: s for s in r.json()["steps"]}["charge"]
    assert (charge["status"], charge["attempts"]) == ("ready", 0)
    assert r.json()["status"] == "pending"
    error_of(client.post(f"{API}/tasks/{task_id}/steps/nope/retry"), 404, "not_found")
    error_of(client.post(f"{API}/tasks/424242/steps/charge/retry"), 404, "not_found")
