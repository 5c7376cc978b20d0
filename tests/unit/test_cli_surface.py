"""The CLI a user expects, without a store: start-up imports, global options anywhere, JSON output
of templates, `templates validate` reporting every problem, and the messages of issue 11.

Start-up speed is measured by the benchmark of docs/benchmarks.md ("Start-up"), never timed here:
these tests check the cause instead (what `import tasker` and `tasker --help` import).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import tasker
from tasker.cli.main import COMMANDS, cli
from tasker.context_schema import validate_context
from tasker.domain.errors import ContextValidationError, TemplateError
from tasker.templates.loader import resolve_step_handler

HEAVY = ("sqlalchemy", "rich", "jsonschema", "fastapi", "pydantic", "alembic", "structlog", "yaml")
H = "tests.unit.sample_handlers"


def _imported_after(code: str) -> set[str]:
    """Top-level packages a fresh interpreter has imported after running `code`."""
    probe = (
        f"{code}\nimport sys, json\nprint(json.dumps(sorted({{m.split('.')[0] for m in"
        " sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_tasker_loads_no_heavy_package() -> None:
    assert not _imported_after("import tasker") & set(HEAVY)


@pytest.mark.parametrize("argv", [["--help"], ["--version"]])
def test_help_and_version_load_no_heavy_package(argv: list[str]) -> None:
    code = (
        f"import sys\nsys.argv = ['tasker', *{argv!r}]\nfrom tasker.cli.main import main\ntry:\n   "
        " main()\nexcept SystemExit:\n    pass"
    )
    assert not _imported_after(code) & set(HEAVY)


def test_every_public_name_still_imports() -> None:
    for name in tasker.__all__:
        assert getattr(tasker, name) is not None, name
    namespace: dict[str, object] = {}
    exec(
        f"from tasker import {', '.join(n for n in tasker.__all__ if n != '__version__')}",
        namespace,
    )
    assert set(tasker.__all__) - {"__version__"} <= set(namespace)
    with pytest.raises(AttributeError):
        tasker.NoSuchThing  # noqa: B018


def test_every_listed_command_loads_with_its_short_help() -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["--help"])
    assert out.exit_code == 0
    for name in COMMANDS:
        assert name in out.output
        assert runner.invoke(cli, [name, "--help"]).exit_code == 0, name


def _template(folder: Path, name: str, handler: str = "Ok", *, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        name: {name}
        namespace_name: unit
        version: 1.0.0
        description: the {name} template
        step_templates:
          - name: first
            handler_class: {H}:{handler}
          - name: second
            depends_on_step: first
            handler_class: {H}:Ok
        """)
        + extra
    )
    return path


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_options_are_accepted_before_or_after_the_subcommand(
    tmp_path: Path, where: str
) -> None:
    """`--config` names a file that does not exist: the same one-line error wherever it is given."""
    missing = str(tmp_path / "nope.toml")
    folder = tmp_path / "templates"
    _template(folder, "hello")
    args = ["templates", "list", "-t", str(folder)]
    argv = ["--config", missing, *args] if where == "before" else [*args, "--config", missing]

    result = CliRunner().invoke(cli, argv)

    assert result.exit_code == 2, result.output
    assert "nope.toml: cannot read the config file" in result.output


def test_an_inner_global_option_wins(tmp_path: Path) -> None:
    db = tmp_path / "inner.db"
    result = CliRunner().invoke(
        cli,
        [
            "--database-url",
            "sqlite:///outer.db",
            "tasks",
            "list",
            "--database-url",
            f"sqlite:///{db}",
        ],
    )
    assert result.exit_code == 2
    assert "inner.db: no such file" in result.output
    assert "outer.db" not in result.output


