"""Automatic retention on both stores, on the test clock: the housekeeping job deletes per template
and status what is past its retention (a template's own beats the default, `never` keeps), never an
unfinished or compensating task, archives first (file or table, read back exactly) and deletes
nothing when the archive fails; one worker at a time holds the job; a pass racing an operator's
retry leaves the retried task alone; worker rows long unseen go; health and `tasker retention`
show it all."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from tasker.api.app import create_app
from tasker.cli.main import cli
from tasker.domain.errors import NotFoundError
from tasker.domain.hooks import TasksPurged, WorkerHooks
from tasker.domain.retention import HousekeepingConfig, PurgePass, RetentionPolicy
from tasker.engine import clock
from tasker.engine.housekeeping_job import HousekeepingJob
from tasker.engine.retention import JOB
from tasker.events.bus import EventBus
from tasker.observability.metrics import EngineMetrics, MetricsHooks
from tasker.settings import Settings
from tasker.store import archive as archive_store
from tasker.store import jobs, operations
from tasker.store import purge as purge_store
from tasker.store import workers as worker_store
from tasker.store.journal import Journal
from tasker.testing import WorkflowEnv, workflow_env
from tests.fixture_types import WriteTemplate
from tests.integration.support import step, template_yaml

DEFAULT = RetentionPolicy.parse({"complete": "30d", "error": "10d", "cancelled": "5d"})
FAILS: dict[str, Any] = {"handler_config": {"always_fail": "permanent"}}


@pytest.fixture
def env(store_url: str) -> Iterator[WorkflowEnv]:
    with workflow_env(database_url=store_url) as env:
        yield env


def load(
    env: WorkflowEnv,
    write_template: WriteTemplate,
    name: str,
    *,
    retention: dict[str, Any] | None = None,
    version: str = "1.0.0",
    failing: bool = False,
) -> str:
    top: dict[str, Any] = {"version": version}
    if retention is not None:
        top["retention"] = retention
    steps = [step("a", handler_config=FAILS["handler_config"])] if failing else [step("a")]
    text = template_yaml(name, steps, **top)
    (loaded,) = env.engine.load_templates(write_template(text, f"{name}-{version}.yaml"))
    return f"{loaded.namespace_name}/{loaded.name}"


def waiting(env: WorkflowEnv, write_template: WriteTemplate) -> str:
    """A template whose tasks wait for a signal (unfinished until it comes)."""
    steps = [
        step("a"),
        {"name": "w", "wait_for": "go", "depends_on_step": "a"},
        step("b", after="w"),
    ]
    text = template_yaml("waits", steps)
    (loaded,) = env.engine.load_templates(write_template(text, "waits.yaml"))
    return f"{loaded.namespace_name}/{loaded.name}"


def job(
    env: WorkflowEnv,
    worker: str = "w1",
    *,
    default: RetentionPolicy = DEFAULT,
    hooks: list[Any] | None = None,
    bus: EventBus | None = None,
    **config: Any,
) -> HousekeepingJob:
    return HousekeepingJob(
        env.engine.db,
        worker,
        bus or env.engine.bus,
        hooks or [],
        HousekeepingConfig(default=default, **config),
    )


def existing(env: WorkflowEnv, ids: list[int]) -> set[int]:
    with env.engine.db.read() as conn:
        found = conn.execute(sa.text("select id from tasker_tasks")).scalars()
        return {int(i) for i in found} & set(ids)


def test_the_job_deletes_per_template_and_status_what_is_past_its_retention(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    plain = load(env, write_template, "plain")
    failing = load(env, write_template, "failing", failing=True)
    keeper = load(env, write_template, "keeper", retention={"complete": "90d", "error": "never"})
    keeper_fails = load(
        env, write_template, "keeper_fails", retention={"error": "never"}, failing=True
    )
    waits = waiting(env, write_template)
    ctx = {"key": key}
    done = [env.engine.create_task(plain, ctx).id for _ in range(2)]
    failed = env.engine.create_task(failing, ctx).id
    cancelled = env.engine.create_task(plain, ctx).id
    env.engine.cancel_task(cancelled)
    kept = env.engine.create_task(keeper, ctx).id
    kept_error = env.engine.create_task(keeper_fails, ctx).id
    running = env.engine.create_task(waits, ctx).id
    compensating = env.engine.create_task(waits, ctx).id
    env.advance(0)
    with env.engine.db.write() as conn:  # a compensating task that finished once, long ago
        conn.execute(
            sa.text(
                "update tasker_tasks set status = 'compensating', finished_at = :at where id = :id"
            ),
            {"at": env.now(), "id": compensating},
        )
    env.advance(days=20)
    recent = env.engine.create_task(plain, ctx).id
    env.advance(0)
    assert env.engine.get_task(failed).status == "error"
    assert env.engine.get_task(kept_error).status == "error"
    env.advance(days=20)  # 40 days after the first ones

    metrics = EngineMetrics(CollectorRegistry())
    heard: list[tuple[str, dict[str, Any]]] = []
    env.engine.bus.subscribe(lambda e: heard.append((e.name, e.payload)), "tasks.*")
    first = job(env, hooks=[MetricsHooks(metrics)]).run()

    assert first is not None and first.complete and first.error is None
    assert dict(first.deleted) == {"cancelled": 1, "complete": 2, "error": 1}
    ids = [*done, failed, cancelled, kept, kept_error, running, compensating, recent]
    assert existing(env, ids) == {kept, kept_error, running, compensating, recent}
    assert dict(first.templates) == {
        "itest/keeper": {"complete": "90d", "error": "never"},
        "itest/keeper_fails": {"error": "never"},
    }
    sample = metrics.registry.get_sample_value
    assert sample("tasker_tasks_purged_total", {"namespace": "itest", "status": "complete"}) == 2
    assert sample("tasker_tasks_purged_total", {"namespace": "itest", "status": "error"}) == 1
    assert heard == [
        (
            "tasks.purged",
            {
                "deleted": {"cancelled": 1, "complete": 2, "error": 1},
                "total": 4,
                "archived": 0,
                "archive": None,
                "worker": "w1",
                "trigger": "retention",
            },
        )
    ]

    env.advance(days=60)  # 100 days: past the keeper's 90, the recent one's 30
    second = job(env).run()
    assert second is not None and dict(second.deleted) == {"complete": 2}
    assert existing(env, ids) == {kept_error, running, compensating}
    assert env.engine.get_task(running).status == "in_progress"


def test_the_newest_version_of_a_template_speaks_for_all_its_tasks(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    old = load(env, write_template, "report", version="1.0.0")
    first = env.engine.create_task(old, {"key": key}, version="1.0.0").id
    env.advance(0)
    env.advance(days=40)
    assert job(env).run() is not None
    assert existing(env, [first]) == set()  # the default: 30 days

    kept = env.engine.create_task(old, {"key": key}, version="1.0.0").id
    load(env, write_template, "report", version="1.1.0", retention={"complete": "never"})
    newer = env.engine.create_task(old, {"key": key}).id  # stores the 1.1.0 snapshot
    env.advance(0)
    env.advance(days=40)
    again = job(env).run()
    assert again is not None and again.total == 0
    assert existing(env, [kept, newer]) == {kept, newer}
    assert env.engine.get_task(kept).version == "1.0.0"
    assert env.engine.retention.report().templates == {"itest/report": {"complete": "never"}}


def test_a_template_retention_applies_without_a_default(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    short = load(env, write_template, "short", retention={"complete": "1d"})
    plain = load(env, write_template, "plain")
    ids = [env.engine.create_task(ref, {"key": key}).id for ref in (short, plain)]
    env.advance(0)
    env.advance(days=2)
    done = job(env, default=RetentionPolicy()).run()
    assert done is not None and dict(done.deleted) == {"complete": 1}
    assert existing(env, ids) == {ids[1]}  # no default: kept


def _archived_tasks(env: WorkflowEnv, write_template: WriteTemplate, key: str) -> list[int]:
    """Two finished tasks with steps, transitions, a signal and an edge, 40 days old."""
    ref = waiting(env, write_template)
    ids = [env.engine.create_task(ref, {"key": key, "n": n}).id for n in range(2)]
    env.advance(0)
    for task_id in ids:
        env.signal(task_id, "go", {"from": "test", "task": task_id})
    assert {env.engine.get_task(t).status for t in ids} == {"complete"}
    env.advance(days=40)
    return ids


def _documents(env: WorkflowEnv, ids: list[int]) -> list[dict[str, Any]]:
    with env.engine.db.read() as conn:
        docs = archive_store.documents(conn, ids, env.now())
    return [d.document for d in docs]


def test_a_file_archive_holds_exactly_what_was_deleted(
    env: WorkflowEnv, write_template: WriteTemplate, key: str, tmp_path: Path
) -> None:
    ids = _archived_tasks(env, write_template, key)
    before = _documents(env, ids)
    assert all(d["signals"] and d["step_edges"] and d["step_transitions"] for d in before)
    folder = tmp_path / "archive"
    done = job(env, archive=str(folder), batch=1).run()  # two batches: two gzip members
    assert done is not None and (done.total, done.archived, done.archive) == (2, 2, str(folder))
    (path,) = folder.glob("tasker-archive-*.jsonl.gz")
    assert archive_store.read_file(path) == before
    assert before[0]["format"] == archive_store.FORMAT
    assert before[0]["task"]["id"] == ids[0] and before[0]["template"]["name"] == "waits"
    assert before[0]["signals"][0]["payload"] == {"from": "test", "task": ids[0]}
    assert existing(env, ids) == set()


def test_a_table_archive_holds_exactly_what_was_deleted(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ids = _archived_tasks(env, write_template, key)
    before = _documents(env, ids)
    done = job(env, archive="table").run()
    assert done is not None and (done.total, done.archived) == (2, 2)
    with env.engine.db.read() as conn:
        rows = archive_store.read_table(conn)
    assert [r.id for r in rows] == ids
    assert [r.document for r in rows] == before
    assert {(r.namespace, r.name, r.status) for r in rows} == {("itest", "waits", "complete")}
    assert existing(env, ids) == set()


def test_nothing_is_deleted_when_the_archive_fails(
    env: WorkflowEnv, write_template: WriteTemplate, key: str, tmp_path: Path, monkeypatch: Any
) -> None:
    ids = _archived_tasks(env, write_template, key)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the archive directory should be")
    failed = job(env, archive=str(blocker)).run()
    assert failed is not None and not failed.complete and failed.total == 0
    assert failed.error is not None and "ArchiveError" in failed.error
    assert existing(env, ids) == set(ids)
    last = PurgePass.from_json(_job_state(env).last_pass)
    assert last is not None and last.error == failed.error

    def refuse(self: Any, conn: Any, archived: Any) -> None:
        conn.execute(sa.text("delete from tasker_tasks"))  # undone by the rollback too
        raise RuntimeError("the archive table is full")

    monkeypatch.setattr(archive_store.TableArchive, "write", refuse)
    refused = job(env, archive="table").run()
    assert refused is not None and refused.error == "RuntimeError: the archive table is full"
    assert existing(env, ids) == set(ids)


def _job_state(env: WorkflowEnv) -> jobs.JobState:
    with env.engine.db.read() as conn:
        return jobs.state(conn, JOB)


def test_only_one_worker_holds_the_housekeeping_job(env: WorkflowEnv) -> None:
    workers = [job(env, f"w{i}", interval_seconds=5) for i in range(3)]
    barrier = threading.Barrier(3)
    results: list[PurgePass | None] = [None] * 3

    def look(i: int) -> None:
        barrier.wait()
        results[i] = workers[i].run()

    threads = [threading.Thread(target=look, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    holders = [i for i, r in enumerate(results) if r is not None]
    assert len(holders) == 1 and [w.holding for w in workers].count(True) == 1
    holder = workers[holders[0]]
    others = [w for w in workers if w is not holder]
    assert _job_state(env).holder == holder.worker_id
    assert others[0].run() is None  # held: the lease (3 intervals, 15 s) has not run out
    holder.release()
    assert others[0].run() is not None and others[1].run() is None
    env.clock.advance(seconds=16)  # the new holder's lease runs out
    assert others[1].run() is not None
    assert _job_state(env).holder == others[1].worker_id


def test_a_holder_that_lost_the_job_deletes_nothing_more(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(env, write_template, "plain")
    ids = [env.engine.create_task(ref, {"key": key}).id for _ in range(3)]
    env.advance(0)
    env.advance(days=40)

    class TakeOver(WorkerHooks):
        """After w1's first batch, w2 takes the job (as if w1 had paused past its lease)."""

        def on_tasks_purged(self, purged: TasksPurged) -> None:
            with env.engine.db.write() as conn:
                jobs.release(conn, JOB, "w1")
                assert jobs.take(conn, JOB, "w2", env.now(), 30)

    first = job(env, "w1", batch=1, hooks=[TakeOver()])
    late = first.run()
    assert late is not None and (late.total, late.complete) == (1, False)
    assert not first.holding and len(existing(env, ids)) == 2
    state = _job_state(env)
    assert (state.holder, state.last_pass) == ("w2", None)  # w1's record is not w2's to write
    rest = job(env, "w2", batch=1).run()
    assert rest is not None and rest.total == 2 and existing(env, ids) == set()


