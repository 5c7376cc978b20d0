"""Two teams' `process_refund` on both stores: namespaces, versions side by side, and a
cross-namespace task.

The simulated ledger, gateway, support desk and outbox (tasker/demos/team_scaling/services.py) are
the witnesses: a refund must reach the gateway exactly once whatever the engine retried.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tasker import ContextValidationError, Task, Tasker, UnknownTemplateError
from tasker.demos.team_scaling import services
from tasker.demos.team_scaling.__main__ import main
from tasker.demos.team_scaling.demo import (
    CUSTOMER_SUCCESS,
    PAYMENTS,
    PAYMENTS_2_0_0,
    PAYMENTS_2_1_0,
    TEMPLATES,
    refund_request,
    seed_world,
)
from tasker.demos.team_scaling.services import Payment

BACKOFF_SCALE = 0.05
STEPS_2_0_0 = [
    "validate_payment_eligibility",
    "process_gateway_refund",
    "update_payment_records",
    "notify_customer",
]
STEPS_2_1_0 = [
    "validate_payment_eligibility",
    "screen_for_fraud",
    "process_gateway_refund",
    "update_payment_records",
    "notify_customer",
]


@pytest.fixture
def world() -> Iterator[services.World]:
    yield seed_world()
    services.reset()


@pytest.fixture
def engine(make_tasker: Callable[..., Tasker], world: services.World) -> Tasker:
    t = make_tasker(backoff_scale=BACKOFF_SCALE)
    t.load_templates(TEMPLATES)
    return t


def names(task: Task) -> list[str]:
    return [s.name for s in task.steps]


def payments_tasks(engine: Tasker) -> list[Task]:
    found, _ = engine.list_tasks(namespace="payments")
    return engine.get_tasks([t.id for t in found])  # with their steps


def test_same_name_in_two_namespaces_are_two_workflows(engine: Tasker) -> None:
    cs = engine.templates.get(CUSTOMER_SUCCESS)
    pay = engine.templates.get(PAYMENTS)
    assert (cs.key, pay.key) == (
        "customer_success/process_refund@1.4.0",
        "payments/process_refund@2.1.0",
    )
    assert [s.name for s in pay.step_templates] == STEPS_2_1_0
    assert cs.step("refund_payment").task == "payments/process_refund@latest"
    with pytest.raises(
        UnknownTemplateError, match=r"known templates: customer_success/process_refund@1\.4\.0"
    ):
        engine.create_task(
            "process_refund", {}
        )  # no namespace means `default`, where neither team lives

    created = engine.create_task(
        PAYMENTS, {"payment_id": "pay_1003", "amount_cents": 100, "reason": "test"}
    )
    request = engine.create_task(CUSTOMER_SUCCESS, refund_request())
    assert [t.id for t in payments_tasks(engine)] == [created.id]
    found, _ = engine.list_tasks(namespace="customer_success")
    assert [t.id for t in found] == [request.id]


def test_unpinned_takes_the_newest_version_and_a_pin_keeps_the_older(engine: Tasker) -> None:
    ctx = {"payment_id": "pay_1003", "amount_cents": 100, "reason": "test"}
    assert engine.create_task(PAYMENTS, ctx).version == "2.1.0"
    older = engine.create_task(PAYMENTS, {**ctx, "amount_cents": 101}, version="2.0.0")
    assert (older.version, names(older)) == ("2.0.0", STEPS_2_0_0)
    assert engine.create_task(f"{PAYMENTS}@2.0.0", {**ctx, "amount_cents": 102}).version == "2.0.0"
    with pytest.raises(
        UnknownTemplateError,
        match=r"payments/process_refund@2\.0\.0, payments/process_refund@2\.1\.0",
    ):
        engine.create_task(PAYMENTS, ctx, version="3.0.0")


def test_a_task_keeps_its_version_through_a_deploy(
    make_tasker: Callable[..., Tasker], world: services.World
) -> None:
    before = make_tasker(backoff_scale=BACKOFF_SCALE)
    before.load_templates(PAYMENTS_2_0_0)
    task = before.create_task(
        PAYMENTS, {"payment_id": "pay_1003", "amount_cents": 2_500, "reason": "duplicate"}
    )
    assert task.version == "2.0.0"
    before.load_templates(PAYMENTS_2_1_0)  # the deploy, in the same process
    assert (
        before.create_task(
            PAYMENTS, {"payment_id": "pay_1002", "amount_cents": 1, "reason": "x"}
        ).version
        == "2.1.0"
    )

    # A worker started after the deploy has only 2.1.0 on disk: it runs the old task from its
    # snapshot.
    after = make_tasker(backoff_scale=BACKOFF_SCALE)
    after.load_templates(PAYMENTS_2_1_0)
    done = after.run(task.id)
    assert (done.status, done.version, names(done)) == ("complete", "2.0.0", STEPS_2_0_0)
    assert after.templates.of_task(task.id).key == "payments/process_refund@2.0.0"
    receipt = done.step("notify_customer").results or {}
    assert receipt["workflow"] == "payments/process_refund@2.0.0"
    # 2.0.0 is a chain: the receipt waited for the ledger (in 2.1.0 the two run side by side).
    receipt_started = done.step("notify_customer").started_at
    ledger_finished = done.step("update_payment_records").finished_at
    assert receipt_started is not None and ledger_finished is not None
    assert receipt_started >= ledger_finished
    payment = world.payment("pay_1003")
    assert payment is not None and payment.refunded_cents == 2_500


def test_a_refund_request_runs_payments_as_a_sub_workflow(
    engine: Tasker, world: services.World
) -> None:
    world.fail_gateway(1)
    request = engine.create_task(CUSTOMER_SUCCESS, refund_request())
    assert engine.create_task(
        CUSTOMER_SUCCESS, refund_request()
    ).deduplicated  # the same request twice is one task
    engine.work(until_idle=True)

    done = engine.get_task(request.id)
    assert done.status == "complete", [(s.name, s.status, s.last_error) for s in done.steps]
    [child] = payments_tasks(engine)
    assert (child.status, child.version, names(child)) == ("complete", "2.1.0", STEPS_2_1_0)
    assert child.context["requested_by"] == "customer_success"
    assert child.context["ticket_id"] == "T-1001"
    assert child.correlation_id == done.correlation_id  # one trace across both teams' workflows

    assert (child.parent_task_id, engine.child_tasks(done.id)) == (done.id, [child.id])
    refund = child.step("process_gateway_refund")
    assert refund.attempts == 2  # the gateway timed out once
    step = done.step("refund_payment")
    assert step.attempts == 1  # waiting is no attempt, and nothing polled
    assert (step.results or {})["process_gateway_refund"] == refund.results
    assert done.step("get_manager_approval").status == "skipped"  # $49.99: under the limit

    assert len(world.refunds) == 1
    payment = world.payment("pay_1001")
    assert payment is not None and payment.refunded_cents == 4_999
    ticket = world.ticket("T-1001")
    assert ticket is not None and ticket.status == "refunded"
    assert sorted(m.sender for m in world.outbox.values() if m.to == "ada@example.com") == [
        "customer_success",
        "payments",
    ]


def test_waiting_holds_no_worker_and_the_payments_task_wakes_the_request(
    make_tasker: Callable[..., Tasker], world: services.World
) -> None:
    """Only customer success runs at first, so the payments task never moves: the request's step
    parks (no worker, no attempt, no poll) and a worker that runs until idle returns. Once the
    payments team's workers run their task, its completion wakes the step, and the request
    finishes."""
    engine = make_tasker(backoff_scale=BACKOFF_SCALE)
    engine.load_templates(TEMPLATES)
    request = engine.create_task(CUSTOMER_SUCCESS, refund_request())
    engine.work(until_idle=True, namespaces=["customer_success"])

    waiting = engine.get_task(request.id)
    [child] = payments_tasks(engine)
    assert child.status == "pending"
    step = waiting.step("refund_payment")
    assert (waiting.status, step.status, step.attempts) == ("in_progress", "waiting_retry", 0)
    assert step.decision == f"waiting for child task {child.id} (payments/process_refund@2.1.0)"
    assert step.run_at is None  # parked: only the child's settling gives it a time
    rows = [t for t in engine.history.step_transitions(request.id) if t["step_id"] == step.id]
    assert [r["to_state"] for r in rows] == ["pending", "ready", "in_progress", "waiting_retry"]

    engine.work(until_idle=True, namespaces=["payments"])
    assert engine.get_task(child.id).status == "complete"
    engine.work(until_idle=True, namespaces=["customer_success"])
    done = engine.get_task(request.id)
    assert done.status == "complete"
    assert done.step("refund_payment").attempts == 1
    assert len(world.refunds) == 1


def test_a_failed_payments_task_fails_the_request_with_its_reason(
    engine: Tasker, world: services.World
) -> None:
    world.add_payment(Payment("pay_2001", "ada@example.com", 100_000, datetime.now(UTC).date()))
    request = engine.create_task(
        CUSTOMER_SUCCESS,
        refund_request(payment_id="pay_2001", amount_cents=60_000, manager_id="mgr-7"),
    )
    engine.work(until_idle=True)
    failed = engine.get_task(request.id)
    [child] = payments_tasks(engine)
    assert child.status == "error"
    screening_error = child.step("screen_for_fraud").last_error
    assert screening_error is not None
    assert screening_error["error_code"] == "MANUAL_REVIEW_REQUIRED"
    step = failed.step("refund_payment")
    assert (failed.status, step.status) == ("error", "error")
    assert step.last_error is not None and step.last_error["class"] == "ChildTaskFailed"
    reason = (
        f"child task {child.id} (payments/process_refund@2.1.0) failed: step 'screen_for_fraud':"
        " refund of $600.00"
    )
    assert reason in step.last_error["message"]
    assert world.refunds == {}

    # The risk team reviews and resolves its step; payments finishes; customer success retries its
    # request.
    engine.resolve_step(child.id, "screen_for_fraud", {"risk": "reviewed", "reviewer": "rita"})
    engine.work(until_idle=True)
    assert engine.get_task(child.id).status == "resolved_manually"
    engine.retry_task(request.id)
    engine.work(until_idle=True)
    done = engine.get_task(request.id)
    assert done.status == "complete"
    assert (done.step("refund_payment").results or {})["screen_for_fraud"]["reviewer"] == "rita"
    assert engine.child_tasks(request.id) == [child.id]  # the retry read the same child
    assert done.step("get_manager_approval").results == {"approved": True, "approved_by": "mgr-7"}
    assert [r.amount_cents for r in world.refunds.values()] == [60_000]


def test_a_large_refund_stops_for_a_manager_before_any_money_moves(
    engine: Tasker, world: services.World
) -> None:
    world.add_payment(Payment("pay_2002", "ada@example.com", 20_000, datetime.now(UTC).date()))
    request = engine.create_task(
        CUSTOMER_SUCCESS, refund_request(amount_cents=15_000, payment_id="pay_2002")
    )
    engine.work(until_idle=True)
    stopped = engine.get_task(request.id)
    approval = stopped.step("get_manager_approval")
    assert (stopped.status, approval.status, approval.attempts) == ("error", "error", 1)
    assert approval.last_error is not None
    assert approval.last_error["error_code"] == "APPROVAL_REQUIRED"
    assert "above the $100.00 auto-approval limit" in approval.last_error["message"]
    assert payments_tasks(engine) == []

    engine.resolve_step(
        request.id, "get_manager_approval", {"approved": True, "approved_by": "mgr-3"}
    )
    engine.work(until_idle=True)
    assert (
        engine.get_task(request.id).status == "resolved_manually"
    )  # a person took part, and it shows
    assert [r.amount_cents for r in world.refunds.values()] == [15_000]


@pytest.mark.parametrize(
    ("overrides", "step", "code"),
    [
        (
            {"purchased_on": (datetime.now(UTC).date() - timedelta(days=40)).isoformat()},
            "check_refund_policy",
            "OUTSIDE_REFUND_WINDOW",
        ),
        ({"reason": "changed_mind"}, "check_refund_policy", "REASON_NOT_COVERED"),
        ({"ticket_id": "T-9999"}, "validate_refund_request", "TICKET_NOT_FOUND"),
        (
            {"customer_email": "mallory@example.com"},
            "validate_refund_request",
            "TICKET_CUSTOMER_MISMATCH",
        ),
    ],
)
def test_requests_the_policy_refuses_never_reach_payments(
    engine: Tasker, overrides: dict[str, str], step: str, code: str
) -> None:
    request = engine.create_task(CUSTOMER_SUCCESS, refund_request(**overrides))
    engine.work(until_idle=True)
    task = engine.get_task(request.id)
    assert (task.status, task.step(step).status, task.step(step).attempts) == ("error", "error", 1)
    error = task.step(step).last_error
    assert error is not None and error["error_code"] == code
    assert payments_tasks(engine) == []


def test_a_malformed_request_is_refused_with_every_path(engine: Tasker) -> None:
    with pytest.raises(ContextValidationError) as caught:
        engine.create_task(
            CUSTOMER_SUCCESS,
            refund_request(
                ticket_id="1001", customer_email="ada", amount_cents=0, purchased_on="last week"
            ),
        )
    text = str(caught.value)
    for path in ("$.ticket_id", "$.customer_email", "$.amount_cents", "$.purchased_on"):
        assert path in text, text


def test_the_payments_version_can_be_pinned_by_deployment(
    make_tasker: Callable[..., Tasker], world: services.World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAYMENTS_REFUND_VERSION", "2.0.0")
    engine = make_tasker(backoff_scale=BACKOFF_SCALE)
    engine.load_templates(TEMPLATES)
    request = engine.create_task(CUSTOMER_SUCCESS, refund_request())
    engine.work(until_idle=True)
    assert engine.get_task(request.id).status == "complete"
    [child] = payments_tasks(engine)
    assert (child.version, names(child)) == ("2.0.0", STEPS_2_0_0)


def test_the_module_entry_point_runs_the_story(
    store_url: str, world: services.World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--database-url", store_url]) == 0
    out = capsys.readouterr().out
    assert (
        "payments/process_refund@2.0.0: complete  (payments refund created before the 2.1.0 deploy)"
        in out
    )
    assert (
        "payments/process_refund@2.1.0: complete  (payments refund run by that request's"
        " refund_payment step)" in out
    )
    assert "ticket T-1001: refunded" in out
    assert "3 refunds issued" in out
