"""The registration workflow against the four real example services, and the services' own contract.

The services run on free loopback ports (one fleet per module, faults cleared and every service
listening again after each test); each test registers its own users, so tests never see each other's
rows. Tests that run the workflow use the `store_url` stores (SQLite and PostgreSQL).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tasker import Task, Tasker
from tasker.demos.microservices import payloads
from tasker.demos.microservices.demo import TEMPLATE, TEMPLATES, confirm_email
from tasker.demos.microservices.services import ServiceFleet
from tasker.domain.errors import ContextValidationError
from tasker.testing import workflow_env
from tests.chaos.support import wait_for


@pytest.fixture(scope="module")
def fleet() -> Iterator[ServiceFleet]:
    with ServiceFleet() as f:
        yield f


@pytest.fixture(autouse=True)
def healthy(fleet: ServiceFleet) -> Iterator[None]:
    yield
    for handle in fleet.handles.values():
        handle.resume()
    fleet.clear_faults()


@pytest.fixture
def engine(
    make_tasker: Callable[..., Tasker], fleet: ServiceFleet, monkeypatch: pytest.MonkeyPatch
) -> Tasker:
    """An engine on the test's store with the registration template pointed at the fleet."""
    for var, url in fleet.env().items():
        monkeypatch.setenv(var, url)
    tasker = make_tasker(poll_interval=0.05)
    tasker.load_templates(TEMPLATES)
    return tasker


def registration(plan: str = "pro", **extra: Any) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:10]
    context: dict[str, Any] = {
        "user_info": {"email": f"{tag}@growthcorp.example", "name": f"User {tag}", "plan": plan},
        "correlation_id": f"reg-{tag}",
        **extra,
    }
    if plan != "free":
        context["billing_info"] = {
            "payment_method": "card",
            "billing_address": {"city": "Springfield"},
        }
    return context


def signed_up(engine: Tasker, context: dict[str, Any]) -> int:
    """A registration whose user confirms their e-mail at once (the signal is kept until
    `confirm_email` waits for it); returns the task's id."""
    task_id = engine.create_task(TEMPLATE, context).id
    confirm_email(engine, task_id)
    return task_id


def calls(fleet: ServiceFleet, correlation_id: str) -> dict[str, list[dict[str, Any]]]:
    """Each service's logged requests carrying this correlation id."""
    return {
        name: [r for r in h.requests() if r["correlation_id"] == correlation_id]
        for name, h in fleet.handles.items()
    }


def user_rows(fleet: ServiceFleet, email: str) -> list[dict[str, Any]]:
    return [u for u in fleet.user.state()["rows"]["users"] if u["email"] == email]


# -- the workflow ----------------------------------------------------------------------------------
def test_registration_completes_and_the_correlation_id_reaches_every_service(
    engine: Tasker, fleet: ServiceFleet
) -> None:
    context = registration("enterprise")
    corr = context["correlation_id"]

    task = engine.run(signed_up(engine, context))

    assert task.status == "complete", [(s.name, s.status, s.last_error) for s in task.steps]
    assert task.correlation_id == corr
    assert all((task.step(s).results or {}).get("correlation_id") == corr for s in payloads.STEPS)
    assert task.step("confirm_email").results == {"confirmed_via": "welcome_link"}
    assert task.step("send_confirmation_reminder").status == "skipped"
    seen = calls(fleet, corr)
    assert [(r["method"], r["path"]) for r in seen["user"]] == [
        ("POST", "/users"),
        ("PUT", f"/users/{(task.step('create_user_account').results or {})['user_id']}/status"),
    ]
    assert [r["path"] for r in seen["billing"]] == ["/billing_profiles"]
    assert [r["path"] for r in seen["preferences"]] == ["/preferences"]
    assert [r["path"] for r in seen["notification"]] == ["/welcome_sequences"]
    # ... with the step's idempotency key, and stored with every row the registration wrote
    keys = {s.name: s.idempotency_key for s in task.steps}
    assert seen["billing"][0]["idempotency_key"] == keys["setup_billing_profile"], seen
    user = user_rows(fleet, context["user_info"]["email"])
    assert [(u["status"], u["correlation_id"], u["status_correlation_id"]) for u in user] == [
        ("registration_complete", corr, corr)
    ]
    email = context["user_info"]["email"]
    emails = [e for e in fleet.notification.state()["rows"]["emails"] if e["recipient"] == email]
    assert {e["correlation_id"] for e in emails} == {corr}
    assert {e["kind"] for e in emails} == {
        "welcome",
        "getting_started",
        "enterprise_features",
        "account_manager",
    }
    # the handlers published their service calls, with the correlation id, into the durable event
    # log
    events = engine.history.read_events(task_id=task.id, names=["service_call_*"]).events
    assert {e["event"] for e in events} == {"service_call_started", "service_call_completed"}
    assert {
        e["data"]["correlation_id"] for e in events if e["event"] == "service_call_started"
    } == {corr}
    # the task handler annotated the outcome
    notes = task.annotations or {}
    assert notes["registration_outcome"]["plan"] == "enterprise"
    assert notes["correlation_id"] == corr
    assert set(notes["service_performance"]["service_timings"]) == set(payloads.STEPS)


