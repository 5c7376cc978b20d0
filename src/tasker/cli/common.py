"""What every command shares: settings, opening the engine, reading JSON arguments, printing errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from tasker.engine.tasker import Tasker
from tasker.errors import TaskerInputError
from tasker.events.registration import configured_subscribers
from tasker.settings import Settings

console = Console()
err_console = Console(stderr=True)


class State:
    def __init__(self, settings: Settings, verbose: bool, database_url: str | None):
        self.settings = settings
        self.verbose = verbose
        self.database_url = database_url or settings.database_url

    def engine(self, templates: tuple[str, ...] | list[str] | None = None, *, load: bool = True,
               **kwargs: Any) -> Tasker:
        kwargs.setdefault("concurrency", self.settings.concurrency)
        kwargs.setdefault("lease_seconds", self.settings.lease_seconds)
        kwargs.setdefault("poll_interval", self.settings.poll_interval)
        engine = Tasker(self.database_url, **kwargs)
        for subscriber in configured_subscribers(self.settings.subscribers):
            engine.add_subscriber(subscriber)
        if load:
            for path in self.settings.templates(templates):
                engine.load_templates(path)
        return engine


def state(ctx: click.Context) -> State:
    obj = ctx.find_object(State)
    assert obj is not None
    return obj


def templates_option(f: Any) -> Any:
    return click.option(
        "--templates", "-t", "templates", multiple=True, type=click.Path(),
        help="Template YAML file or directory (repeatable). Default: TASKER_TEMPLATE_PATH or ./templates.",
    )(f)


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
            f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}; fix: pass a JSON object "
            "or @file.json"
        ) from None


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)
