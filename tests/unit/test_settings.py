"""Settings: every number has a documented range; NaN, Infinity, booleans and absurd values are
refused."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasker.domain import bounds
from tasker.domain.errors import TaskerInputError
from tasker.settings import NUMBER_RANGES, Settings

ENV = {
    "concurrency": "TASKER_CONCURRENCY",
    "lease_seconds": "TASKER_LEASE_SECONDS",
    "poll_interval": "TASKER_POLL_INTERVAL",
    "grace_seconds": "TASKER_GRACE_SECONDS",
    "api_port": "TASKER_API_PORT",
    "metrics_port": "TASKER_METRICS_PORT",
    "max_body_bytes": "TASKER_MAX_BODY_BYTES",
}


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no tasker.toml of the repository
    for name in [*ENV.values(), "TASKER_CONFIG"]:
        monkeypatch.delenv(name, raising=False)


def test_every_number_setting_has_a_range() -> None:
    assert set(ENV) <= set(NUMBER_RANGES)


@pytest.mark.parametrize("name", sorted(ENV))
@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "1e300", "-1", "true", "ten", ""])
def test_a_bad_environment_number_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, name: str, text: str
) -> None:
    if text == "":
        return  # an empty variable means "not set"
    monkeypatch.setenv(ENV[name], text)
    with pytest.raises(TaskerInputError) as info:
        Settings.load()
    msg = str(info.value)
    assert "\n" not in msg and f"setting {name}:" in msg and "at most" in msg, msg


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("concurrency = true", "not a number"),
        ("concurrency = 2.5", "not a whole number"),
        ("concurrency = 100000", "out of range"),
        ("lease_seconds = nan", "not a finite number"),
        ("poll_interval = inf", "not a finite number"),
        ("grace_seconds = -1.0", "out of range"),
        ("api_port = 70000", "out of range"),
        ("max_body_bytes = 10", "out of range"),
        ('concurrency = "4"', None),
    ],
)
def test_config_file_numbers(tmp_path: Path, toml: str, needle: str | None) -> None:
    path = tmp_path / "tasker.toml"
    path.write_text(f"[tasker]\n{toml}\n")
    if needle is None:
        assert Settings.load(path).concurrency == 4
        return
    with pytest.raises(TaskerInputError, match=needle) as info:
        Settings.load(path)
    assert str(path) in str(info.value)


def test_numbers_in_range_load_with_their_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKER_CONCURRENCY", "1e1")
    monkeypatch.setenv("TASKER_LEASE_SECONDS", "30")
    monkeypatch.setenv("TASKER_GRACE_SECONDS", "0")
    s = Settings.load()
    assert s.concurrency == 10 and isinstance(s.concurrency, int)
    assert s.lease_seconds == 30.0 and isinstance(s.lease_seconds, float)
    assert s.grace_seconds == 0.0


@given(
    st.sampled_from(sorted(NUMBER_RANGES)),
    st.floats(allow_nan=True, allow_infinity=True) | st.booleans(),
)
def test_a_range_never_lets_a_bad_number_through(name: str, value: float | bool) -> None:
    r = NUMBER_RANGES[name]
    try:
        out = r.check(value)
    except ValueError as exc:
        assert "\n" not in str(exc)
        return
    assert not isinstance(value, bool)
    assert math.isfinite(out) and r.low <= out <= r.high
    assert isinstance(out, int) if r.integer else isinstance(out, float)


@given(
    st.sampled_from(sorted(bounds.SYSTEM_SETTINGS)),
    st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.booleans() | st.none(),
)
def test_system_settings_are_in_range_or_refused_naming_the_setting(
    name: str, value: object
) -> None:
    try:
        out = bounds.check_system_settings({name: value})[name]
    except ValueError as exc:
        assert str(exc).startswith(f"{name}: ")
        return
    if value is None:
        assert out is None
        return
    r = bounds.SYSTEM_SETTINGS[name]
    assert math.isfinite(out) and r.low < out <= r.high if r.low_open else r.low <= out <= r.high


def test_unknown_system_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown dependent-system setting"):
        bounds.check_system_settings({"cooldown": 5})