def test_free_plan_gets_the_free_welcome_and_a_zero_priced_profile(
    engine: Tasker, fleet: ServiceFleet
) -> None:
    context = registration("free")
    del context["correlation_id"]  # generated by the engine when left out

    task = engine.run(signed_up(engine, context))

    assert task.status == "complete"
    assert task.correlation_id.startswith("corr-")
    assert task.context["preferences"] == {
        "marketing_emails": False,
        "product_updates": False,
        "newsletter": False,
    }
    assert (task.step("setup_billing_profile").results or {})["monthly_price_cents"] == 0
    kinds = [
        e["kind"]
        for e in fleet.notification.state()["rows"]["emails"]
        if e["recipient"] == context["user_info"]["email"]
    ]
    assert sorted(kinds) == ["getting_started", "welcome"]
    assert {r["correlation_id"] for r in calls(fleet, task.correlation_id)["billing"]} == {
        task.correlation_id
    }


def test_billing_and_preferences_run_at_the_same_time(engine: Tasker, fleet: ServiceFleet) -> None:
    fleet.billing.set_faults(latency_ms=400)
    fleet.preferences.set_faults(latency_ms=400)
    context = registration()

    task = engine.run(signed_up(engine, context))

    assert task.status == "complete"
    seen = calls(fleet, context["correlation_id"])
    billing, prefs = seen["billing"][0], seen["preferences"][0]
    # the two services recorded overlapping request intervals: both were being served at once
    assert max(billing["started_at"], prefs["started_at"]) < min(
        billing["finished_at"], prefs["finished_at"]
    )
    assert (task.annotations or {})["service_performance"]["parallel_execution_saved_ms"] > 0


def test_a_burst_of_sign_ups_stays_under_the_email_quota_and_every_welcome_mail_is_sent(
    engine: Tasker, fleet: ServiceFleet
) -> None:
    """The second story's "email limit: user fully registered, but no welcome email": 30 sign-ups
    at once against a provider that sends 10 sequences a second. The template's rate limit (8 a
    second) defers the welcome steps instead of meeting the quota: no 429, one mail sequence
    each, no attempt spent on waiting."""
    quota = fleet.notification.service.quota  # type: ignore[attr-defined]
    refused_before = quota.refused
    contexts = [registration() for _ in range(30)]
    ids = [signed_up(engine, c) for c in contexts]
    engine.work(concurrency=16)
    tasks = [engine.get_task(i) for i in ids]
    assert {t.status for t in tasks} == {"complete"}
    assert {t.step("send_welcome_sequence").attempts for t in tasks} == {1}
    assert quota.refused == refused_before
    sent = fleet.notification.state()["rows"]["welcome_sequences"]
    for c in contexts:
        assert len([s for s in sent if s["recipient"] == c["user_info"]["email"]]) == 1
    (system,) = [r for r in engine.systems.report() if r["name"] == "notification_service"]
    assert system["rate_limit"] == "8/second"


def test_a_409_for_the_same_user_resolves_as_success(engine: Tasker, fleet: ServiceFleet) -> None:
    context = registration()
    existing = httpx.post(f"{fleet.user.url}/users", json=payloads.user_body(context)).json()

    task = engine.run(signed_up(engine, context))

    assert task.status == "complete"
    created = task.step("create_user_account")
    assert created.attempts == 1
    assert created.results is not None
    assert (
        created.results["user_id"],
        created.results["status"],
        created.results["conflict_resolved"],
    ) == (existing["id"], "already_exists", True)
    assert len(user_rows(fleet, context["user_info"]["email"])) == 1
    assert calls(fleet, context["correlation_id"])["user"][0]["status"] == 409


def test_a_409_for_a_different_user_is_a_permanent_error(
    engine: Tasker, fleet: ServiceFleet
) -> None:
    context = registration()
    httpx.post(
        f"{fleet.user.url}/users", json={**payloads.user_body(context), "name": "Somebody Else"}
    )

    task = engine.run(signed_up(engine, context))

    assert task.status == "error"
    step = task.step("create_user_account")
    assert (step.status, step.attempts) == ("error", 1)
    assert step.last_error is not None
    assert "409" in step.last_error["message"] and "name" in step.last_error["message"]
    assert task.step("setup_billing_profile").status == "pending"


