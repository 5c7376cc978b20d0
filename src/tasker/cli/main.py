"""`tasker`: the command line. Errors print one line and exit non-zero; `--verbose` shows tracebacks.

Exit codes: 0 success, 1 a task or operation ended in failure, 2 bad input (template, context, id, flag).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from tasker import __version__
from tasker.cli.common import State, err_console
from tasker.errors import TaskerError, TaskerInputError
from tasker.settings import Settings


class TaskerGroup(click.Group):
    """Turns engine errors into one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TaskerInputError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            if _verbose(ctx):
                raise
            ctx.exit(2)
        except TaskerError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            if _verbose(ctx):
                raise
            ctx.exit(1)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            if _verbose(ctx):
                raise
            err_console.print(
                f"[bold red]error:[/] {type(exc).__name__}: {exc} (run with --verbose for the traceback)",
                highlight=False, soft_wrap=True,
            )
            ctx.exit(1)


def _verbose(ctx: click.Context) -> bool:
    obj = ctx.find_object(State)
    return bool(obj and obj.verbose) or bool(os.environ.get("TASKER_VERBOSE"))


@click.group(cls=TaskerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database-url", envvar="TASKER_DATABASE_URL", default=None,
              help="Store URL (sqlite:///path or postgresql://...). Default: ./tasker.db")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML settings file (default: ./tasker.toml when present, or TASKER_CONFIG).")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs and tracebacks.")
@click.option("--log-format", type=click.Choice(["json", "console"]), default=None,
              help="Log lines as JSON objects or readable text. Default: TASKER_LOG_FORMAT or console.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default=None, help="Log threshold. Default: TASKER_LOG_LEVEL, or INFO for worker/serve and WARNING "
              "for other commands.")
@click.version_option(__version__, prog_name="tasker")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, config_file: str | None, verbose: bool,
        log_format: str | None, log_level: str | None) -> None:
    """Tasker: reliable, observable multi-step workflows."""
    # Like `python -m`, the current directory is importable, so handler_class paths resolve in a project.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        settings = Settings.load(config_file)
    except TaskerInputError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        ctx.exit(2)
    _configure_logging(ctx, settings, verbose, log_format, log_level)
    ctx.obj = State(settings, verbose, database_url)


def _configure_logging(ctx: click.Context, settings: Settings, verbose: bool, log_format: str | None,
                       log_level: str | None) -> None:
    """Once, before any command: structlog for every log line. Interactive commands show warnings unless a
    level is given; long-running ones (`worker`, `serve`) apply `ctx.meta["tasker.log_level"]` themselves."""
    from tasker.observability.logging import LEVELS, configure_logging

    level = (log_level or settings.log_level).upper()
    if level not in LEVELS:
        raise TaskerInputError(f"log_level {level!r} (TASKER_LOG_LEVEL or the config file) is not a level; "
                               f"fix: use one of {', '.join(LEVELS)}")
    ctx.meta["tasker.log_level"] = "DEBUG" if verbose else level
    quiet = level if log_level or LEVELS.index(level) > LEVELS.index("WARNING") else "WARNING"
    configure_logging(log_format or settings.log_format, "DEBUG" if verbose else quiet)


def _register() -> None:
    from tasker.cli.db import db
    from tasker.cli.keys import keys
    from tasker.cli.run import run
    from tasker.cli.serve import serve
    from tasker.cli.systems import limits, systems
    from tasker.cli.tasks import tasks
    from tasker.cli.templates import templates
    from tasker.cli.worker import worker

    for command in (templates, tasks, run, db, worker, systems, limits, keys, serve):
        cli.add_command(command)
    try:
        from tasker.cli.demo import demo
    except ImportError:  # the demos need the examples package, absent from a bare install
        return
    cli.add_command(demo)


_register()


def main() -> None:
    cli(prog_name="tasker")


if __name__ == "__main__":
    main()
