"""Time in the CLI, on both stores: `tasks create --in/--at/--deadline`, `tasks signal`,
`tasks signals`, and `tasker schedules ...`, with one-line errors."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import yaml
from click.testing import CliRunner, Result

from tasker import Tasker
from tasker.cli.main import cli

TEMPLATE = {
    "name": "report",
    "namespace_name": "clitime",
    "version": "1.0.0",
    "schedules": [{"name": "morning", "cron": "0 7 * * *", "timezone": "Europe/Berlin"}],
    "step_templates": [{"name": "confirm", "wait_for": "ok"}],
}


def write(tmp_path: Path) -> Path:
    path = tmp_path / "report.yaml"
    path.write_text(yaml.safe_dump(TEMPLATE))
    return path


def invoke(store_url: str, *argv: str) -> Result:
    return CliRunner().invoke(cli, ["--database-url", store_url, *argv])


def test_a_task_created_from_the_cli_starts_later_and_takes_signals(
    store_url: str, tmp_path: Path, tasker: Tasker
) -> None:
    templates = str(write(tmp_path))
    made = invoke(
        store_url,
        "tasks",
        "create",
        "clitime/report",
        "--templates",
        templates,
        "--in",
        "10m",
        "--deadline",
        "2h",
    )
    assert made.exit_code == 0, made.output
    task_id = int(made.output.strip().splitlines()[-1])
    task = tasker.get_task(task_id)
    assert task.starts_at is not None and task.deadline_at is not None
    assert task.deadline_at - task.starts_at == timedelta(hours=2)
    listed = invoke(store_url, "tasks", "list")
    assert "(starts" in listed.output

    sent = invoke(
        store_url, "tasks", "signal", str(task_id), "ok", "--payload", '{"a": 1}', "--key", "k1"
    )
    assert sent.exit_code == 0 and "no step waits for it yet" in sent.output
    again = invoke(store_url, "tasks", "signal", str(task_id), "ok", "--key", "k1")
    assert "already sent" in again.output
    shown = invoke(store_url, "tasks", "signals", str(task_id), "--json")
    assert [s["payload"] for s in json.loads(shown.output)["signals"]] == [{"a": 1}]

    bad = invoke(store_url, "tasks", "signal", str(task_id), "nope")
    assert bad.exit_code == 2 and "does not wait for a signal named 'nope'" in bad.output
    assert "Traceback" not in bad.output


def test_bad_times_on_the_cli_are_one_line(store_url: str, tmp_path: Path) -> None:
    templates = str(write(tmp_path))
    for flags, message in (
        (["--at", "tomorrow"], "--at 'tomorrow' is not an ISO-8601 time"),
        (["--at", "2030-01-01T07:00"], "has no time zone"),
        (["--in", "later"], "not a duration"),
    ):
        out = invoke(
            store_url, "tasks", "create", "clitime/report", "--templates", templates, *flags
        )
        assert out.exit_code == 2 and message in out.output, out.output


def test_schedules_from_the_cli(store_url: str, tmp_path: Path) -> None:
    templates = str(write(tmp_path))
    Tasker(store_url, templates=templates).close()  # a worker loading it syncs its schedule
    listed = invoke(store_url, "schedules", "list", "--json")
    (morning,) = json.loads(listed.output)["schedules"]
    assert morning["name"] == "morning" and morning["origin"] == "template"

    added = invoke(
        store_url,
        "schedules",
        "add",
        "clitime/report",
        "hourly",
        "0 * * * *",
        "--templates",
        templates,
        "--catch-up",
        "skip",
        "--json",
    )
    assert added.exit_code == 0, added.output
    schedule_id = json.loads(added.output)["id"]
    assert "paused" in invoke(store_url, "schedules", "pause", str(schedule_id)).output
    assert "next tick" in invoke(store_url, "schedules", "resume", str(schedule_id)).output
    fired = invoke(store_url, "schedules", "trigger", str(schedule_id), "--templates", templates)
    assert fired.exit_code == 0 and fired.output.strip().splitlines()[-1].isdigit()
    assert "removed" in invoke(store_url, "schedules", "remove", str(schedule_id)).output
    gone = invoke(store_url, "schedules", "remove", str(schedule_id))
    assert gone.exit_code != 0 and "no schedule with id" in gone.output
    bad = invoke(
        store_url, "schedules", "add", "clitime/report", "x", "daily", "--templates", templates
    )
    assert bad.exit_code == 2 and "not a cron expression" in bad.output


def test_tasker_run_stops_at_a_signal_wait_and_says_how_to_go_on(
    store_url: str, tmp_path: Path
) -> None:
    templates = str(write(tmp_path))
    out = invoke(store_url, "run", "clitime/report", "--templates", templates)
    assert out.exit_code == 0, out.output
    assert "waits for signal ok; send it with: tasker tasks signal" in out.output
    assert "waiting for signal 'ok'" in out.output  # the step's note in the table