def test_long_unseen_worker_rows_are_pruned(env: WorkflowEnv) -> None:
    with env.engine.db.write() as conn:
        for name, age in (("gone", timedelta(days=3)), ("recent", timedelta(hours=1))):
            worker_store.announce(conn, name, namespaces=None, concurrency=1, now=env.now() - age)
    done = job(env, worker_rows_seconds=86_400).run()
    assert done is not None and done.workers_pruned == 1
    with env.engine.db.read() as conn:
        left = set(conn.execute(sa.text("select id from tasker_workers")).scalars())
    assert left == {"recent"}


def test_a_pass_racing_a_retry_leaves_the_retried_task_alone(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    """Two connections in two threads. The retry holds the task's row while the pass runs: on
    PostgreSQL the pass skips it without waiting (SKIP LOCKED); on SQLite it waits for the retry's
    write to commit and finds the task reopened. Then the pass holds a task while a retry comes:
    the retry waits, finds it gone, and nothing deadlocks."""
    ref = load(env, write_template, "failing", failing=True)
    retried, purged = (env.engine.create_task(ref, {"key": key}).id for _ in range(2))
    env.advance(0)
    env.advance(days=40)
    assert {env.engine.get_task(t).status for t in (retried, purged)} == {"error"}
    db = env.engine.db
    locked, go = threading.Event(), threading.Event()
    order: list[str] = []

    def retry() -> None:
        with db.write() as conn:
            journal = Journal(clock.now())
            operations.retry_task(conn, journal, retried, lock=True)
            journal.flush(conn)
            locked.set()
            go.wait(30)
            order.append("retry commits")

    passes: list[PurgePass | None] = []

    def purge() -> None:
        passes.append(job(env).run())
        order.append("pass ends")

    operator = threading.Thread(target=retry)
    operator.start()
    assert locked.wait(30)
    housekeeper = threading.Thread(target=purge)
    housekeeper.start()
    housekeeper.join(15 if db.is_postgres else 0.3)  # PostgreSQL: ends without the retry
    go.set()
    operator.join(30)
    housekeeper.join(30)
    assert not housekeeper.is_alive() and not operator.is_alive()
    if db.is_postgres:
        assert order == ["pass ends", "retry commits"]  # skipped, not waited for
    else:
        assert order == ["retry commits", "pass ends"]  # one writer at a time
    (during,) = passes
    assert during is not None and dict(during.deleted) == {"error": 1}
    assert existing(env, [retried, purged]) == {retried}
    assert env.engine.get_task(retried).status != "error"
    assert job(env).run() is not None and existing(env, [retried]) == {retried}

    # The other way round: the purge holds the row; the retry waits for it, then finds no task.
    again = env.engine.create_task(ref, {"key": key}).id
    env.advance(0)
    errors: list[BaseException] = []
    holding = threading.Event()

    def late_retry() -> None:
        holding.wait(30)
        try:
            env.engine.retry_task(again)
        except BaseException as exc:
            errors.append(exc)

    operator = threading.Thread(target=late_retry)
    operator.start()
    with db.write() as conn:
        assert purge_store.delete_tasks(conn, [again]) == 1
        holding.set()
        time.sleep(0.3)  # the retry is waiting for the row (or the write lock) now
    operator.join(30)
    assert not operator.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], NotFoundError)


