"""Fault test: SIGKILL the worker that holds the timers job while it fires a schedule's ticks.

A schedule an hour behind (`catch_up: all`) makes its holder create sixty tasks, one per missed
minute, then move the schedule on once. The test kills the holder after it created some of them
and before it moved the schedule, with a second worker running: that one takes the job when the
dead holder's lease runs out, fires the same ticks again and finds the tasks already made (their
idempotency key is the schedule and the tick). Every tick has exactly one task: none missed, none
doubled, and the schedule's next tick is in the future.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from tasker import Tasker
from tasker.domain.schedules import next_tick, tick_key
from tests.chaos.support import HANDLERS, Fleet, rows, scalar, scratch_engine, wait_for
from tests.fixture_types import TemplateFile

MINUTES = 60

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


@pytest.mark.timeout(240)
def test_a_holder_killed_mid_tick_leaves_each_tick_with_exactly_one_task(
    chaos_url: str, engine: Tasker, template_file: TemplateFile, tmp_path: Path
) -> None:
    path = template_file(
        "minutely",
        [{"name": "work", "handler_class": f"{HANDLERS}:Sleep", "handler_config": {"sleep": 0}}],
        schedules=[{"name": "every_minute", "cron": "* * * * *", "catch_up": "all"}],
    )
    engine.load_templates(path)  # syncs the schedule
    (schedule,) = engine.schedules.all()
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=MINUTES - 1)
    with scratch_engine(chaos_url) as db:
        with db.begin() as conn:  # as if no worker had run for an hour
            conn.execute(
                sa.text("update tasker_schedules set next_at = :at where id = :id"),
                {"at": start, "id": schedule.id},
            )
        with Fleet(chaos_url, path, tmp_path / "logs", lease_seconds=2) as fleet:
            first = fleet.spawn()
            first_id = first.wait_started()
            holder = wait_for(
                lambda: scalar(db, "select holder from tasker_jobs where name = 'timers'"),
                30,
                "a worker to take the timers job",
            )
            assert holder == first_id
            wait_for(
                lambda: scalar(db, "select count(*) from tasker_tasks") >= 10 or None,
                30,
                "the holder to fire some ticks",
            )
            fleet.kill(first)
            moved = scalar(
                db, "select next_at from tasker_schedules where id = :id", id=schedule.id
            )
            assert moved == start, "the holder moved the schedule before it was killed"
            fired_before = scalar(db, "select count(*) from tasker_tasks")
            assert 10 <= fired_before < MINUTES

            second = fleet.spawn()
            second.wait_started()
            wait_for(
                lambda: (
                    scalar(
                        db, "select next_at from tasker_schedules where id = :id", id=schedule.id
                    )
                    > datetime.now(UTC) - timedelta(seconds=1)
                    or None
                ),
                60,
                "the second worker to take the job and fire the ticks",
            )
            final_next = scalar(
                db, "select next_at from tasker_schedules where id = :id", id=schedule.id
            )
            keys = [
                r.idempotency_key
                for r in rows(db, "select idempotency_key from tasker_tasks order by id")
            ]
    ticks = []
    tick = start
    while tick < final_next:
        ticks.append(tick)
        tick = next_tick("* * * * *", "UTC", tick)
    assert len(keys) == len(set(keys)), "a tick fired twice"
    assert sorted(keys) == sorted(tick_key(schedule.id, t) for t in ticks), "a tick was missed"
    assert len(ticks) >= MINUTES


@pytest.mark.timeout(240)
def test_an_every_second_schedule_keeps_one_task_per_tick_while_holders_are_killed(
    chaos_url: str, engine: Tasker, template_file: TemplateFile, tmp_path: Path
) -> None:
    """Three workers; every three seconds the one holding the timers job is killed and a new one
    started, for more than twenty ticks of a schedule that fires every second (the default
    `catch_up: once`: a tick a few seconds late is on time, not missed)."""
    path = template_file(
        "secondly",
        [{"name": "work", "handler_class": f"{HANDLERS}:Sleep", "handler_config": {"sleep": 0}}],
        schedules=[{"name": "every_second", "cron": "* * * * * *"}],
    )
    engine.load_templates(path)
    (schedule,) = engine.schedules.all()
    kills = 0
    with (
        scratch_engine(chaos_url) as db,
        Fleet(chaos_url, path, tmp_path / "logs", lease_seconds=2) as fleet,
    ):
        workers = [fleet.spawn() for _ in range(3)]
        ids = [w.wait_started() for w in workers]
        until = time.monotonic() + 25
        while time.monotonic() < until:
            time.sleep(3)
            holder = scalar(db, "select holder from tasker_jobs where name = 'timers'")
            if holder not in ids:
                continue
            victim = workers[ids.index(holder)]
            fleet.kill(victim)
            kills += 1
            fresh = fleet.spawn()
            workers[ids.index(holder)] = fresh
            ids[ids.index(holder)] = fresh.wait_started()
        engine.schedules.pause(schedule.id)
        time.sleep(2)  # a look that read the schedule before the pause may still fire
        keys = [
            r.idempotency_key
            for r in rows(db, "select idempotency_key from tasker_tasks order by id")
        ]
    assert kills >= 5, fleet.logs()
    ticks = sorted(_tick_of(k) for k in keys)
    assert len(ticks) == len(set(ticks)) >= 20
    seconds = int((ticks[-1] - ticks[0]).total_seconds())
    missing = {ticks[0] + timedelta(seconds=i) for i in range(seconds + 1)} - set(ticks)
    assert not missing, f"{len(missing)} ticks never fired: {sorted(missing)[:5]}"


def _tick_of(key: str) -> datetime:
    """The tick of a schedule task's idempotency key, `schedule:<id>:<UTC time>Z`."""
    return datetime.fromisoformat(key.split(":", 2)[2].removesuffix("Z")).replace(tzinfo=UTC)
