"""`tasker`: the command line. Errors print one line and exit non-zero; `--verbose` shows
tracebacks.

Exit codes: 0 success, 1 a task or operation ended in failure, 2 bad input (template, context, id,
flag, database URL or schema).

Subcommands are imported when they run (`LazyGroup`), so `tasker --help` and `tasker --version`
start without loading the engine, SQLAlchemy or Rich (docs/benchmarks.md, "Start-up").
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from tasker import __version__
from tasker.cli.common import State
from tasker.cli.options import add_global_options, global_params
from tasker.domain.errors import TaskerError, TaskerInputError

#: name -> (module:attribute, the short help `tasker --help` shows without importing the module).
COMMANDS: dict[str, tuple[str, str]] = {
    "db": ("tasker.cli.db:db", "Database migrations."),
    "demo": ("tasker.cli.demo:demo", "Run the stories' demos."),
    "keys": ("tasker.cli.keys:keys", "API keys for the REST API (create, list, revoke)."),
    "limits": ("tasker.cli.systems:limits", "In-flight limits per namespace (list, set, clear)."),
    "retention": (
        "tasker.cli.retention:retention",
        "The retention in force and the housekeeping job's last pass.",
    ),
    "run": ("tasker.cli.run:run", "Create a task and run it here to the end, with live progress."),
    "schedules": (
        "tasker.cli.schedules:schedules",
        "Cron schedules: list, add, pause, resume, trigger now, remove.",
    ),
    "serve": (
        "tasker.cli.serve:serve",
        "Serve the REST API and dashboard, optionally with workers.",
    ),
    "systems": (
        "tasker.cli.systems:systems",
        "Dependent systems: circuits, failures, limits, steps waiting.",
    ),
    "tasks": ("tasker.cli.tasks:tasks", "Inspect, create and operate on tasks."),
    "templates": ("tasker.cli.templates:templates", "Validate, list and inspect task templates."),
    "worker": ("tasker.cli.worker:worker", "Run steps from the store until stopped."),
}


class TaskerGroup(click.Group):
    """Turns engine errors into one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TaskerInputError as exc:
            _error(str(exc))
            if _verbose(ctx):
                raise
            ctx.exit(2)
        except TaskerError as exc:
            _error(str(exc))
            if _verbose(ctx):
                raise
            ctx.exit(1)
        except (
            click.exceptions.Exit,
            click.ClickException,
            click.Abort,
            SystemExit,
            KeyboardInterrupt,
        ):
            raise
        except Exception as exc:
            if _verbose(ctx):
                raise
            _error(f"{type(exc).__name__}: {exc} (run with --verbose for the traceback)")
            ctx.exit(1)


class LazyGroup(TaskerGroup):
    """The root group: loads a subcommand's module only when that subcommand is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name not in COMMANDS:
            return None
        module_name, _, attr = COMMANDS[cmd_name][0].partition(":")
        try:
            command = getattr(importlib.import_module(module_name), attr)
        except ImportError as exc:
            _error(
                f"'tasker {cmd_name}' is not available in this installation ({exc}); fix: reinstall"
                " tasker-engine"
            )
            ctx.exit(2)
        add_global_options(command)
        self.commands[cmd_name] = command
        return command  # type: ignore[no-any-return]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from `COMMANDS`, so that help imports no subcommand."""
        rows = [
            (
                name,
                COMMANDS[name][1] if name in COMMANDS else self.commands[name].get_short_help_str(),
            )
            for name in self.list_commands(ctx)
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _error(message: str) -> None:
    from tasker.cli.common import err_console

    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def _verbose(ctx: click.Context) -> bool:
    obj = ctx.find_object(State)
    return bool(obj and obj.verbose) or bool(os.environ.get("TASKER_VERBOSE"))


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Global options are accepted before or after the subcommand.",
)
@click.version_option(__version__, prog_name="tasker")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Tasker: reliable, observable multi-step workflows."""
    ctx.ensure_object(State)
    # Like `python -m`, the current directory is importable, so handler_class paths resolve in a
    # project.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


cli.params[:0] = global_params()
cli._tasker_globals = True  # type: ignore[attr-defined]


def main() -> None:
    cli(prog_name="tasker")


if __name__ == "__main__":
    main()
