"""docs/testing.md's example, run: a checkout whose payment is retried three times and whose
follow-up e-mail goes out the next morning, tested in milliseconds on the virtual clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tasker.testing import WorkflowEnv, workflow_env
from tests.acceptance.checkout_testing.handlers import Gateway, Mailer

CHECKOUT = Path(__file__).parent / "checkout_testing" / "checkout.yaml"
MONDAY_4PM = datetime(2026, 1, 5, 16, 0, tzinfo=UTC)


@pytest.fixture
def env() -> Iterator[WorkflowEnv]:
    Gateway.failures, Gateway.calls, Gateway.charged, Mailer.sent = 0, [], {}, []
    with workflow_env(templates=CHECKOUT, start=MONDAY_4PM) as env:
        yield env


def test_the_payment_is_retried_three_times_and_the_email_goes_out_next_morning(
    env: WorkflowEnv,
) -> None:
    Gateway.failures = 3  # the gateway times out three times, then charges
    task = env.engine.create_task("shop/checkout", {"order_id": "o-1", "email": "ada@example.com"})

    done = env.run(task.id)  # the backoffs and the night take no real time

    assert done.status == "complete"
    charge = done.step("charge")
    assert charge.attempts == 4 and charge.results == {"charge_id": "ch_1"}
    # 30 s, 60 s, then 120 s of backoff (with 10% jitter) between the attempts, in order:
    gaps = [(b - a).total_seconds() for a, b in zip(Gateway.calls, Gateway.calls[1:], strict=False)]
    assert [round(g / 30) for g in gaps] == [1, 2, 4]
    assert Mailer.sent == [("ada@example.com", datetime(2026, 1, 6, 9, 0, tzinfo=UTC))]
    assert env.now() == datetime(2026, 1, 6, 9, 0, tzinfo=UTC)


def test_nothing_is_sent_before_the_morning(env: WorkflowEnv) -> None:
    task = env.engine.create_task("shop/checkout", {"order_id": "o-2", "email": "bo@example.com"})
    env.advance(0)  # runs what is due now: the charge
    assert env.engine.get_task(task.id).step("follow_up").status == "waiting_retry"
    env.advance(hours=16, minutes=59)  # 08:59 the next day
    assert Mailer.sent == []
    env.advance(minutes=1)
    assert Mailer.sent == [("bo@example.com", MONDAY_4PM + timedelta(hours=17))]