def test_a_429_with_retry_after_is_not_retried_before_it(
    engine: Tasker, fleet: ServiceFleet
) -> None:
    fleet.billing.set_faults(rate_limit_requests=1, retry_after=2)
    context = registration()

    task = engine.run(signed_up(engine, context))

    assert task.status == "complete"
    assert task.step("setup_billing_profile").attempts == 2
    first, second = calls(fleet, context["correlation_id"])["billing"]
    assert (first["status"], second["status"]) == (429, 201)
    assert second["started_at"] - first["finished_at"] >= 2.0
    assert first["idempotency_key"] == second["idempotency_key"]


def test_a_response_slower_than_the_timeout_is_retried_without_a_second_profile(
    make_tasker: Callable[..., Tasker],
    fleet: ServiceFleet,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for var, url in fleet.env().items():
        monkeypatch.setenv(var, url)
    definition = yaml.safe_load((TEMPLATES / "user_registration.yaml").read_text())
    for step in definition["step_templates"]:
        if step["name"] == "setup_billing_profile":
            step["handler_config"]["timeout_seconds"] = 0.5
    (tmp_path / "registration.yaml").write_text(yaml.safe_dump(definition))
    engine = make_tasker(poll_interval=0.05, backoff_scale=0.1)
    engine.load_templates(tmp_path / "registration.yaml")
    # the first call is answered after 1.2 s: the step gives up at 0.45 s, the service still creates
    # the profile
    fleet.billing.set_faults(latency_ms=1200, latency_requests=1)
    context = registration()

    task = engine.run(signed_up(engine, context))

    assert task.status == "complete"
    billing = task.step("setup_billing_profile")
    assert billing.attempts >= 2
    user_id = task.step("create_user_account").results["user_id"]  # type: ignore[index]
    profiles = [
        p for p in fleet.billing.state()["rows"]["billing_profiles"] if p["user_id"] == user_id
    ]
    assert len(profiles) == 1
    assert billing.results is not None and billing.results["profile_id"] == profiles[0]["id"]


def test_a_lost_response_is_retried_without_a_second_welcome_mail(
    make_tasker: Callable[..., Tasker], fleet: ServiceFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var, url in fleet.env().items():
        monkeypatch.setenv(var, url)
    engine = make_tasker(poll_interval=0.05, backoff_scale=0.1)
    engine.load_templates(TEMPLATES)
    # seed 1 draws 0.13 then 0.85: the first call sends the mail and answers 500, the second gets
    # through
    fleet.notification.set_faults(error_rate=0.5, error_after_work=True, seed=1)
    context = registration("pro")

    task = engine.run(signed_up(engine, context))

    assert task.status == "complete"
    assert task.step("send_welcome_sequence").attempts == 2
    first, second = calls(fleet, context["correlation_id"])["notification"]
    assert (first["status"], first["fault"], second["status"], second["replayed"]) == (
        500,
        "error_after_work",
        201,
        1,
    )
    rows = fleet.notification.state()["rows"]
    email = context["user_info"]["email"]
    assert len([s for s in rows["welcome_sequences"] if s["recipient"] == email]) == 1
    kinds = [e["kind"] for e in rows["emails"] if e["recipient"] == email]
    assert sorted(kinds) == ["getting_started", "pro_features", "welcome"]


def test_one_registration_alone_survives_billing_down_longer_than_its_retries(
    make_tasker: Callable[..., Tasker], fleet: ServiceFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outage promise for a quiet night: no other registration opens the circuit, the step runs
    out of its 3 attempts while billing refuses, and it waits; it completes once billing is back."""
    for var, url in fleet.env().items():
        monkeypatch.setenv(var, url)
    engine = make_tasker(poll_interval=0.05, backoff_scale=0.1)
    engine.load_templates(TEMPLATES)
    engine.systems.configure("billing_service", cooldown_seconds=0.2, max_cooldown_seconds=0.4)
    fleet.billing.refuse()
    context = registration()
    task_id = signed_up(engine, context)
    finished: list[Task] = []
    runner = threading.Thread(target=lambda: finished.append(engine.run(task_id)), daemon=True)
    runner.start()

    def waiting_for_billing() -> bool:
        step = engine.get_task(task_id).step("setup_billing_profile")
        return (
            step.status == "waiting_retry"
            and step.last_error is not None
            and "waiting for 'billing_service'" in step.last_error["message"]
        )

    wait_for(waiting_for_billing, 30, "the billing step to wait for billing instead of failing")
    time.sleep(1.0)  # several probes against the dead service
    assert engine.get_task(task_id).status != "error"
    fleet.billing.resume()
    runner.join(30)
    task = finished[0]
    assert task.status == "complete"
    assert task.step("setup_billing_profile").attempts <= 3
    assert user_rows(fleet, context["user_info"]["email"])[0]["status"] == "registration_complete"
    assert (
        len(calls(fleet, context["correlation_id"])["preferences"]) == 1
    )  # never re-run once complete


def test_billing_down_past_max_outage_fails_the_task_and_a_retry_completes_it(
    make_tasker: Callable[..., Tasker], fleet: ServiceFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var, url in fleet.env().items():
        monkeypatch.setenv(var, url)
    engine = make_tasker(poll_interval=0.05, backoff_scale=0.1)
    engine.load_templates(TEMPLATES)
    engine.systems.configure(
        "billing_service", cooldown_seconds=0.1, max_cooldown_seconds=0.2, max_outage_seconds=1.0
    )
    fleet.billing.refuse()
    context = registration()

    task = engine.run(signed_up(engine, context))

    assert task.status == "error"
    billing = task.step("setup_billing_profile")
    assert (billing.status, billing.attempts, billing.retry_limit) == ("error", 3, 3)
    assert billing.last_error is not None
    message = billing.last_error["message"]
    assert "connect error" in message and "Connection refused" in message
    assert "past its max_outage_seconds=1" in message
    # the independent branch finished; the welcome waits for billing
    assert task.step("initialize_preferences").status == "complete"
    assert task.step("send_welcome_sequence").status == "pending"
    assert (task.annotations or {})["failed_service"] == "billing_service"
    assert user_rows(fleet, context["user_info"]["email"])[0]["status"] == "pending"

    fleet.billing.resume()
    engine.retry_task(task.id)
    task = engine.run(task.id)

    assert task.status == "complete"
    assert user_rows(fleet, context["user_info"]["email"])[0]["status"] == "registration_complete"
    assert (
        len(calls(fleet, context["correlation_id"])["preferences"]) == 1
    )  # never re-run once complete


def test_an_invalid_registration_is_refused_before_any_service_call(
    engine: Tasker, fleet: ServiceFleet
) -> None:
    before = sum(len(h.requests()) for h in fleet.handles.values())
    with pytest.raises(ContextValidationError) as info:
        engine.create_task(
            TEMPLATE, {"user_info": {"email": "not-an-email", "name": "X", "plan": "pro"}}
        )
    message = str(info.value)
    assert "$.user_info.email" in message
    assert "billing_info" in message  # a paid plan needs a payment method
    assert sum(len(h.requests()) for h in fleet.handles.values()) == before


# -- the services' contract ------------------------------------------------------------------------
def test_a_repeated_idempotency_key_replays_the_stored_response(fleet: ServiceFleet) -> None:
    body = {"email": f"{uuid.uuid4().hex[:8]}@example.com", "name": "Ada", "plan": "free"}
    key = {"Idempotency-Key": uuid.uuid4().hex, "X-Correlation-ID": "corr-replay"}
    first = httpx.post(f"{fleet.user.url}/users", json=body, headers=key)
    again = httpx.post(f"{fleet.user.url}/users", json=dict(reversed(body.items())), headers=key)
    other = httpx.post(f"{fleet.user.url}/users", json={**body, "name": "Bob"}, headers=key)

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert first.headers["X-Correlation-ID"] == "corr-replay"
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert len(user_rows(fleet, body["email"])) == 1


def test_a_conflicting_create_answers_409_with_the_existing_resource(fleet: ServiceFleet) -> None:
    body = {"email": f"{uuid.uuid4().hex[:8]}@example.com", "name": "Ada", "plan": "pro"}
    created = httpx.post(f"{fleet.user.url}/users", json=body).json()
    conflict = httpx.post(f"{fleet.user.url}/users", json=body)

    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "conflict"
    assert conflict.json()["existing"] == created


@pytest.mark.parametrize(
    ("service", "path", "body", "message"),
    [
        ("user", "/users", {"email": "nope", "name": "A"}, "email: is not a valid email address"),
        (
            "billing",
            "/billing_profiles",
            {"user_id": 1, "email": "a@b.co", "name": "A", "plan": "pro"},
            "payment_method: required for the pro plan",
        ),
        ("preferences", "/preferences", {"user_id": 1, "theme": "pink"}, "theme: Input should be"),
        (
            "notification",
            "/welcome_sequences",
            {"user_id": 1, "recipient": "a@b.co", "name": "A", "plan": "free", "emails": []},
            "emails: List should have",
        ),
    ],
)
def test_invalid_requests_get_422_with_a_message(
    fleet: ServiceFleet, service: str, path: str, body: dict[str, Any], message: str
) -> None:
    response = httpx.post(f"{fleet[service].url}{path}", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_failed"
    assert message in response.json()["error"]["message"]


def test_fault_injection_down_rate_limited_and_refused(fleet: ServiceFleet) -> None:
    url = f"{fleet.preferences.url}/preferences/999999"
    httpx.post(
        f"{fleet.preferences.url}/admin/faults", json={"down": True, "retry_after": 3}
    ).raise_for_status()
    down = httpx.get(url)
    assert (down.status_code, down.headers["Retry-After"]) == (503, "3")

    httpx.delete(f"{fleet.preferences.url}/admin/faults").raise_for_status()
    fleet.preferences.set_faults(rate_limit_requests=1, retry_after=2)
    limited, after = httpx.get(url), httpx.get(url)
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "2")
    assert after.status_code == 404  # no such preferences: the service itself answered

    refused = httpx.post(
        f"{fleet.preferences.url}/admin/faults", json={"down": True, "down_mode": "refuse"}
    )
    assert refused.json()["down_mode"] == "refuse"
    deadline = time.monotonic() + 5
    while (
        fleet.preferences.listening and time.monotonic() < deadline
    ):  # it stops once the call is answered
        time.sleep(0.05)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)
    fleet.preferences.resume()
    assert httpx.get(url).status_code == 404


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"error_rate": 2}, "error_rate: Input should be less than or equal to 1"),
        (
            {"down": True, "down_seconds": 5},
            "give either down (until cleared) or down_seconds, not both",
        ),
        ({"down_mode": "sideways"}, "down_mode: Input should be 'unavailable' or 'refuse'"),
    ],
)
def test_bad_fault_settings_are_refused_with_a_message(
    fleet: ServiceFleet, spec: dict[str, Any], message: str
) -> None:
    response = httpx.post(f"{fleet.billing.url}/admin/faults", json=spec)
    assert response.status_code == 422
    assert message in response.json()["error"]["message"]
    assert not fleet.billing.service.faults.describe()["down"]


# -- the e-mail confirmation (on the test clock) ---------------------------------------------------
def emails_to(fleet: ServiceFleet, email: str) -> list[str]:
    rows = fleet.notification.state()["rows"]["emails"]
    return [r["kind"] for r in rows if r["recipient"] == email]


def test_a_user_who_never_confirms_gets_one_reminder_after_two_days_and_stays_unconfirmed(
    store_url: str, fleet: ServiceFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var, url in fleet.env().items():
        monkeypatch.setenv(var, url)
    context = registration("free")
    email = context["user_info"]["email"]
    with workflow_env(TEMPLATES, database_url=store_url) as env:
        task_id = env.engine.create_task(TEMPLATE, context).id
        env.advance(0)
        waiting = env.engine.get_task(task_id).step("confirm_email")
        assert waiting.status == "waiting_retry" and waiting.run_at == env.now() + timedelta(days=2)
        env.advance(days=1, hours=23)
        assert not [k for k in emails_to(fleet, email) if k.startswith("reminder")]
        env.advance(hours=1)
        task = env.engine.get_task(task_id)
    assert task.status == "complete"
    assert task.step("confirm_email").status == "skipped"
    assert task.step("send_confirmation_reminder").status == "complete"
    assert task.step("update_user_status").status == "skipped"
    assert [k for k in emails_to(fleet, email) if k.startswith("reminder")] == [
        "reminder_confirm_email"
    ]
    assert user_rows(fleet, email)[0]["status"] != "registration_complete"


def test_a_confirmation_a_day_later_completes_the_registration_without_a_reminder(
    store_url: str, fleet: ServiceFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var, url in fleet.env().items():
        monkeypatch.setenv(var, url)
    context = registration("pro")
    email = context["user_info"]["email"]
    with workflow_env(TEMPLATES, database_url=store_url) as env:
        task_id = env.engine.create_task(TEMPLATE, context).id
        env.advance(days=1)
        env.signal(task_id, "email_confirmed", {"confirmed_via": "welcome_link"})
        task = env.engine.get_task(task_id)
    assert task.status == "complete"
    assert task.step("confirm_email").results == {"confirmed_via": "welcome_link"}
    assert task.step("send_confirmation_reminder").status == "skipped"
    assert user_rows(fleet, email)[0]["status"] == "registration_complete"
    assert not [k for k in emails_to(fleet, email) if k.startswith("reminder")]
