"""`tasker templates validate` refuses bad conditions, fan-outs and sub-workflows with one line
naming the file, the step and the position, and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tasker.cli.main import cli

HANDLER = "tests.unit.sample_handlers:Ok"


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (
            {"when": "results.a.amount >* 3"},
            "step 'b': when: Syntax error: extraneous input '*' at line 1, column 19",
        ),
        ({"when": "results.zz.x == 1"}, "step 'b': when: results.zz at line 1, column 1 is not a"),
        ({"foreach": "results.b.items"}, "step 'b': foreach: results.b at line 1, column 1 is not"),
        (
            {"foreach": "[1, 2, 3, 4]", "max_items": 3},
            "step 'b': foreach gives 4 items, more than max_items 3",
        ),
        ({"foreach": "context.x", "max_items": 100001}, "max_items"),
        ({"join": "any", "depends_on_step": None}, "join: any on a step without parents"),
        ({"task": "a/b", "context": {"x": "results.q.y"}}, "context.x: results.q at line 1"),
    ],
)
def test_a_bad_control_flow_template_is_refused_with_one_line_and_exit_code_2(
    tmp_path: Path, step: dict[str, object], message: str
) -> None:
    b: dict[str, object] = {"name": "b", "depends_on_step": "a", "handler_class": HANDLER}
    b.update(step)
    if "task" in b:
        del b["handler_class"]
    if b.get("depends_on_step") is None:
        del b["depends_on_step"]
    doc = {"name": "bad", "step_templates": [{"name": "a", "handler_class": HANDLER}, b]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(cli, ["templates", "validate", str(path)])
    assert result.exit_code == 2, result.output
    first = result.output.strip().splitlines()[0]
    assert first.startswith(f"error: {path}: ") and message in first, first
