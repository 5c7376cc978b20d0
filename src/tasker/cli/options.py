"""The global options (`--database-url`, `--config`, `--verbose`, `--log-format`, `--log-level`).

Users put them where they think of them: `tasker --database-url X tasks list` and
`tasker tasks list --database-url X` mean the same. `add_global_options` gives every command and
group the same options (a command's own option of the same name wins, as the demos' `--database-url`
does); each records what it was given in the invocation's `State`, and `State` reads the settings
only once every level has been parsed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from tasker.cli.common import State, state


def _record(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Store a global option given at this level; the innermost level (parsed last) wins."""
    if value is None or value is False or param.name is None:
        return value
    st = ctx.find_root().ensure_object(State)
    st.given[param.name] = value
    return value


def global_params() -> list[click.Parameter]:
    """Fresh `click.Option`s for one command (click options must not be shared between commands)."""
    return [
        click.Option(
            ["--database-url"],
            default=None,
            expose_value=False,
            callback=_record,
            help=(
                "Store URL (sqlite:///path or postgresql://...). Default: TASKER_DATABASE_URL or "
                "./tasker.db"
            ),
        ),
        click.Option(
            ["--config", "config_file"],
            type=click.Path(dir_okay=False),
            default=None,
            expose_value=False,
            callback=_record,
            help="TOML settings file (default: ./tasker.toml when present, or TASKER_CONFIG).",
        ),
        click.Option(
            ["-v", "--verbose"],
            is_flag=True,
            default=False,
            expose_value=False,
            callback=_record,
            help="Show debug logs and tracebacks.",
        ),
        click.Option(
            ["--log-format"],
            type=click.Choice(["json", "console"]),
            default=None,
            expose_value=False,
            callback=_record,
            help=(
                "Log lines as JSON objects or readable text. Default: TASKER_LOG_FORMAT or console."
            ),
        ),
        click.Option(
            ["--log-level"],
            type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
            default=None,
            expose_value=False,
            callback=_record,
            help=(
                "Log threshold. Default: TASKER_LOG_LEVEL, or INFO for worker/serve and WARNING for"
                " other commands."
            ),
        ),
    ]


def add_global_options(command: click.Command) -> click.Command:
    """Give `command` (and, for a group, every subcommand) the global options, once.

    An option whose flag the command already uses is left out, so a command's own `--database-url`
    or `-v` keeps its meaning. Leaf commands read the settings and configure logging before they
    run, so a bad setting is one line even for commands that never open the store.
    """
    if getattr(command, "_tasker_globals", False):
        return command
    taken = {
        opt
        for p in command.params
        for opt in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))
    }
    names = {p.name for p in command.params}
    for param in global_params():
        opts = set(getattr(param, "opts", ())) | set(getattr(param, "secondary_opts", ()))
        if opts & taken or param.name in names:
            continue
        command.params.append(param)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_global_options(sub)
    elif command.callback is not None:
        command.callback = _prepared(command.callback)
    command._tasker_globals = True  # type: ignore[attr-defined]
    return command


def _prepared(callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        state(click.get_current_context())
        return callback(*args, **kwargs)

    return run
