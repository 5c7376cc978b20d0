"""Time in the API: delayed starts and deadlines in the create body, signals (with their own
permission), and schedules (list, add, pause, resume, trigger, remove), with clear 4xx answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from tasker import Tasker
from tasker.api.app import create_app
from tasker.settings import Settings
from tests.api.conftest import FAST_RETRY, HANDLER, error_of

API = "/api/v1"
SIGNUP = {
    "name": "signup",
    "namespace_name": "apitest",
    "version": "1.0.0",
    "retry": FAST_RETRY,
    "step_templates": [
        {"name": "register", "handler_class": HANDLER},
        {
            "name": "confirmed",
            "depends_on_step": "register",
            "wait_for": "email_confirmed",
        },
        {"name": "welcome", "handler_class": HANDLER, "depends_on_step": "confirmed"},
    ],
    "schedules": [{"name": "nightly", "cron": "0 2 * * *", "timezone": "Europe/Berlin"}],
}


@pytest.fixture
def api_templates(api_templates: Path) -> Path:
    (api_templates / "signup.yaml").write_text(yaml.safe_dump(SIGNUP, sort_keys=False))
    return api_templates


def test_a_task_created_with_a_delay_starts_later_and_says_when(client: TestClient) -> None:
    before = datetime.now(UTC)
    response = client.post(
        f"{API}/tasks",
        json={"template": "other/ping", "delay": "1h", "deadline": "2h"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    starts = datetime.fromisoformat(body["starts_at"])
    assert body["status"] == "pending"
    assert timedelta(minutes=59) < starts - before < timedelta(minutes=61)
    assert datetime.fromisoformat(body["deadline_at"]) - starts == timedelta(hours=2)
    assert body["steps"][0]["run_at"] == body["starts_at"]
    listed = client.get(f"{API}/tasks").json()["tasks"][0]
    assert listed["starts_at"] == body["starts_at"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"run_at": "2030-01-01T07:00:00"}, "no time zone"),
        ({"delay": "soon"}, "not a duration"),
        ({"delay": 5, "run_at": "2030-01-01T07:00:00Z"}, "not both"),
    ],
)
def test_bad_start_times_answer_422_saying_why(
    client: TestClient, body: dict[str, Any], message: str
) -> None:
    response = client.post(f"{API}/tasks", json={"template": "other/ping", **body})
    assert message in error_of(response, 422)["message"]


def test_a_signal_resumes_the_step_waiting_for_it(client: TestClient, engine: Tasker) -> None:
    created = client.post(f"{API}/tasks", json={"template": "apitest/signup"}).json()
    task_id = created["id"]
    engine.run(task_id)
    waiting = next(
        s for s in client.get(f"{API}/tasks/{task_id}").json()["steps"] if s["name"] == "confirmed"
    )
    assert waiting["status"] == "waiting_retry"
    assert waiting["decision"] == "waiting for signal 'email_confirmed'"

    sent = client.post(
        f"{API}/tasks/{task_id}/signals/email_confirmed",
        json={"payload": {"at": "09:12"}, "idempotency_key": "evt-1"},
    )
    assert sent.status_code == 201, sent.text
    assert sent.json()["woke"] == [waiting["id"]] and not sent.json()["deduplicated"]
    again = client.post(
        f"{API}/tasks/{task_id}/signals/email_confirmed",
        json={"payload": {"at": "later"}, "idempotency_key": "evt-1"},
    )
    assert again.status_code == 200 and again.json()["deduplicated"]
    assert again.json()["payload"] == {"at": "09:12"}

    assert engine.run(task_id).status == "complete"
    confirmed = engine.get_task(task_id).step("confirmed")
    assert confirmed.results == {"at": "09:12"}
    listed = client.get(f"{API}/tasks/{task_id}/signals").json()
    assert [s["name"] for s in listed["signals"]] == ["email_confirmed"]


def test_signals_that_cannot_be_delivered_answer_4xx(client: TestClient, engine: Tasker) -> None:
    task_id = client.post(f"{API}/tasks", json={"template": "apitest/signup"}).json()["id"]
    unknown = client.post(f"{API}/tasks/{task_id}/signals/nope", json={})
    assert "does not wait for a signal named 'nope'" in error_of(unknown, 422)["message"]
    error_of(client.post(f"{API}/tasks/999999/signals/email_confirmed"), 404)
    error_of(client.post(f"{API}/tasks/{task_id}/signals/bad%20name"), 422)
    error_of(client.post(f"{API}/tasks/{task_id}/signals/email_confirmed", json={"x": 1}), 422)
    engine.cancel_task(task_id)
    finished = client.post(f"{API}/tasks/{task_id}/signals/email_confirmed")
    assert "is cancelled" in error_of(finished, 409)["message"]


def test_sending_a_signal_needs_its_own_permission(engine: Tasker) -> None:
    settings = Settings(auth_enabled=True)
    task = engine.create_task("apitest/signup", {})
    _, webhook = engine.keys.create("webhook", ["tasker.task:signal"])
    _, reader = engine.keys.create("reader", ["tasker.task:show", "tasker.task:create"])
    with TestClient(create_app(engine, settings)) as c:
        url = f"{API}/tasks/{task.id}/signals/email_confirmed"
        assert c.post(url, headers={"X-API-Key": webhook}).status_code == 201
        assert c.post(url, headers={"X-API-Key": reader}).status_code == 403
        assert c.get(f"{API}/tasks/{task.id}", headers={"X-API-Key": webhook}).status_code == 403


def test_schedules_are_listed_added_paused_resumed_triggered_and_removed(
    client: TestClient,
) -> None:
    (nightly,) = client.get(f"{API}/schedules").json()["schedules"]
    assert nightly["template"] == "apitest/signup" and nightly["origin"] == "template"
    assert nightly["cron"] == "0 2 * * *" and nightly["timezone"] == "Europe/Berlin"

    added = client.post(
        f"{API}/schedules",
        json={
            "template": "apitest/order",
            "name": "hourly",
            "cron": "0 * * * *",
            "context": {"email": "ops@example.com"},
            "catch_up": "skip",
        },
    )
    assert added.status_code == 201, added.text
    schedule = added.json()
    assert added.headers["Location"] == f"/api/v1/schedules/{schedule['id']}"
    assert schedule["origin"] == "api" and schedule["catch_up"] == "skip"

    base = f"{API}/schedules/{schedule['id']}"
    assert client.post(f"{base}/pause").json()["paused"] is True
    assert client.post(f"{base}/resume").json()["paused"] is False
    triggered = client.post(f"{base}/trigger")
    assert triggered.status_code == 201 and triggered.json()["context"]["email"] == (
        "ops@example.com"
    )
    assert client.delete(base).status_code == 204
    error_of(client.get(base), 404)
    error_of(client.delete(base), 404)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"cron": "every hour"}, 422, "not a cron expression"),
        ({"timezone": "Mars/Base"}, 422, "unknown time zone"),
        ({"context": {}}, 422, "email"),
        ({"template": "apitest/nope"}, 404, "nope"),
        ({"catch_up": "sometimes"}, 422, None),
        ({"name": "nightly", "template": "apitest/signup", "context": {}}, 422, "already has"),
    ],
)
def test_a_bad_schedule_answers_4xx_saying_why(
    client: TestClient, body: dict[str, Any], status: int, message: str | None
) -> None:
    payload = {
        "template": "apitest/order",
        "name": "s",
        "cron": "0 7 * * *",
        "context": {"email": "a@example.com"},
        **body,
    }
    error = error_of(client.post(f"{API}/schedules", json=payload), status)
    if message:
        assert message in str(error)
