"""Subscribers named in configuration or advertised by installed packages, attached without code.

Settings list import paths (`subscribers = ["pkg.module:Class"]` in tasker.toml, or
TASKER_SUBSCRIBERS); packages advertise classes under the `tasker.subscribers` entry point group.
Each class is instantiated with no arguments. A path that does not import, or names something other
than a `Subscriber`, is a configuration mistake reported at start-up rather than an event silently
never handled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib.metadata import entry_points

from tasker.domain.errors import TaskerInputError
from tasker.events.subscriber import Subscriber
from tasker.templates.loader import import_object

log = logging.getLogger("tasker.events")

ENTRY_POINT_GROUP = "tasker.subscribers"


def configured_subscribers(
    paths: Iterable[str], *, include_entry_points: bool = True
) -> list[Subscriber]:
    """Instances of the subscriber classes named by `paths` and, optionally, by installed entry
    points."""
    found: list[tuple[str, object]] = []
    for path in paths:
        try:
            found.append((path, import_object(path)))
        except Exception as exc:
            raise TaskerInputError(
                f"subscribers: cannot import '{path}' ({type(exc).__name__}: {exc}); fix: use an"
                " import path like 'package.module:ClassName' importable from the current"
                " environment"
            ) from None
    if include_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                found.append((f"entry point {ep.name} ({ep.value})", ep.load()))
            except Exception as exc:  # an installed package is broken: say which, keep the others
                log.error(
                    "subscriber entry point %s (%s) failed to load: %s", ep.name, ep.value, exc
                )
    out: list[Subscriber] = []
    for where, cls in found:
        if not isinstance(cls, type) or not issubclass(cls, Subscriber):
            raise TaskerInputError(
                f"subscribers: {where} is not a tasker.Subscriber subclass; fix: subclass "
                "tasker.Subscriber and list its events with subscribe_to(...)"
            )
        try:
            out.append(cls())
        except Exception as exc:
            raise TaskerInputError(
                f"subscribers: {where} could not be created without arguments ({exc})"
            ) from None
    return out
