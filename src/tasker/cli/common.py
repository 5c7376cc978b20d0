"""What every command shares: settings, opening the engine, reading JSON arguments, printing errors.

Kept light on purpose: `tasker --help` and `tasker --version` import this module, so Rich,
SQLAlchemy and the engine load only when a command needs them (`console` and `err_console` are
created on first use; see `__getattr__`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from tasker.domain.errors import TaskerInputError

if TYPE_CHECKING:
    from rich.console import Console

    from tasker.engine.tasker import Tasker
    from tasker.settings import Settings

    console: Console
    err_console: Console

#: How a command opens the store: "read" never creates or migrates anything and refuses a database
#: without the current schema (one line naming it and the fix); "write" migrates when `auto_migrate`
#: says so (by default: the embedded SQLite only), else it also refuses.
Access = Literal["read", "write"]

#: The global options, by parameter name, that `tasker.cli.options` accepts at every level.
GLOBAL_KEYS = ("database_url", "config_file", "verbose", "log_format", "log_level")

_consoles: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    """`console` (stdout) and `err_console` (stderr), made on first use so that help starts fast."""
    if name in ("console", "err_console"):
        if name not in _consoles:
            from rich.console import Console

            _consoles[name] = Console(stderr=name == "err_console")
        return _consoles[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class State:
    """The options of one `tasker` invocation, wherever they were given, and the settings they
    select.

    Global options may come before or after the subcommand (`tasker --database-url X tasks list` and
    `tasker tasks list --database-url X`); each level records what it was given in `given`, the
    later (inner) level winning, and the settings are read once, on first use, after every level is
    parsed.
    """

    def __init__(self) -> None:
        self.given: dict[str, Any] = {}
        self._settings: Settings | None = None
        self._database_url: str | None = None
        self.prepared = False

    @property
    def verbose(self) -> bool:
        return bool(self.given.get("verbose"))

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from tasker.settings import Settings

            self._settings = Settings.load(self.given.get("config_file"))
        return self._settings

    @property
    def database_url(self) -> str | None:
        return self._database_url or self.given.get("database_url") or self.settings.database_url

    @database_url.setter
    def database_url(self, value: str | None) -> None:
        self._database_url = value

    def engine(
        self,
        templates: tuple[str, ...] | list[str] | None = None,
        *,
        load: bool = True,
        access: Access = "write",
        **kwargs: Any,
    ) -> Tasker:
        """The engine on the configured store, opened as `access` says (see `Access`)."""
        from tasker.engine.tasker import Tasker
        from tasker.events.registration import configured_subscribers

        kwargs.setdefault("concurrency", self.settings.concurrency)
        kwargs.setdefault("lease_seconds", self.settings.lease_seconds)
        kwargs.setdefault("poll_interval", self.settings.poll_interval)
        auto = self.settings.auto_migrate
        if access == "read":
            engine = Tasker(self.database_url, migrate=False, **kwargs)
        else:
            # None: the store's own default (SQLite migrates, PostgreSQL checks); True/False: as
            # set.
            engine = Tasker(self.database_url, migrate=None if auto is None else auto, **kwargs)
        if access == "read" or auto is False:
            try:
                engine.db.require_schema()
            except BaseException:
                engine.close()
                raise
        current = click.get_current_context(silent=True)
        if (
            current is not None
        ):  # pools and threads end with the command, also when it runs in-process
            current.find_root().call_on_close(engine.close)
        for subscriber in configured_subscribers(self.settings.subscribers):
            engine.add_subscriber(subscriber)
        if load:
            for path in self.settings.templates(templates):
                engine.load_templates(path)
        return engine


def state(ctx: click.Context) -> State:
    """The invocation's `State`, with settings loaded and logging configured (once)."""
    obj = ctx.find_object(State)
    if obj is None:
        obj = ctx.find_root().ensure_object(State)
    if not obj.prepared:
        obj.prepared = True
        _configure_logging(ctx, obj)
    return obj


def _configure_logging(ctx: click.Context, st: State) -> None:
    """Once, before any command: structlog for every log line. Interactive commands show warnings
    unless a level is given; long-running ones (`worker`, `serve`) apply `meta["tasker.log_level"]`
    themselves.
    """
    from tasker.observability.logging import LEVELS, configure_logging

    log_level: str | None = st.given.get("log_level")
    level = (log_level or st.settings.log_level).upper()
    if level not in LEVELS:
        raise TaskerInputError(
            f"log_level {level!r} (TASKER_LOG_LEVEL or the config file) is not a level; "
            f"fix: use one of {', '.join(LEVELS)}"
        )
    ctx.find_root().meta["tasker.log_level"] = "DEBUG" if st.verbose else level
    ctx.meta["tasker.log_level"] = "DEBUG" if st.verbose else level
    quiet = level if log_level or LEVELS.index(level) > LEVELS.index("WARNING") else "WARNING"
    configure_logging(
        st.given.get("log_format") or st.settings.log_format, "DEBUG" if st.verbose else quiet
    )


def templates_option(f: Any) -> Any:
    return click.option(
        "--templates",
        "-t",
        "templates",
        multiple=True,
        type=click.Path(),
        help=(
            "Template YAML file or directory (repeatable). Default: TASKER_TEMPLATE_PATH or"
            " ./templates."
        ),
    )(f)


def json_option(f: Any) -> Any:
    """`--json`: print one JSON document on stdout instead of tables (for scripts and `jq`)."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print JSON instead of a table (stable keys, ISO 8601 times in UTC).",
    )(f)


def echo_json(value: Any) -> None:
    """Print `value` as indented JSON; datetimes become ISO 8601 text, other odd values their
    str()."""
    click.echo(json.dumps(value, indent=2, default=_json_default, ensure_ascii=False))


def _json_default(value: Any) -> Any:
    iso = getattr(value, "isoformat", None)
    if callable(iso):
        return iso()
    return str(value)


def read_json(value: str, what: str) -> Any:
    """A JSON argument given inline or as @file."""
    source = what
    text = value
    if value.startswith("@"):
        path = Path(value[1:])
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TaskerInputError(f"{what}: cannot read {path} ({exc.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskerInputError(
            f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}; fix: pass"
            " a JSON object or @file.json"
        ) from None


def fail(message: str, code: int = 2) -> None:
    from tasker.cli.common import err_console

    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)
