"""`GET /api/v1/events`: the durable event log over Server-Sent Events, fed by a separate worker
process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tasker import Tasker
from tasker.api.app import create_app
from tasker.settings import Settings
from tests.chaos.support import Fleet
from tests.fixture_types import LoadTemplate
from tests.servers import serving

HANDLER = "tests.integration.test_worker_process:FileStep"


@pytest.fixture
def served(tasker: Tasker) -> Iterator[str]:
    """The real app under uvicorn on a loopback port (streams need a real server, not a buffered
    client)."""
    with serving(create_app(tasker, Settings())) as url:
        yield f"{url}/api/v1"


def _template(folder: Path) -> Path:
    data = {
        "name": "streamed",
        "namespace_name": "proc",
        "version": "1.0.0",
        "step_templates": [
            {"name": "one", "handler_class": HANDLER},
            {"name": "two", "handler_class": HANDLER, "depends_on_step": "one"},
        ],
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "streamed.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _read_sse(response: httpx.Response, until: str, limit_seconds: float) -> list[dict[str, Any]]:
    """Parse SSE messages until one named `until` arrives."""
    got: list[dict[str, Any]] = []
    fields: dict[str, str] = {}
    deadline = time.monotonic() + limit_seconds
    for line in response.iter_lines():
        if time.monotonic() > deadline:
            break
        if line == "":
            if "data" in fields:
                got.append(
                    {
                        "id": fields.get("id"),
                        "event": fields.get("event"),
                        "data": json.loads(fields["data"]),
                    }
                )
                if fields.get("event") == until:
                    return got
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")
    return got


@pytest.mark.timeout(90)
def test_a_client_streams_the_step_events_of_a_task_run_by_another_process(
    tasker: Tasker, served: str, store_url: str, tmp_path: Path
) -> None:
    path = _template(tmp_path / "templates")
    tasker.load_templates(path)
    with Fleet(store_url, path, tmp_path / "logs", concurrency=2) as fleet:
        worker = fleet.spawn()
        worker.wait_started()
        task_id = tasker.create_task("proc/streamed", {"dir": str(tmp_path)}).id
        with (
            httpx.Client(timeout=30) as client,
            client.stream(
                "GET", f"{served}/events", params={"task_id": task_id, "timeout_seconds": 30}
            ) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            messages = _read_sse(response, "task.completed", 30)
    names = [(m["event"], m["data"]["step"]) for m in messages]
    assert names[0] == ("task.created", None)
    assert ("step.started", "one") in names and ("step.completed", "two") in names
    assert names[-1] == ("task.completed", None)
    workers = {m["data"]["worker"] for m in messages if m["event"] == "step.started"}
    assert workers == {worker.wait_started()}, "the events were written by the worker process"
    assert all(m["data"]["task_id"] == task_id for m in messages)


def test_reconnecting_with_last_event_id_resumes_after_it(
    tasker: Tasker, served: str, load: LoadTemplate, key: str
) -> None:
    from tests.integration.support import step

    ref = load("resumed", [step("a"), step("b", after="a")])
    task_id = tasker.create_task(ref, {"key": key}).id
    tasker.run(task_id)
    with httpx.Client(timeout=10) as client:
        first = client.get(f"{served}/events", params={"task_id": task_id, "timeout_seconds": 0.5})
        ids = [line[4:] for line in first.text.splitlines() if line.startswith("id: ")]
        assert len(ids) >= 6
        again = client.get(
            f"{served}/events",
            params={"task_id": task_id, "timeout_seconds": 0.5},
            headers={"Last-Event-ID": ids[2]},
        )
        resumed = [line[4:] for line in again.text.splitlines() if line.startswith("id: ")]
    assert resumed == ids[3:]


def test_the_json_page_and_bad_filters(
    tasker: Tasker, served: str, load: LoadTemplate, key: str
) -> None:
    from tests.integration.support import step

    ref = load("paged", [step("a")])
    task_id = tasker.create_task(ref, {"key": key}).id
    tasker.run(task_id)
    with httpx.Client(timeout=10) as client:
        page = client.get(
            f"{served}/events/page", params={"task_id": task_id, "name": "step.*"}
        ).json()
        assert [e["event"] for e in page["events"]] == [
            "step.ready",
            "step.started",
            "step.completed",
        ]
        rest = client.get(
            f"{served}/events/page", params={"task_id": task_id, "after": page["cursor"]}
        ).json()
        # a cursor from a filtered read skipped only the sources the filter read: here the task
        # events remain
        assert [e["event"] for e in rest["events"]] == [
            "task.created",
            "task.started",
            "task.completed",
        ]
        for bad in (
            {"after": "1-2"},
            {"task_id": "x"},
            {"task_id": 0},
            {"limit": 0},
            {"name": "x" * 200},
            {"after": "' OR 1=1 --"},
        ):
            r = client.get(f"{served}/events/page", params=bad)
            assert r.status_code == 422, (bad, r.text)
            assert "Traceback" not in r.text
        assert client.get(f"{served}/events", params={"after": "nope"}).status_code == 422


# -- limits, heartbeat and slots -------------------------------------------------------------------
def _wait_until(condition: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_streams_beyond_the_per_client_limit_are_429_and_slots_come_back(tasker: Tasker) -> None:
    app = create_app(
        tasker,
        Settings(sse_max_streams_per_client=2, sse_max_streams=10, sse_heartbeat_seconds=0.2),
    )
    hub = app.state.streams
    with serving(app) as url, httpx.Client(timeout=10) as client:
        events = f"{url}/api/v1/events"
        with client.stream("GET", events) as one, client.stream("GET", events) as two:
            assert one.status_code == two.status_code == 200
            refused = client.get(events)
            assert refused.status_code == 429 and refused.headers["retry-after"].isdigit()
            error = refused.json()["error"]
            assert (
                error["code"] == "too_many_streams"
                and "sse_max_streams_per_client" in error["message"]
            )
            assert "Traceback" not in refused.text
            assert (
                client.get(f"{url}/api/v1/tasks").status_code == 200
            )  # other routes are unaffected
        # both clients went away: the heartbeat finds out and their slots are released
        assert _wait_until(lambda: not hub.open), dict(hub.open)
        with client.stream("GET", events) as again:
            assert again.status_code == 200
        # a stream that ends by itself gives its slot back too
        assert client.get(events, params={"timeout_seconds": 0.3}).status_code == 200
        assert _wait_until(lambda: not hub.open), dict(hub.open)


def test_the_total_limit_applies_across_clients(tasker: Tasker) -> None:
    app = create_app(
        tasker, Settings(sse_max_streams_per_client=5, sse_max_streams=1, sse_heartbeat_seconds=0.2)
    )
    with serving(app) as url, httpx.Client(timeout=10) as client:
        events = f"{url}/api/v1/events"
        with client.stream("GET", events, params={"timeout_seconds": 30}) as held:
            assert held.status_code == 200
            refused = client.get(events)
            assert (
                refused.status_code == 429
                and "sse_max_streams" in refused.json()["error"]["message"]
            )
        assert _wait_until(lambda: not app.state.streams.open)


def test_a_refused_filter_releases_its_slot(tasker: Tasker) -> None:
    app = create_app(tasker, Settings(sse_max_streams_per_client=1))
    with serving(app) as url, httpx.Client(timeout=10) as client:
        for _ in range(3):
            assert client.get(f"{url}/api/v1/events", params={"name": "x" * 200}).status_code == 422
        assert not app.state.streams.open


def test_idle_streams_send_heartbeats_and_read_off_the_shared_pool(tasker: Tasker) -> None:
    app = create_app(tasker, Settings(sse_heartbeat_seconds=0.2))
    with serving(app) as url, httpx.Client(timeout=10) as client:
        text = client.get(f"{url}/api/v1/events", params={"timeout_seconds": 1.0}).text
    assert text.count(": keep-alive") >= 3, text
    executor = app.state.streams._executor
    assert executor is not None and executor._max_workers == 4  # its own bounded pool


def test_streams_wake_when_the_log_moves(tasker: Tasker, load: Any, key: str) -> None:
    from tests.integration.support import step

    ref = load("woken", [step("a")])
    app = create_app(
        tasker, Settings(sse_heartbeat_seconds=60)
    )  # no heartbeat wake-ups during the test
    with (
        serving(app) as url,
        httpx.Client(timeout=20) as client,
        client.stream(
            "GET", f"{url}/api/v1/events", params={"timeout_seconds": 15, "name": "task.created"}
        ) as response,
    ):
        started = time.monotonic()
        task_id = tasker.create_task(ref, {"key": key}).id
        messages = _read_sse(response, "task.created", 10)
    assert [m["data"]["task_id"] for m in messages] == [task_id]
    assert time.monotonic() - started < 5  # woken by the watcher, not by a heartbeat or the timeout
