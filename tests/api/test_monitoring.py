"""Health, status, `/metrics` and analytics routes, on both stores, through the real app.

Broken databases are real too: an SQLite file nobody migrated, a schema one revision behind, a port
where nothing listens, and a server that accepts connections and never answers (the hung database a
readiness probe must not hang on).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text, update

from tasker import Tasker
from tasker.api.app import create_app
from tasker.api.routes import monitoring
from tasker.settings import Settings
from tasker.store import workers as worker_store
from tasker.store.schema import steps
from tests.integration.support import step, template_yaml

PREFIX = "/api/v1"


def make_api(engine: Tasker, **settings: Any) -> TestClient:
    return TestClient(create_app(engine, Settings(**settings)), base_url="http://testserver")


def load(
    engine: Tasker, tmp_path: Path, name: str, steps_: list[dict[str, Any]], **top: Any
) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(template_yaml(name, steps_, **top))
    t = engine.load_templates(path)[0]
    return f"{t.namespace_name}/{t.name}"


@pytest.fixture
def api(tasker: Tasker) -> TestClient:
    return make_api(tasker)


# -- live and ready --------------------------------------------------------------------------------
def test_live_answers_without_touching_anything(api: TestClient) -> None:
    r = api.get(f"{PREFIX}/health/live")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    assert r.headers["cache-control"] == "no-store"


def test_ready_on_a_migrated_store(api: TestClient) -> None:
    r = api.get(f"{PREFIX}/health/ready")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["status"], body["ready"], body["failed_checks"]) == ("ready", True, [])
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["migrations"]["current"] == body["checks"]["migrations"]["head"]
    assert r.headers["cache-control"] == "no-store"


def test_ready_503_on_an_unmigrated_database(tmp_path: Path) -> None:
    with Tasker(f"sqlite:///{tmp_path / 'empty.db'}", migrate=False) as engine:
        r = make_api(engine).get(f"{PREFIX}/health/ready")
        status = make_api(engine).get(f"{PREFIX}/health/status")
    assert r.status_code == 503
    body = r.json()
    assert (body["ready"], body["failed_checks"]) == (False, ["migrations"])
    assert body["checks"]["database"]["status"] == "ok"
    migrations = body["checks"]["migrations"]
    assert migrations["current"] is None
    assert "tasker db upgrade" in migrations["error"]
    assert status.status_code == 503
    assert status.json()["status"] == "unhealthy"
    assert status.json()["tasks"] is None
    assert "migrations" in status.json()["reasons"][0]


def test_ready_503_when_the_schema_is_behind(tasker: Tasker, api: TestClient) -> None:
    with tasker.db.write() as conn:
        head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))
    try:
        r = api.get(f"{PREFIX}/health/ready")
    finally:
        with tasker.db.write() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :head"), {"head": head})
    assert r.status_code == 503
    migrations = r.json()["checks"]["migrations"]
    assert (migrations["status"], migrations["current"], migrations["head"]) == (
        "failing",
        "0002",
        head,
    )
    assert r.json()["failed_checks"] == ["migrations"]


def test_ready_503_when_nothing_listens() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: connecting to it is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Tasker(f"postgresql://postgres@127.0.0.1:{port}/nothing", migrate=False) as engine:
        r = make_api(engine).get(f"{PREFIX}/health/ready")
    assert r.status_code == 503
    body = r.json()
    assert body["failed_checks"] == ["database", "migrations"]
    assert body["checks"]["database"]["error"].startswith("OperationalError")
    assert body["checks"]["migrations"]["status"] == "unknown"


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never says a word: a database that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    for conn in accepted:
        conn.close()
    server.close()


def test_ready_and_status_answer_503_in_time_when_the_database_hangs(
    silent_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(monitoring, "READY_TIMEOUT_SECONDS", 0.3)
    monkeypatch.setattr(monitoring, "STATUS_TIMEOUT_SECONDS", 0.3)
    with Tasker(f"postgresql://postgres@127.0.0.1:{silent_server}/hung", migrate=False) as engine:
        api = make_api(engine)
        started = time.monotonic()
        ready = api.get(f"{PREFIX}/health/ready")
        again = api.get(
            f"{PREFIX}/health/ready"
        )  # joins the probe still stuck, starts no second one
        status = api.get(f"{PREFIX}/health/status")
        elapsed = time.monotonic() - started
    assert (ready.status_code, again.status_code, status.status_code) == (503, 503, 503)
    assert ready.json()["checks"]["database"]["error"] == "no answer within 0.3s"
    assert status.json()["status"] == "unhealthy"
    assert elapsed < 30  # bounded by the deadlines, not by the server (which never answers)
    assert sum(t.name == "tasker-ready-probe" for t in threading.enumerate()) <= 1


# -- status ----------------------------------------------------------------------------------------
def test_status_counts_tasks_steps_and_workers(
    tasker: Tasker, api: TestClient, tmp_path: Path
) -> None:
    ref = load(tasker, tmp_path, "counted", [step("a"), step("b", after="a")])
    done = tasker.create_task(ref, {"key": "done"})
    tasker.run(done.id)
    tasker.create_task(ref, {"key": "waiting"})
    now = datetime.now(UTC)
    with tasker.db.write() as conn:
        worker_store.announce(conn, "w-live", namespaces=["itest"], concurrency=4, now=now)
        worker_store.announce(
            conn, "w-stale", namespaces=None, concurrency=2, now=now - timedelta(minutes=5)
        )
        worker_store.announce(conn, "w-stopped", namespaces=None, concurrency=2, now=now)
        worker_store.seen(conn, "w-stopped", steps_run=3, now=now, stopped=True)

    r = api.get(f"{PREFIX}/health/status")

    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert (body["status"], body["healthy"], body["reasons"]) == ("healthy", True, [])
    assert body["tasks"] == {
        "pending": 1,
        "in_progress": 0,
        "complete": 1,
        "error": 0,
        "cancelled": 0,
        "resolved_manually": 0,
        "total": 2,
    }
    assert (
        body["steps"]["complete"],
        body["steps"]["ready"],
        body["steps"]["pending"],
        body["steps"]["total"],
    ) == (2, 1, 1, 4)
    assert body["backlog"]["due_steps"] == 1 and body["backlog"]["overdue_steps"] == 0
    assert body["backlog"]["active_tasks"] == 1
    assert body["last_hour"]["finished_tasks"] == 1 and body["last_hour"]["step_attempts"] == 2
    workers = body["workers"]
    assert workers["seen_recently"] == 1
    assert [(w["id"], w["namespaces"], w["concurrency"]) for w in workers["items"]] == [
        ("w-live", ["itest"], 4)
    ]
    assert body["checks"]["database"]["status"] == "ok"


def test_status_is_degraded_while_work_waits_unclaimed(
    tasker: Tasker, api: TestClient, tmp_path: Path
) -> None:
    ref = load(tasker, tmp_path, "stuck", [step("a")])
    task = tasker.create_task(ref, {"key": "stuck"})
    with tasker.db.write() as conn:
        conn.execute(
            update(steps)
            .where(steps.c.task_id == task.id)
            .values(run_at=datetime.now(UTC) - timedelta(minutes=3))
        )

    r = api.get(f"{PREFIX}/health/status")

    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "degraded" and body["healthy"] is True
    assert body["backlog"]["overdue_steps"] == 1
    assert body["backlog"]["oldest_due_seconds"] >= 179
    assert "1 steps have been due for more than 60s" in body["reasons"][0]
    assert "0 workers seen recently" in body["reasons"][0]


def test_status_is_degraded_while_a_circuit_is_open(
    tasker: Tasker, api: TestClient, tmp_path: Path
) -> None:
    ref = load(
        tasker,
        tmp_path,
        "outage",
        [
            step(
                "a",
                dependent_system="billing",
                default_retry_limit=1,
                handler_config={"always_fail": "retryable"},
            )
        ],
    )
    tasker.systems.configure("billing", failure_threshold=1, cooldown_seconds=600)
    task_id = tasker.create_task(ref, {"key": "outage"}).id
    # the step now waits for billing (the outage hold), so run a worker only until the circuit opens
    worker = tasker.worker(concurrency=1)

    async def briefly() -> None:
        job = asyncio.ensure_future(worker.run())
        for _ in range(100):
            await asyncio.sleep(0.05)
            if tasker.systems.circuit_history("billing"):
                break
        worker.stop()
        await job

    asyncio.run(briefly())
    assert tasker.get_task(task_id).step("a").status == "waiting_retry"

    body = api.get(f"{PREFIX}/health/status").json()

    assert body["status"] == "degraded"
    assert "the circuit of dependent system 'billing' is open" in body["reasons"]
    billing = next(c for c in body["circuits"] if c["name"] == "billing")
    assert billing["circuit_state"] == "open"


def test_status_is_unhealthy_when_most_recent_tasks_fail(
    tasker: Tasker, api: TestClient, tmp_path: Path
) -> None:
    ref = load(tasker, tmp_path, "doomed", [step("a", handler_config={"always_fail": "permanent"})])
    for i in range(10):
        tasker.create_task(ref, {"key": f"doomed-{i}"})
    tasker.work(until_idle=True)

    r = api.get(f"{PREFIX}/health/status")

    assert r.status_code == 503
    body = r.json()
    assert (body["status"], body["healthy"]) == ("unhealthy", False)
    assert body["last_hour"]["task_error_rate"] == 1.0
    assert body["reasons"] == [
        "10 of 10 tasks finished in the last hour are in error (more than 50%)"
    ]


def test_a_few_failures_do_not_make_the_engine_unhealthy(
    tasker: Tasker, api: TestClient, tmp_path: Path
) -> None:
    ref = load(
        tasker, tmp_path, "unlucky", [step("a", handler_config={"always_fail": "permanent"})]
    )
    for i in range(3):  # 100% of 3 tasks: too few to judge
        tasker.create_task(ref, {"key": f"unlucky-{i}"})
    tasker.work(until_idle=True)

    assert api.get(f"{PREFIX}/health/status").json()["status"] == "healthy"


def test_status_window_is_validated(api: TestClient) -> None:
    for bad in ("0", "2161", "x"):
        r = api.get(f"{PREFIX}/health/status", params={"window_hours": bad})
        assert r.status_code == 422
        assert r.json()["error"]["details"][0]["path"] == "query.window_hours"


# -- metrics ---------------------------------------------------------------------------------------
def test_metrics_are_prometheus_text(tasker: Tasker, api: TestClient, tmp_path: Path) -> None:
    ref = load(tasker, tmp_path, "metered", [step("a")])
    tasker.run(tasker.create_task(ref, {"key": "m"}).id)

    r = api.get(f"{PREFIX}/metrics")

    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert 'tasker_tasks{state="complete"} 1.0' in r.text
    assert "tasker_database_up 1.0" in r.text


# -- analytics -------------------------------------------------------------------------------------
def test_performance_route(tasker: Tasker, api: TestClient, tmp_path: Path) -> None:
    ref = load(tasker, tmp_path, "perf", [step("a"), step("b", after="a")])
    for i in range(3):
        tasker.run(tasker.create_task(ref, {"key": f"p{i}"}).id)

    r = api.get(
        f"{PREFIX}/analytics/performance",
        params={"period_hours": 2, "namespace": "", "name": "", "version": ""},
    )

    assert r.status_code == 200, r.text
    body = r.json()
    assert body["period_hours"] == 2
    [row] = body["templates"]
    assert (
        row["namespace"],
        row["name"],
        row["created"],
        row["completed"],
        row["completion_rate"],
    ) == ("itest", "perf", 3, 3, 1.0)
    assert row["duration_seconds"]["count"] == 3
    assert set(row["duration_seconds"]) == {"count", "avg", "p50", "p95", "max"}
    assert row["steps_completed"] == 6
    assert (
        api.get(f"{PREFIX}/analytics/performance", params={"namespace": "elsewhere"}).json()[
            "templates"
        ]
        == []
    )


def test_bottlenecks_route(tasker: Tasker, api: TestClient, tmp_path: Path) -> None:
    ref = load(tasker, tmp_path, "choke", [step("a", handler_config={"fail": ["retryable"]})])
    tasker.systems.configure("default", failure_threshold=1000)
    for i in range(5):
        tasker.run(tasker.create_task(ref, {"key": f"b{i}"}).id)

    r = api.get(f"{PREFIX}/analytics/bottlenecks", params={"period_hours": 24, "limit": 5})

    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scope"] == {"tasks": 5, "step_attempts": 10}
    [retried] = body["most_retried_steps"]
    assert (retried["step"], retried["retries"], retried["failure_rate"]) == ("a", 5, 0.5)
    assert body["system_error_rates"][0]["dependent_system"] == "default"
    assert [a["kind"] for a in body["recommendations"]] == ["failing_step"]


@pytest.mark.parametrize(
    ("route", "params", "field"),
    [
        ("performance", {"period_hours": 0}, "query.period_hours"),
        ("performance", {"period_hours": 2161}, "query.period_hours"),
        ("performance", {"period_hours": "a day"}, "query.period_hours"),
        ("performance", {"namespace": "no spaces"}, "query.namespace"),
        ("performance", {"name": "n" * 129}, "query.name"),
        ("bottlenecks", {"version": "1.x"}, "query.version"),
        ("bottlenecks", {"limit": 0}, "query.limit"),
        ("bottlenecks", {"limit": 101}, "query.limit"),
    ],
)
def test_analytics_parameters_are_validated(
    api: TestClient, route: str, params: dict[str, Any], field: str
) -> None:
    r = api.get(f"{PREFIX}/analytics/{route}", params=params)
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["path"] == field


# -- authorisation ---------------------------------------------------------------------------------
@pytest.fixture
def guarded(tasker: Tasker) -> tuple[TestClient, Callable[[str], dict[str, str]]]:
    def key(*permissions: str) -> dict[str, str]:
        _, secret = tasker.keys.create(f"k{time.monotonic_ns()}", list(permissions))
        return {"X-API-Key": secret}

    return make_api(tasker, auth_enabled=True), key


def test_health_probes_stay_open_with_auth_on(
    guarded: tuple[TestClient, Callable[..., dict[str, str]]],
) -> None:
    api, _ = guarded
    assert api.get(f"{PREFIX}/health/live").status_code == 200
    assert api.get(f"{PREFIX}/health/ready").status_code == 200


@pytest.mark.parametrize(
    ("path", "permission"),
    [
        ("/health/status", "tasker.health_status:index"),
        ("/metrics", "tasker.metrics:index"),
        ("/analytics/performance", "tasker.analytics:index"),
        ("/analytics/bottlenecks", "tasker.analytics:index"),
    ],
)
def test_guarded_routes_need_their_permission(
    guarded: tuple[TestClient, Callable[..., dict[str, str]]], path: str, permission: str
) -> None:
    api, key = guarded
    assert api.get(f"{PREFIX}{path}").status_code == 401
    assert api.get(f"{PREFIX}{path}", headers=key("tasker.task:index")).status_code == 403
    assert api.get(f"{PREFIX}{path}", headers=key(permission)).status_code == 200
