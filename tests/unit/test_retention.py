"""Retention rules, pure: parsing (with errors that name the state), how periods read, which
template version speaks, and the property that the cut-offs a pass makes are exactly what
`effective` says for every template and status."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasker.domain.errors import TaskerInputError, TemplateError
from tasker.domain.retention import (
    NEVER,
    RETAINED_STATES,
    HousekeepingConfig,
    PurgePass,
    RetentionPolicy,
    StoredTemplate,
    TemplateRetention,
    cutoffs,
    describe,
    effective,
    newest_per_template,
    parse_archive,
    parse_period,
)
from tasker.domain.states import TaskState
from tasker.domain.templates import semver_key
from tasker.domain.waits import duration_seconds
from tasker.settings import Settings
from tasker.templates.loader import parse_template

DAY = 86_400.0


def test_a_policy_reads_mappings_and_environment_text() -> None:
    policy = RetentionPolicy.parse({"complete": "30d", "error": "P90D", "cancelled": 3600})
    assert policy.periods == {
        TaskState.COMPLETE: 30 * DAY,
        TaskState.ERROR: 90 * DAY,
        TaskState.CANCELLED: 3600.0,
    }
    assert RetentionPolicy.parse("complete=30d, error = never ,") == RetentionPolicy(
        {TaskState.COMPLETE: 30 * DAY, TaskState.ERROR: None}
    )
    assert RetentionPolicy.parse(None) == RetentionPolicy.parse({}) == RetentionPolicy()
    assert not RetentionPolicy() and policy
    assert policy.as_text() == {"cancelled": "1h", "complete": "30d", "error": "90d"}
    assert RetentionPolicy.from_stored(policy.as_stored()) == policy


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ({"pending": "1d"}, "pending is not a finished state"),
        ({"running": "1d"}, "'running' is not a task state"),
        ({"complete": "soon"}, "complete: 'soon' is not a duration"),
        ({"complete": None}, "complete: a period is required"),
        ({"error": "40000d"}, "error: '40000d' is out of range; use 0 to 36500 days"),
        ({"error": True}, "error: True is not a duration"),
        ("complete:30d", "'complete:30d' is not state=duration"),
        ("complete=1d,complete=2d", "complete is given twice"),
        (42, "int is not a retention"),
    ],
)
def test_a_bad_policy_says_which_state_and_what_is_accepted(value: Any, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        RetentionPolicy.parse(value)
    assert needle in str(info.value)


@given(st.integers(0, 36_500 * 24 * 60).map(lambda minutes: minutes * 60.0))
def test_a_described_period_reads_back_as_itself(seconds: float) -> None:
    assert parse_period(describe(seconds)) == seconds
    assert parse_period(describe(None)) is None and describe(None) == NEVER


def test_retention_keeps_records_for_years_where_a_wait_stops_at_one() -> None:
    # Bookkeeping rules keep records for years; a durable wait is capped at a year.
    assert RetentionPolicy.parse({"complete": "2555d"}).as_text() == {"complete": "2555d"}
    assert parse_period("P3650D") == 3650 * DAY
    with pytest.raises(ValueError, match="out of range; use 0 to 366 days"):
        duration_seconds("400d")


def test_periods_read_as_people_write_them() -> None:
    assert [describe(p) for p in (30 * DAY, 36 * 3600, 90 * 60, 45, 1.5)] == [
        "30d",
        "36h",
        "90m",
        "45s",
        "1.5s",
    ]


def _stored(row: int, ns: str, name: str, version: str, policy: Any) -> StoredTemplate:
    return StoredTemplate(row, ns, name, semver_key(version), RetentionPolicy.parse(policy))


def test_the_newest_version_speaks_for_a_template() -> None:
    rows = [
        _stored(1, "ns", "a", "1.10.0", {"complete": "1d"}),
        _stored(2, "ns", "a", "1.9.0", {"complete": "2d"}),
        _stored(3, "ns", "b", "2.0.0", {"error": "never"}),
        _stored(4, "ns", "b", "2.0.0", None),  # the same version edited later: it says nothing
        _stored(5, "ns", "c", "1.0.0-rc.1", {"complete": "3d"}),
    ]
    assert newest_per_template(rows) == [
        TemplateRetention("ns", "a", RetentionPolicy.parse({"complete": "1d"})),
        TemplateRetention("ns", "c", RetentionPolicy.parse({"complete": "3d"})),
    ]


def test_cutoffs_group_templates_by_period_and_leave_never_out() -> None:
    default = RetentionPolicy.parse({"complete": "30d", "error": "90d"})
    own = [
        TemplateRetention("ns", "a", RetentionPolicy.parse({"complete": "7d", "error": "never"})),
        TemplateRetention("ns", "b", RetentionPolicy.parse({"complete": "7d"})),
        TemplateRetention("ns", "c", RetentionPolicy.parse({"cancelled": "1d"})),
    ]
    found = [(c.status.value, c.seconds, c.templates, c.exclude) for c in cutoffs(default, own)]
    assert found == [
        ("cancelled", DAY, (("ns", "c"),), ()),
        ("complete", 30 * DAY, None, (("ns", "a"), ("ns", "b"))),
        ("complete", 7 * DAY, (("ns", "a"), ("ns", "b")), ()),
        ("error", 90 * DAY, None, (("ns", "a"),)),
    ]
    assert cutoffs(RetentionPolicy(), []) == []


_periods = st.one_of(st.none(), st.sampled_from([0.0, 60.0, DAY, 30 * DAY]))
_policies = st.dictionaries(st.sampled_from(RETAINED_STATES), _periods, max_size=5).map(
    RetentionPolicy
)
_names = st.sampled_from([("ns", "a"), ("ns", "b"), ("other", "a"), ("other", "c")])


@given(
    _policies,
    st.dictionaries(_names, _policies, max_size=4),
    _names,
    st.sampled_from(RETAINED_STATES),
)
def test_exactly_the_effective_period_cuts_each_template_and_status(
    default: RetentionPolicy,
    declared: dict[tuple[str, str], RetentionPolicy],
    template: tuple[str, str],
    status: TaskState,
) -> None:
    own = [TemplateRetention(ns, name, p) for (ns, name), p in sorted(declared.items()) if p]
    applying = [c for c in cutoffs(default, own) if c.status == status and c.covers(*template)]
    expected = effective(default, own, template[0], template[1], status)
    if expected is None:
        assert applying == []  # kept forever, or decided by nobody
    else:
        assert [c.seconds for c in applying] == [expected]
    declared_here = declared.get(template)
    if declared_here is not None and declared_here.decides(status):
        assert expected == declared_here.period(status)  # a template's own beats the default
    else:
        assert expected == default.period(status)


def test_archive_settings() -> None:
    assert parse_archive(None) is None and parse_archive(" none ") is None
    assert parse_archive("off") is None and parse_archive("") is None
    assert parse_archive("TABLE") == "table"
    assert parse_archive("/var/archive") == "/var/archive"
    with pytest.raises(ValueError):
        parse_archive(3)


def test_housekeeping_config_refuses_what_would_spin_or_stall() -> None:
    for bad in ({"interval_seconds": 0}, {"batch": 0}, {"worker_rows_seconds": 1}):
        with pytest.raises(ValueError):
            HousekeepingConfig(**bad)  # type: ignore[arg-type]


def test_a_pass_record_reads_back_and_unreadable_ones_are_none() -> None:
    record = PurgePass(
        started_at=datetime(2026, 1, 5, tzinfo=UTC),
        worker="w1",
        seconds=0.25,
        deleted={"complete": 3, "error": 1},
        archived=4,
        archive="table",
        workers_pruned=2,
        complete=False,
        error="ArchiveError: disk full",
        default={"complete": "30d"},
        templates={"ns/a": {"error": "never"}},
    )
    assert PurgePass.from_json(record.as_json()) == record and record.total == 4
    assert PurgePass.from_json(None) is None
    assert PurgePass.from_json({"worker": "w1"}) is None


# -- where retention is declared ---------------------------------------------------------------
BASE = {"name": "t", "step_templates": [{"name": "a", "handler_class": "x:Y"}]}


def test_a_template_declares_its_retention() -> None:
    t = parse_template(
        {**BASE, "retention": {"complete": "30d", "error": "never"}}, resolve_handlers=False
    )
    assert t.retention == {"complete": 30 * DAY, "error": "never"}
    assert t.snapshot()["retention"] == t.retention
    assert t.retention_policy == RetentionPolicy.parse({"complete": "30d", "error": "never"})
    assert not t.warnings
    plain = parse_template(dict(BASE), resolve_handlers=False)
    assert "retention" not in plain.snapshot()  # the content hash of older templates stands
    assert parse_template({**BASE, "retention": {}}, resolve_handlers=False).retention is None


@pytest.mark.parametrize(
    ("retention", "needle"),
    [
        ({"in_progress": "1d"}, "retention: in_progress is not a finished state"),
        ({"complete": "a month"}, "retention: complete: 'a month' is not a duration"),
        ("complete=1d", "retention: str is not a mapping"),
    ],
)
def test_a_bad_template_retention_names_the_field(retention: Any, needle: str) -> None:
    with pytest.raises(TemplateError) as info:
        parse_template({**BASE, "retention": retention}, resolve_handlers=False)
    message = str(info.value)
    assert needle in message and "fix: map finished states" in message and "\n" not in message


def test_settings_take_retention_from_the_environment_and_the_config_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("TASKER_CONFIG", "TASKER_RETENTION", "TASKER_ARCHIVE"):
        monkeypatch.delenv(name, raising=False)
    assert Settings.load().housekeeping() == HousekeepingConfig()
    (tmp_path / "tasker.toml").write_text(
        '[tasker]\nretention = { complete = "30d", error = "never" }\narchive = "/srv/archive"\n'
        "housekeeping_seconds = 60\nretention_batch = 100\nworker_rows_seconds = 3600\n"
    )
    config = Settings.load().housekeeping()
    assert config == HousekeepingConfig(
        default=RetentionPolicy.parse({"complete": "30d", "error": "never"}),
        archive="/srv/archive",
        interval_seconds=60.0,
        batch=100,
        worker_rows_seconds=3600.0,
    )
    monkeypatch.setenv("TASKER_RETENTION", "cancelled=5d")
    monkeypatch.setenv("TASKER_ARCHIVE", "table")
    config = Settings.load().housekeeping()
    assert config.default.as_text() == {"cancelled": "5d"} and config.archive == "table"
    monkeypatch.setenv("TASKER_RETENTION", "pending=5d")
    with pytest.raises(TaskerInputError, match="setting retention: pending is not a finished"):
        Settings.load()