@pytest.mark.parametrize(
    "argv",
    [
        ["-v", "templates", "validate", "x.yaml"],
        ["templates", "validate", "x.yaml", "--verbose"],
        ["templates", "--log-level", "error", "validate", "x.yaml"],
    ],
)
def test_global_flags_parse_at_every_level(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2
    assert "x.yaml: no such file or directory" in result.output


def test_templates_list_and_show_as_json(tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    _template(folder, "hello")
    runner = CliRunner()

    listed = runner.invoke(cli, ["templates", "list", "-t", str(folder), "--json"])
    shown = runner.invoke(cli, ["templates", "show", "unit/hello", "-t", str(folder), "--json"])

    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == [
        {
            "namespace": "unit",
            "name": "hello",
            "version": "1.0.0",
            "key": "unit/hello@1.0.0",
            "description": "the hello template",
            "steps": 2,
            "source": str(folder / "hello.yaml"),
        }
    ]
    assert shown.exit_code == 0, shown.output
    body = json.loads(shown.stdout)
    assert [s["name"] for s in body["steps"]] == ["first", "second"]
    assert body["steps"][1]["depends_on"] == ["first"]
    assert body["execution_order"] == [["first"], ["second"]]
    assert body["versions"] == ["1.0.0"]
    assert body["mermaid"].startswith("graph TD") and "s0 --> s1" in body["mermaid"]


def test_validate_reports_every_problem_of_every_file_then_exits_2(tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    _template(folder, "good")
    _template(folder, "bad_handler", handler="NoSuchHandler")
    (folder / "broken.yaml").write_text("name: [unclosed\n")
    (folder / "cycle.yaml").write_text(
        textwrap.dedent(f"""\
        name: cycle
        namespace_name: unit
        version: 1.0.0
        step_templates:
          - {{name: a, depends_on_step: b, handler_class: "{H}:Ok"}}
          - {{name: b, depends_on_step: a, handler_class: "{H}:Ok"}}
        """)
    )
    dup = folder / "again"
    _template(dup, "good")

    result = CliRunner().invoke(
        cli, ["templates", "validate", str(folder), str(tmp_path / "missing")]
    )

    assert result.exit_code == 2
    out = result.output
    assert "bad_handler.yaml: step 'first': cannot import" in out
    assert "broken.yaml: invalid YAML" in out
    assert "cycle.yaml" in out and "cycle" in out.split("cycle.yaml", 1)[1]
    assert "missing: no such file or directory" in out
    assert "is also defined in" in out
    assert "ok unit/good@1.0.0" in out
    assert "problem(s) in" in out


def test_validate_of_good_files_exits_0(tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    _template(folder, "good")
    result = CliRunner().invoke(cli, ["templates", "validate", str(folder)])
    assert result.exit_code == 0, result.output
    assert "ok unit/good@1.0.0" in result.output


def test_a_bad_format_reads_naturally() -> None:
    schema = {"type": "object", "properties": {"email": {"type": "string", "format": "email"}}}
    with pytest.raises(ContextValidationError) as caught:
        validate_context("unit/x@1.0.0", schema, {"email": "nope"})
    assert "$.email: 'nope' is not a valid email" in str(caught.value)
    assert "'email'" not in str(caught.value)


def test_an_unimportable_handler_module_names_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", ["/first/entry", "/second/entry", *sys.path])
    with pytest.raises(TemplateError) as caught:
        resolve_step_handler("no_such_pkg.handlers:Charge", where="t.yaml: step 'charge'")
    message = str(caught.value)
    assert "ModuleNotFoundError" in message
    assert "'/first/entry', '/second/entry'" in message
    assert "current directory" not in message


def test_worker_logs_one_line_per_signal(caplog: pytest.LogCaptureFixture) -> None:
    import signal

    from tasker.cli.worker import _stopper

    class FakeWorker:
        id = "w1"
        stops = 0

        class opts:  # mimics WorkerOptions
            grace_seconds = 5.0

        def stop(self) -> None:
            self.stops += 1

    w = FakeWorker()
    seen: list[str] = []
    with caplog.at_level(logging.INFO, logger="tasker.worker"):
        _stopper(w, signal.SIGTERM, seen)()  # type: ignore[arg-type]
        _stopper(w, signal.SIGINT, seen)()  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records if r.name == "tasker.worker"]
    assert lines == [
        "worker w1 received SIGTERM: stops claiming; in-flight steps finish within 5s",
        "worker w1 received SIGINT again (signal 2): already stopping",
    ]
    assert w.stops == 2
