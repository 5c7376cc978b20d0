"""Subscribers named in settings are imported, checked and instantiated; mistakes are clear
errors."""

from __future__ import annotations

import pytest

from tasker import Subscriber, TaskerInputError
from tasker.events.registration import configured_subscribers


class Counting(Subscriber):
    subscribed_events = ("task.completed",)


class NoArgsPlease(Subscriber):
    subscribed_events = ("task.completed",)

    def __init__(self, required: int) -> None:
        self.required = required


def test_a_listed_class_is_instantiated() -> None:
    subs = configured_subscribers([f"{__name__}:Counting"], include_entry_points=False)
    assert [type(s) for s in subs] == [Counting]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_module_xyz:Thing", "cannot import 'no_such_module_xyz:Thing'"),
        (f"{__name__}:Missing", "cannot import"),
        (f"{__name__}:pytest", "is not a tasker.Subscriber subclass"),
        (f"{__name__}:NoArgsPlease", "could not be created without arguments"),
    ],
)
def test_mistakes_name_the_path(path: str, message: str) -> None:
    with pytest.raises(TaskerInputError, match=message):
        configured_subscribers([path], include_entry_points=False)


def test_entry_points_are_read_without_error() -> None:
    assert all(isinstance(s, Subscriber) for s in configured_subscribers([]))
