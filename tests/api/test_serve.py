"""`tasker serve`: bad options are one line and exit 2; a real server with in-process workers runs a
task created over HTTP to completion and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from tasker.cli.main import cli
from tests.servers import serve_process

ROOT = Path(__file__).parents[2]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TASKER_")}


@pytest.mark.parametrize(
    "args",
    [
        ["--port", "70000"],
        ["--port", "http"],
        ["--workers", "-1"],
        ["--workers", "65"],
        ["--concurrency", "0"],
        ["--bogus"],
    ],
)
def test_bad_options_exit_2_with_one_line(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["serve", *args], env=clean_env())
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_a_busy_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = CliRunner().invoke(
            cli,
            ["--database-url", f"sqlite:///{tmp_path / 't.db'}", "serve", "--port", str(port)],
            env=clean_env(),
        )
    assert result.exit_code == 2, result.output
    assert (
        f"cannot listen on 127.0.0.1:{port}" in result.output
        and "choose another --port" in result.output
    )


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_serve_with_workers_runs_a_task_and_stops_on_sigterm(
    store_url: str, api_templates: Path
) -> None:
    args = [
        "--database-url",
        store_url,
        "--port",
        "0",
        "--templates",
        str(api_templates),
        "--workers",
        "1",
    ]
    with serve_process(args, cwd=ROOT, env=clean_env()) as served:
        assert any(
            "warning" in line.lower() and "authentication is OFF" in line for line in served.seen
        ), served.log()
        with httpx.Client(base_url=served.base, timeout=10) as client:
            created = client.post(
                "/tasks", json={"template": "apitest/order", "context": {"email": "s@example.com"}}
            )
            assert created.status_code == 201, created.text
            task_id = created.json()["id"]
            status = "pending"
            until = time.monotonic() + 30
            while status not in ("complete", "error") and time.monotonic() < until:
                time.sleep(0.1)
                status = client.get(f"/tasks/{task_id}").json()["status"]
            assert status == "complete"
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=30) == 0
    seen = served.drain()
    assert not any("Traceback" in line for line in seen), "".join(seen)
