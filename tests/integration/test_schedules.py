"""Cron schedules on both stores, on the test clock: declared in YAML or added at run time, each
tick one task however often the timers look and whichever worker fires it, catch-up after
downtime, pause, resume, trigger and remove."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tasker import Tasker
from tasker.domain.errors import NotFoundError, TaskerInputError
from tasker.engine.timers import Timers
from tasker.testing import WorkflowEnv, workflow_env
from tests.fixture_types import WriteTemplate
from tests.integration.support import step, template_yaml

#: A Monday, 06:30 in Berlin (UTC+1 in winter).
START = datetime(2026, 1, 5, 5, 30, tzinfo=UTC)
MORNING = {"name": "morning", "cron": "0 7 * * *", "timezone": "Europe/Berlin"}


@pytest.fixture
def env(store_url: str) -> Iterator[WorkflowEnv]:
    with workflow_env(database_url=store_url, start=START) as env:
        yield env


def load(
    env: WorkflowEnv, write_template: WriteTemplate, schedules: list[dict[str, Any]], **top: Any
) -> str:
    text = template_yaml("report", [step("build")], schedules=schedules, **top)
    (loaded,) = env.engine.load_templates(write_template(text, "report.yaml"))
    return f"{loaded.namespace_name}/{loaded.name}"


def tasks_of(env: WorkflowEnv) -> list[Any]:
    tasks, _ = env.engine.list_tasks(limit=100)
    return sorted(tasks, key=lambda t: t.id)


def test_a_template_schedule_fires_at_7_am_in_its_time_zone_once_per_tick(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    load(env, write_template, [{**MORNING, "context": {"key": key}}])
    (schedule,) = env.engine.schedules.all()
    assert schedule.origin == "template" and schedule.template == "itest/report"
    assert schedule.next_at == datetime(2026, 1, 5, 6, 0, tzinfo=UTC)  # 07:00 Berlin

    env.advance(minutes=29)
    assert tasks_of(env) == []
    env.advance(minutes=1)
    (task,) = tasks_of(env)
    assert task.context == {"key": key} and task.status == "complete"
    assert task.idempotency_key == f"schedule:{schedule.id}:2026-01-05T06:00:00Z"
    env.fire_timers()
    env.fire_timers()  # looking again fires nothing more
    assert len(tasks_of(env)) == 1

    after = env.engine.schedules.get(schedule.id)
    assert after.last_at == datetime(2026, 1, 5, 6, 0, tzinfo=UTC)
    assert after.last_task_id == task.id
    assert after.next_at == datetime(2026, 1, 6, 6, 0, tzinfo=UTC)
    env.advance(days=2)
    assert len(tasks_of(env)) == 3  # Tuesday's and Wednesday's, each at its tick


@pytest.mark.parametrize(("catch_up", "fired"), [("skip", 0), ("once", 1), ("all", 3)])
def test_catch_up_decides_what_happens_to_ticks_missed_while_nothing_ran(
    env: WorkflowEnv, write_template: WriteTemplate, catch_up: str, fired: int
) -> None:
    load(env, write_template, [{**MORNING, "catch_up": catch_up}])
    env.clock.advance(days=2, hours=12)  # three 7 AM ticks pass with no worker looking
    env.fire_timers()
    env.engine.work(until_idle=True)
    assert len(tasks_of(env)) == fired
    (schedule,) = env.engine.schedules.all()
    assert schedule.next_at == datetime(2026, 1, 8, 6, 0, tzinfo=UTC)
    if fired:
        assert schedule.last_at == datetime(2026, 1, 7, 6, 0, tzinfo=UTC)


def test_schedules_are_added_paused_resumed_triggered_and_removed_at_run_time(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(env, write_template, [])
    added = env.engine.schedules.add(
        ref, "hourly", "0 * * * *", context={"key": key}, catch_up="skip"
    )
    assert added.origin == "api" and added.next_at == datetime(2026, 1, 5, 6, 0, tzinfo=UTC)
    with pytest.raises(TaskerInputError, match="already has a schedule named 'hourly'"):
        env.engine.schedules.add(ref, "hourly", "0 * * * *")
    with pytest.raises(TaskerInputError, match="not a cron expression"):
        env.engine.schedules.add(ref, "bad", "every hour")
    with pytest.raises(TaskerInputError, match="unknown time zone"):
        env.engine.schedules.add(ref, "bad", "0 * * * *", timezone="Mars/Olympus")

    env.engine.schedules.pause(added.id)
    env.advance(hours=2)
    assert tasks_of(env) == []
    resumed = env.engine.schedules.resume(added.id)
    assert not resumed.paused and resumed.next_at == datetime(2026, 1, 5, 8, 0, tzinfo=UTC)

    triggered = env.engine.schedules.trigger(added.id)
    assert triggered.context == {"key": key}
    assert env.engine.schedules.get(added.id).next_at == resumed.next_at  # ticks unchanged

    env.engine.schedules.remove(added.id)
    with pytest.raises(NotFoundError):
        env.engine.schedules.get(added.id)
    env.advance(hours=3)
    assert len(tasks_of(env)) == 1  # only the triggered one


def test_reloading_a_template_updates_and_removes_its_schedules_and_keeps_a_pause(
    env: WorkflowEnv, write_template: WriteTemplate
) -> None:
    load(env, write_template, [MORNING, {"name": "evening", "cron": "0 19 * * *"}])
    by_name = {s.name: s for s in env.engine.schedules.all()}
    env.engine.schedules.pause(by_name["morning"].id)
    load(env, write_template, [{**MORNING, "cron": "30 6 * * *"}])
    (morning,) = env.engine.schedules.all()
    assert morning.id == by_name["morning"].id and morning.paused
    assert morning.cron == "30 6 * * *"


def test_a_schedules_context_is_checked_against_the_template_when_added(
    env: WorkflowEnv, write_template: WriteTemplate
) -> None:
    schema = {"type": "object", "required": ["day"], "properties": {"day": {"type": "string"}}}
    ref = load(env, write_template, [], schema=schema)
    with pytest.raises(TaskerInputError, match="day"):
        env.engine.schedules.add(ref, "daily", "0 7 * * *", context={})


def test_two_workers_looking_at_once_fire_each_tick_once(
    env: WorkflowEnv, write_template: WriteTemplate, store_url: str
) -> None:
    """Whoever holds the timers job fires; and should two fire (a lease lost mid-tick), the
    tick's idempotency key makes it one task."""
    load(env, write_template, [{**MORNING, "catch_up": "all"}])
    env.clock.advance(days=4)
    path = write_template(
        template_yaml("report", [step("build")], schedules=[{**MORNING, "catch_up": "all"}]),
        "report.yaml",
    )
    engines = [Tasker(store_url, templates=path) for _ in range(4)]
    try:
        ports = [e.worker().timers for e in engines]
        # Each fires as if it held the job (the race a lost lease allows).
        barrier = threading.Barrier(len(ports))

        def fire(timers: Timers) -> None:
            barrier.wait()
            timers.fire_schedules(env.now())

        threads = [threading.Thread(target=fire, args=(t,)) for t in ports]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        for e in engines:
            e.close()
    keys = [t.idempotency_key for t in tasks_of(env)]
    assert len(keys) == len(set(keys)) == 4


