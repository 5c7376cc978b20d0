"""Durable waits and signals on both stores, on the test clock (`tasker.testing`): a sleeping or
waiting step holds no worker slot, lease or attempt; signals are kept, de-duplicated, refused when
they cannot be delivered, and wake exactly the steps waiting for them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from tasker.domain.errors import NotFoundError, OperationError, TaskerInputError
from tasker.testing import WorkflowEnv, workflow_env
from tests.fixture_types import WriteTemplate
from tests.integration import handlers as h
from tests.integration.support import step, step_history, template_yaml, to_states


@pytest.fixture
def env(store_url: str) -> Iterator[WorkflowEnv]:
    with workflow_env(database_url=store_url) as env:
        yield env


def load(
    env: WorkflowEnv, write_template: WriteTemplate, name: str, steps: list[dict[str, Any]]
) -> str:
    path = write_template(template_yaml(name, steps), f"{name}.yaml")
    (loaded,) = env.engine.load_templates(path)
    return f"{loaded.namespace_name}/{loaded.name}"


def waiter(name: str, after: str | None = None, **config: Any) -> dict[str, Any]:
    extra: dict[str, Any] = {"signals": [config["signal"]]} if config.get("signal") else {}
    return step(name, "Waiter", after=after, handler_config=config, **extra)


# -- sleep -----------------------------------------------------------------------------------------
def test_a_sleep_step_completes_when_its_sleep_is_over_and_holds_nothing_meanwhile(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(
        env, write_template, "nap", [{"name": "nap", "sleep": "PT1H"}, step("go", after="nap")]
    )
    start = env.now()
    task = env.engine.create_task(ref, {"key": key})
    env.advance(0)

    nap = env.engine.get_task(task.id).step("nap")
    assert nap.status == "waiting_retry" and nap.attempts == 0  # parked: no attempt spent
    assert nap.run_at == start + timedelta(hours=1)
    assert nap.decision == f"sleeping until {(start + timedelta(hours=1)).isoformat()}"
    env.advance(minutes=59)
    assert env.engine.get_task(task.id).status == "in_progress"
    env.advance(minutes=1)

    done = env.engine.get_task(task.id)
    assert done.status == "complete"
    nap = done.step("nap")
    assert nap.attempts == 1 and nap.results == {
        "slept_until": (start + timedelta(hours=1)).isoformat()
    }
    assert nap.decision == f"slept until {(start + timedelta(hours=1)).isoformat()}"
    assert to_states(step_history(env.engine, task.id, "nap")) == [
        "ready",
        "in_progress",
        "waiting_retry",
        "in_progress",
        "complete",
    ]
    assert [c["step"] for c in h.calls(key)] == ["go"]


def test_the_event_log_names_a_park_step_waiting_and_a_retry_step_retry_scheduled(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(
        env,
        write_template,
        "nap_log",
        [
            {"name": "nap", "sleep": "PT1H"},
            step("flaky", after="nap", handler_config={"fail": ["retryable"]}),
        ],
    )
    task = env.engine.create_task(ref, {"key": key})
    assert env.run(task.id).status == "complete"
    page = env.engine.history.read_events(task_id=task.id)
    by_step = {
        name: [e["event"] for e in page.events if e["step"] == name] for name in ("nap", "flaky")
    }
    assert by_step["nap"] == [
        "step.ready",
        "step.started",
        "step.waiting",  # parked for its sleep: no error, no attempt spent
        "step.started",
        "step.completed",
    ]
    assert "step.retry_scheduled" in by_step["flaky"] and "step.waiting" not in by_step["flaky"]
    waits = env.engine.history.read_events(task_id=task.id, names=["step.waiting"]).events
    assert [e["step"] for e in waits] == ["nap"]


@pytest.mark.parametrize(("sleep", "seconds"), [("context.wait", 90), ("2m", 120), (5, 5)])
def test_a_sleep_is_seconds_a_duration_or_an_expression(
    env: WorkflowEnv, write_template: WriteTemplate, key: str, sleep: Any, seconds: int
) -> None:
    ref = load(env, write_template, "naps", [{"name": "nap", "sleep": sleep}])
    start = env.now()
    done = env.run(env.engine.create_task(ref, {"key": key, "wait": seconds}).id)
    assert done.status == "complete"
    assert env.now() == start + timedelta(seconds=seconds)


def test_a_sleep_expression_that_fails_fails_its_step_saying_why(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(env, write_template, "badnap", [{"name": "nap", "sleep": "context.nope"}])
    done = env.run(env.engine.create_task(ref, {"key": key}).id)
    assert done.status == "error"
    error = done.step("nap").last_error
    assert error is not None and error["class"] == "WaitFailed"
    assert "context.nope" in error["message"]


def test_a_handler_sleeps_and_is_called_again_with_its_state(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(env, write_template, "hnap", [waiter("work", sleep_for=300)])
    start = env.now()
    done = env.run(env.engine.create_task(ref, {"key": key}).id)

    assert done.status == "complete" and env.now() == start + timedelta(seconds=300)
    work = done.step("work")
    assert work.attempts == 1
    assert work.results == {"state": {"slept": 300}, "payload": None, "timed_out": False}
    assert [c["state"] for c in h.calls(key, "work")] == [None, {"slept": 300}]


# -- wait_for and signals --------------------------------------------------------------------------
def test_a_wait_for_step_completes_with_the_signal_payload(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(
        env,
        write_template,
        "confirm",
        [{"name": "confirm", "wait_for": "email_confirmed"}, step("activate", after="confirm")],
    )
    task = env.engine.create_task(ref, {"key": key})
    env.advance(0)
    waiting = env.engine.get_task(task.id).step("confirm")
    assert waiting.status == "waiting_retry" and waiting.run_at is None  # no timeout: no run_at
    assert waiting.decision == "waiting for signal 'email_confirmed'"
    assert env.run(task.id).status == "in_progress"  # nothing to run until the signal

    sent = env.engine.signal(task.id, "email_confirmed", {"at": "09:12"})
    assert sent.woke == (waiting.id,) and not sent.deduplicated
    env.advance(0)

    done = env.engine.get_task(task.id)
    assert done.status == "complete"
    assert done.step("confirm").results == {"at": "09:12"}
    assert done.step("confirm").attempts == 1
    assert done.step("confirm").decision == "signal 'email_confirmed' received"
    (activate,) = h.calls(key, "activate")
    assert activate["results"]["confirm"] == {"at": "09:12"}


def test_a_signal_sent_before_its_step_waits_is_kept(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(
        env,
        write_template,
        "early",
        [step("first"), {"name": "confirm", "wait_for": "ok", "depends_on_step": "first"}],
    )
    task = env.engine.create_task(ref, {"key": key})
    sent = env.engine.signal(task.id, "ok", "yes")
    assert sent.woke == ()  # nobody waits yet
    done = env.run(task.id)
    assert done.status == "complete"
    assert done.step("confirm").results == {"payload": "yes"}
    # It never parked: the signal was there when it first ran.
    assert "waiting_retry" not in to_states(step_history(env.engine, task.id, "confirm"))


def test_a_repeated_idempotency_key_is_one_signal(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(env, write_template, "dedup", [{"name": "confirm", "wait_for": "ok"}])
    task = env.engine.create_task(ref, {"key": key})
    first = env.engine.signal(task.id, "ok", {"n": 1}, idempotency_key="webhook-7")
    again = env.engine.signal(task.id, "ok", {"n": 2}, idempotency_key="webhook-7")
    assert again.deduplicated and again.id == first.id and again.payload == {"n": 1}
    assert [s.id for s in env.engine.signals.of_task(task.id)] == [first.id]
    assert env.run(task.id).step("confirm").results == {"n": 1}


def test_signals_that_cannot_be_delivered_are_refused_saying_why(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(env, write_template, "refuse", [{"name": "confirm", "wait_for": "ok"}])
    task = env.engine.create_task(ref, {"key": key})
    with pytest.raises(TaskerInputError, match=r"does not wait for a signal named 'nope'.*ok"):
        env.engine.signal(task.id, "nope")
    with pytest.raises(TaskerInputError, match="signal name"):
        env.engine.signal(task.id, "bad name!")
    with pytest.raises(TaskerInputError, match="cannot be stored"):
        env.engine.signal(task.id, "ok", {"f": float("nan")})
    with pytest.raises(NotFoundError, match="no task with id 999999"):
        env.engine.signal(999999, "ok")
    env.engine.signal(task.id, "ok", idempotency_key="k")
    env.run(task.id)
    with pytest.raises(OperationError, match="is complete"):
        env.engine.signal(task.id, "ok")
    # A repeat of a signal that was delivered is still answered (a webhook retried late).
    assert env.engine.signal(task.id, "ok", idempotency_key="k").deduplicated


@pytest.mark.parametrize(
    ("on_timeout", "task_status", "wait_status", "after_status"),
    [
        ("error", "error", "error", "pending"),
        ("skip", "complete", "skipped", "skipped"),
        ("continue", "complete", "complete", "complete"),
    ],
)
def test_a_wait_that_times_out_does_what_on_timeout_says(
    env: WorkflowEnv,
    write_template: WriteTemplate,
    key: str,
    on_timeout: str,
    task_status: str,
    wait_status: str,
    after_status: str,
) -> None:
    ref = load(
        env,
        write_template,
        f"timeout_{on_timeout}",
        [
            {
                "name": "confirm",
                "wait_for": "ok",
                "timeout_seconds": "1d",
                "on_timeout": on_timeout,
            },
            step("after", after="confirm"),
        ],
    )
    start = env.now()
    done = env.run(env.engine.create_task(ref, {"key": key}).id)
    assert env.now() == start + timedelta(days=1)
    assert done.status == task_status
    confirm = done.step("confirm")
    assert (confirm.status, done.step("after").status) == (wait_status, after_status)
    assert confirm.decision is not None and "timed out" in confirm.decision
    if on_timeout == "error":
        assert confirm.last_error is not None and confirm.last_error["class"] == "SignalTimeout"
    if on_timeout == "continue":
        assert confirm.results == {"timed_out": True}


def test_a_signal_before_the_timeout_completes_the_wait(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(
        env,
        write_template,
        "intime",
        [{"name": "confirm", "wait_for": "ok", "timeout_seconds": 3600}],
    )
    task = env.engine.create_task(ref, {"key": key})
    env.advance(minutes=30)
    env.signal(task.id, "ok", {"by": "mail"})
    done = env.engine.get_task(task.id)
    assert done.status == "complete" and done.step("confirm").results == {"by": "mail"}


def test_a_handler_waits_for_a_signal_and_resumes_with_its_state(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(env, write_template, "approve", [waiter("approve", signal="approval")])
    task = env.engine.create_task(ref, {"key": key})
    env.advance(0)
    assert env.engine.get_task(task.id).step("approve").status == "waiting_retry"
    env.signal(task.id, "approval", {"by": "ana"})

    done = env.engine.get_task(task.id)
    approve = done.step("approve")
    assert done.status == "complete" and approve.attempts == 1
    assert approve.results == {"state": {"sent": 1}, "payload": {"by": "ana"}, "timed_out": False}
    assert [c["state"] for c in h.calls(key, "approve")] == [None, {"sent": 1}]


def test_a_handler_wait_times_out_and_the_handler_is_told(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(env, write_template, "approve_t", [waiter("approve", signal="ok", timeout=600)])
    done = env.run(env.engine.create_task(ref, {"key": key}).id)
    assert done.step("approve").results == {
        "state": {"sent": 1},
        "payload": None,
        "timed_out": True,
    }


def test_a_handler_that_waits_for_an_undeclared_signal_fails_saying_so(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(
        env,
        write_template,
        "undeclared",
        [step("w", "Waiter", handler_config={"signal": "nope"}, default_retry_limit=1)],
    )
    done = env.run(env.engine.create_task(ref, {"key": key}).id)
    error = done.step("w").last_error
    assert done.status == "error" and error is not None
    assert error["class"] == "UndeclaredSignalError" and "signals:" in error["message"]


def test_a_signal_sent_while_its_step_runs_wakes_it_when_it_parks(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    """The race the store closes: the signal commits while the handler still runs (it woke
    nothing), then the handler parks for it; the park sees the signal and the step resumes."""
    ref = load(env, write_template, "race", [waiter("approve", signal="approval", gate=True)])
    task = env.engine.create_task(ref, {"key": key})
    worker = threading.Thread(target=env.engine.work, kwargs={"until_idle": True})
    worker.start()
    assert h.started(key).wait(10)
    sent = env.engine.signal(task.id, "approval", {"late": False})
    assert sent.woke == ()  # the step is still running
    h.gate(key).set()
    worker.join(20)
    assert not worker.is_alive()

    done = env.engine.get_task(task.id)
    assert done.status == "complete"
    results = done.step("approve").results
    assert results is not None and results["payload"] == {"late": False}


def test_a_signal_is_in_the_durable_event_log(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(env, write_template, "logged", [{"name": "confirm", "wait_for": "ok"}])
    task = env.engine.create_task(ref, {"key": key})
    sent = env.engine.signal(task.id, "ok", {"x": 1})
    events = env.engine.history.read_events(task_id=task.id).events
    received = [e for e in events if e["event"] == "signal.received"]
    assert len(received) == 1
    assert received[0]["data"]["signal_id"] == sent.id
    assert received[0]["data"]["payload"] == {"x": 1}
