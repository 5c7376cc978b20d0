"""A worker that cannot import a step's handler leaves the step to a worker that can, spending
nothing."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import yaml

from tasker import Tasker


def test_a_step_whose_handler_cannot_be_loaded_waits_for_a_worker_that_can(
    tasker: Tasker, make_tasker: Callable[..., Tasker], tmp_path: Path, store_url: str
) -> None:
    package = tmp_path / "plugins"
    package.mkdir()
    module = f"ghost_{tmp_path.name.replace('-', '_')}"
    (package / f"{module}.py").write_text(
        textwrap.dedent("""
        from tasker import StepHandler

        class Ghost(StepHandler):
            def process(self, ctx):
                return {"loaded": True}
    """)
    )
    template = tmp_path / "ghost.yaml"
    template.write_text(
        yaml.safe_dump(
            {
                "name": "ghost",
                "namespace_name": "plugins",
                "version": "1.0.0",
                "step_templates": [
                    {"name": "haunt", "handler_class": f"{module}:Ghost", "default_retry_limit": 1}
                ],
            }
        )
    )
    sys.path.insert(0, str(package))
    try:
        tasker.load_templates(template)  # the deploying process can import it
        task_id = tasker.create_task("plugins/ghost", {}).id
    finally:
        sys.path.remove(str(package))
        sys.modules.pop(module, None)

    other = make_tasker(
        backoff_scale=0.01
    )  # a worker on the same store without the plugin on its path
    task = other.run(task_id)
    step = task.step("haunt")
    assert task.status != "error" and step.status == "waiting_retry"
    assert step.attempts == 0, "a worker that cannot load the handler must not spend an attempt"
    assert step.last_error is not None
    assert step.last_error["class"] == "HandlerUnavailable"
    assert step.last_error["message"].startswith(f"waiting: no worker can load {module}:Ghost")
    report = {s["name"]: s for s in tasker.systems.report()}["default"]
    assert report["unloadable_handlers"] == {f"{module}:Ghost": 1}
    from click.testing import CliRunner

    from tasker.cli.main import cli

    shown = CliRunner().invoke(cli, ["--database-url", store_url, "systems"])
    assert shown.exit_code == 0, shown.output
    assert f"waiting: no worker can load {module}:Ghost (1 step of default)" in " ".join(
        shown.output.split()
    )

    sys.path.insert(0, str(package))
    try:
        done = make_tasker().run(task_id)
    finally:
        sys.path.remove(str(package))
        sys.modules.pop(module, None)
    assert done.status == "complete" and done.step("haunt").attempts == 1