def test_delete_tasks_deletes_only_finished_tasks(
    env: WorkflowEnv, write_template: WriteTemplate, key: str, tmp_path: Path
) -> None:
    ref = load(env, write_template, "plain")
    done = env.engine.create_task(ref, {"key": key}).id
    env.advance(0)
    running = env.engine.create_task(waiting(env, write_template), {"key": key}).id
    env.advance(0)
    folder = tmp_path / "bulk"
    with env.engine.db.write() as conn:
        archive = archive_store.open_archive(str(folder), env.now())
        deleted = purge_store.delete_tasks(conn, [done, running, 999_999], archive=archive)
    assert deleted == 1 and existing(env, [done, running]) == {running}
    (path,) = folder.glob("*.jsonl.gz")
    assert [d["task"]["id"] for d in archive_store.read_file(path)] == [done]


def test_a_long_running_worker_runs_the_job_and_gives_it_up_when_it_stops(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(env, write_template, "plain")
    old = env.engine.create_task(ref, {"key": key}).id
    env.advance(0)
    env.advance(days=40)
    config = HousekeepingConfig(default=DEFAULT, interval_seconds=0.05)
    worker = env.engine.worker(housekeeping=config)
    runner = threading.Thread(target=lambda: env.engine.work(worker=worker, until_idle=False))
    runner.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and existing(env, [old]):
            time.sleep(0.05)
    finally:
        worker.stop()
        runner.join(30)
    state = _job_state(env)
    last = PurgePass.from_json(state.last_pass)
    assert (
        last is not None and last.worker == worker.id
    )  # a pass every 0.05 s: the last may be idle
    assert existing(env, [old]) == set()
    assert state.holder is None  # released on stop


def test_health_status_and_tasker_retention_show_the_retention_in_force(
    env: WorkflowEnv, write_template: WriteTemplate, key: str, store_url: str
) -> None:
    load(env, write_template, "keeper", retention={"error": "never", "complete": "P60D"})
    ref = load(env, write_template, "plain")
    env.engine.create_task(ref, {"key": key})
    env.engine.create_task("itest/keeper", {"key": key})
    env.advance(0)
    env.advance(days=40)
    assert job(env).run() is not None
    settings = Settings(retention=DEFAULT, archive="table")
    with TestClient(create_app(env.engine, settings)) as api:
        body = api.get("/api/v1/health/status").json()
    retention = body["retention"]
    assert retention["default"] == {"cancelled": "5d", "complete": "30d", "error": "10d"}
    assert retention["templates"] == {"itest/keeper": {"complete": "60d", "error": "never"}}
    assert retention["archive"] == "table" and retention["holder"] == "w1"
    last = retention["last_pass"]
    assert (last["worker"], last["deleted"], last["total"]) == ("w1", {"complete": 1}, 1)
    assert last["default"] == retention["default"]

    runner = CliRunner()
    env_vars = {"TASKER_RETENTION": "complete=30d,error=10d"}
    out = runner.invoke(cli, ["--database-url", store_url, "retention"], env=env_vars)
    assert out.exit_code == 0, out.output
    assert "default: complete 30d, error 10d" in out.output
    assert "itest/keeper: complete 60d, error never" in out.output
    assert "deleted 1 (complete 1)" in out.output
    as_json = runner.invoke(cli, ["--database-url", store_url, "retention", "--json"])
    assert as_json.exit_code == 0 and '"itest/keeper"' in as_json.output
