"""Types of the callable fixtures, for the annotations of the tests that ask for them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from tasker import Tasker

MakeTasker = Callable[..., Tasker]
"""`make_tasker`: build an engine on the test's store; keyword arguments go to `Tasker`."""


class WriteTemplate(Protocol):
    """`write_template`: write a YAML template text to the test's directory, return its path."""

    def __call__(self, text: str, name: str = ...) -> Path: ...


class LoadTemplate(Protocol):
    """`load` (integration tests): build a template from steps, load it, return `ns/name`."""

    def __call__(self, name: str, steps: list[dict[str, Any]], **top: Any) -> str: ...


class TemplateFile(Protocol):
    """`template_file` (chaos tests): write a template built from steps, return its path."""

    def __call__(self, name: str, steps: list[dict[str, Any]], **top: Any) -> Path: ...