def test_only_one_worker_holds_the_timers_job(env: WorkflowEnv, store_url: str) -> None:
    engines = [Tasker(store_url) for _ in range(3)]
    try:
        timers = [e.worker().timers for e in engines]
        held = [t.run().held for t in timers]
        assert held == [True, False, False]
        timers[0].release()
        assert timers[1].run().held
        env.clock.advance(seconds=3)  # the holder's lease runs out
        assert timers[2].run().held
    finally:
        for e in engines:
            e.close()


def test_a_tick_for_a_template_this_worker_has_not_loaded_is_left_to_others(
    env: WorkflowEnv, write_template: WriteTemplate, store_url: str
) -> None:
    load(env, write_template, [MORNING])
    env.clock.advance(hours=1)
    stranger = Tasker(store_url)
    try:
        assert stranger.worker().timers.fire_schedules(env.now()) == []
    finally:
        stranger.close()
    (schedule,) = env.engine.schedules.all()
    assert schedule.last_at is None  # not moved on: a worker with the template fires it
    env.fire_timers()
    assert len(tasks_of(env)) == 1


def test_the_next_tick_after_daylight_saving_starts_keeps_local_time(
    store_url: str, write_template: WriteTemplate
) -> None:
    start = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)  # the Saturday before clocks go forward
    with workflow_env(database_url=store_url, start=start) as env:
        load(env, write_template, [MORNING])
        env.advance(days=1)
        env.advance(days=1)
        ticks = [t.created_at for t in tasks_of(env)]
    # 07:00 CET is 06:00 UTC; from Sunday 07:00 CEST is 05:00 UTC.
    assert ticks == [
        datetime(2026, 3, 29, 5, 0, tzinfo=UTC),
        datetime(2026, 3, 30, 5, 0, tzinfo=UTC),
    ]
