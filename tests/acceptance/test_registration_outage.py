"""`tasker demo registration-outage` tells the microservices story truthfully, with small numbers.

BillingService is really down (its port refuses connections) while the registrations are submitted;
the figures come from the services' own SQLite files and from the engine's durable event log. The
assertions are the story's promises: every registration completes by itself soon after billing is
back, nothing is duplicated, no step exceeds its retry limit, nobody intervenes; the naive
coordinator leaves every user half-registered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from tasker import Tasker
from tasker.cli.demo import demo
from tasker.demos.microservices.demo import (
    TEMPLATE,
    TEMPLATES,
    _environment,
    generate_registrations,
)
from tasker.demos.microservices.services.billing import REFUSED_PAYMENT_METHOD
from tasker.demos.microservices.services.runner import ServiceFleet

REGISTRATIONS, OUTAGE = 8, 2.5


def run(*args: str) -> Result:
    return CliRunner().invoke(demo, ["registration-outage", *args], catch_exceptions=False)


def run_json(*args: str) -> dict[str, Any]:
    result = run(
        "--registrations", str(REGISTRATIONS), "--outage-seconds", str(OUTAGE), "--json", *args
    )
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def assert_story(result: dict[str, Any]) -> None:
    engine, naive = result["engine"], result["naive"]
    assert engine["registrations"] == engine["completed"] == REGISTRATIONS
    assert engine["waiting_at_recovery"] == REGISTRATIONS  # all of them waited for billing
    assert 0 <= engine["recovery_to_last_completion_seconds"] <= 10
    assert engine["manual_interventions"] == 0
    assert engine["steps_over_retry_limit"] == 0
    for key in (
        "duplicate_users",
        "duplicate_billing_profiles",
        "duplicate_preferences",
        "duplicate_emails",
        "users_without_billing",
        "users_without_preferences",
        "users_without_welcome",
        "users_not_registered",
    ):
        assert engine[key] == 0, key
    assert engine["users"] == engine["users_registered"] == REGISTRATIONS
    billing = engine["attempts"]["setup_billing_profile"]
    assert (
        2 <= billing["max"] <= billing["retry_limit"] == 3
    )  # failed during the outage, then succeeded
    assert engine["circuit_opened"] >= 1
    assert engine["retries"] > 0

    texts = [entry["text"] for entry in engine["timeline"]]
    order = [
        "BillingService goes down",
        "BillingService failure detected",
        "circuit billing_service opened",
        f"{REGISTRATIONS} user registrations automatically queued",
        "BillingService healthy again",
        "circuit billing_service closed",
        f"All {REGISTRATIONS} of {REGISTRATIONS} registrations completed",
        "Zero manual interventions",
    ]
    positions = [
        next(i for i, text in enumerate(texts) if text.startswith(prefix)) for prefix in order
    ]
    assert positions == sorted(positions), texts
    offsets = [entry["offset_seconds"] for entry in engine["timeline"]]
    assert offsets == sorted(offsets)

    assert naive["registrations"] == naive["failed"] == REGISTRATIONS
    assert naive["failed_by_step"] == {"setup_billing_profile": REGISTRATIONS}
    assert (
        naive["users"]
        == naive["users_without_billing"]
        == naive["users_without_preferences"]
        == REGISTRATIONS
    )
    assert naive["users_without_welcome"] == naive["manual_interventions"] == REGISTRATIONS
    assert naive["seed"] == engine["seed"]


def test_registrations_wait_out_the_outage_and_finish_by_themselves(store_url: str) -> None:
    assert_story(run_json("--database-url", store_url, "--workers", "0", "--seed", "7"))


def test_one_registration_alone_waits_out_an_outage_longer_than_its_retries() -> None:
    """A quiet night: no other registration helps open the circuit. Billing refuses for longer than
    the step's three attempts take, yet the registration completes by itself once billing is
    back."""
    result = run(
        "--registrations", "1", "--outage-seconds", "4", "--workers", "0", "--seed", "5", "--json"
    )
    assert result.exit_code == 0, result.output
    engine = json.loads(result.stdout)["engine"]
    assert engine["registrations"] == engine["completed"] == 1 and engine["failed"] == 0
    assert engine["manual_interventions"] == 0 and engine["steps_over_retry_limit"] == 0
    assert (
        engine["attempts"]["setup_billing_profile"]["max"] == 3
    )  # its budget was spent, and it waited
    assert 0 <= engine["recovery_to_last_completion_seconds"] <= 10


@pytest.mark.slow
def test_worker_processes_share_the_circuit_and_the_event_log() -> None:
    result = run_json("--workers", "2", "--concurrency", "4", "--outage-mode", "unavailable")
    assert_story(result)
    assert result["engine"]["workers"] == 2
    assert (
        result["engine"]["timeline"][0]["text"]
        == "BillingService goes down (503 Service Unavailable)"
    )


def test_the_report_shows_the_timeline_and_both_tables() -> None:
    result = run("--registrations", "4", "--outage-seconds", "1.5", "--workers", "0", "--seed", "3")

    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in (
        "Timeline",
        "BillingService goes down (connection refused)",
        "BillingService healthy again",
        "All 4 of 4 registrations completed",
        "Naive coordinator (no engine)",
        "Tasker workflow",
        "users without billing",
        "recovery to last completion (s)",
        "attempts setup_billing_profile",
        "Naive: 4 of 4 registrations failed",
        "Tasker: 4 of 4 completed by themselves",
    ):
        assert text in out, text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--registrations", "0"], "--registrations"),
        (["--outage-seconds", "0"], "--outage-seconds"),
        (["--outage-mode", "sideways"], "--outage-mode"),
        (["--database-url", "mysql://nope"], "not a store URL"),
    ],
)
def test_bad_options_are_refused_with_one_line(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_customer_billing_refuses_for_good_is_left_with_no_active_account(
    tmp_path: Path,
) -> None:
    # The card network refuses the payment method: billing answers 402, the step fails for good,
    # and the account the first step created is suspended by its compensation.
    (context,) = generate_registrations(1, seed=7)
    context["user_info"]["plan"] = "pro"
    context["billing_info"] = {"payment_method": f"{REFUSED_PAYMENT_METHOD}_visa"}
    with ServiceFleet(tmp_path / "services") as fleet, _environment(fleet.env()):
        with Tasker(f"sqlite:///{tmp_path / 'tasker.db'}", migrate=True) as tasker:
            tasker.load_templates(TEMPLATES)
            task = tasker.run(tasker.create_task(TEMPLATE, context).id)  # fails before the wait
            assert task.status == "compensated", [(s.name, str(s.status)) for s in task.steps]
            billing = task.step("setup_billing_profile")
            assert billing.last_error is not None and "402" in str(billing.last_error)
            undo = task.step("undo:create_user_account")
            assert undo.status == "complete"
            user_id = (task.step("create_user_account").results or {})["user_id"]
        user = httpx.get(f"{fleet.env()['USER_SERVICE_URL']}/users/{user_id}").json()
    assert user["status"] == "suspended"  # no active user without billing
