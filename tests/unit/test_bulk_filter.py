"""The bulk operations' filter without a store: parsing what a person types (templates, durations,
ISO times), validation that names the field, the states each action applies to, `matches`, and
the report's summary."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasker.domain.bulk import (
    FAILED_STEP_STATES,
    MAX_IDS,
    BulkAction,
    BulkReport,
    FilterError,
    TaskFilter,
    moment,
    parse_filter,
)
from tasker.domain.records import Step, Task
from tasker.domain.states import (
    FINISHED_TASK_STATES,
    TASK_TRANSITIONS,
    StepState,
    TaskState,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def test_a_template_reference_sets_namespace_name_and_version() -> None:
    f = parse_filter(now=NOW, template="payments/refund@2.1.0")
    assert (f.namespace, f.name, f.version) == ("payments", "refund", "2.1.0")
    bare = parse_filter(now=NOW, template="refund")
    assert (bare.namespace, bare.name, bare.version) == (None, "refund", None)
    same = parse_filter(now=NOW, template="payments/refund", namespace="payments")
    assert same.namespace == "payments"
    assert parse_filter(now=NOW, template="  ", namespace="", key=" ").is_empty


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"template": "a/b/c"}, "template", "is not a template"),
        ({"template": "/refund"}, "template", "is not a template"),
        ({"template": "ns/refund@"}, "template", "is not a template"),
        ({"template": "payments/refund", "namespace": "shop"}, "namespace", "contradicts"),
        ({"template": "x/y@1.0.0", "version": "2.0.0"}, "version", "contradicts"),
        ({"namespace": "has space"}, "namespace", "is not a name"),
        ({"version": "one"}, "version", "is not a semantic version"),
        ({"statuses": ["done"]}, "status", "unknown state 'done'"),
        ({"step_states": ["broken"]}, "step_state", "unknown state 'broken'"),
        ({"since": "lately"}, "since", "neither a duration nor a time"),
        ({"until": "tomorrow-ish"}, "until", "neither a duration nor a time"),
        ({"since": "1h", "until": "2h"}, "until", "is not after since"),
        ({"error_class": "a\nb"}, "error_class", "printable characters"),
        ({"step": "x" * 129}, "step", "1 to 128 printable characters"),
        ({"ids": [0]}, "ids", "is not a task id"),
        ({"ids": [True]}, "ids", "is not a task id"),
        ({"ids": list(range(1, MAX_IDS + 2))}, "ids", "more than 10,000"),
    ],
)
def test_every_bad_field_is_named_with_its_fix(
    fields: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(FilterError, match=message) as caught:
        parse_filter(now=NOW, **fields)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_a_filter_built_in_code_is_checked_and_normalised() -> None:
    f = TaskFilter(
        statuses=(TaskState.ERROR, TaskState.ERROR),
        ids=(5, 3, 5),
        created_since=datetime(2026, 1, 1),  # naive: UTC
    )
    assert f.statuses == (TaskState.ERROR,)
    assert f.ids == (3, 5)
    assert f.created_since == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(FilterError, match="unknown state"):
        TaskFilter(statuses=("nope",))  # type: ignore[arg-type]
    with pytest.raises(FilterError, match="is not after since"):
        TaskFilter(created_since=NOW, created_until=NOW)


@pytest.mark.parametrize("action", list(BulkAction))
def test_each_action_applies_to_its_states_and_refuses_others(action: BulkAction) -> None:
    expected = {
        BulkAction.RETRY: {TaskState.ERROR},
        BulkAction.CANCEL: {s for s in TaskState if TaskState.CANCELLED in TASK_TRANSITIONS[s]},
        BulkAction.PURGE: set(FINISHED_TASK_STATES),
    }[action]
    assert set(action.states) == expected
    assert TaskFilter(name="x").statuses_for(action) == action.states
    outside = [s for s in TaskState if s not in expected]
    with pytest.raises(FilterError, match=f"a bulk {action.value} never applies") as caught:
        TaskFilter(statuses=(outside[0],)).statuses_for(action)
    assert caught.value.field == "status"


@given(
    statuses=st.lists(st.sampled_from(list(TaskState)), unique=True),
    action=st.sampled_from(list(BulkAction)),
)
def test_statuses_for_is_the_filters_own_or_refused(
    statuses: list[TaskState], action: BulkAction
) -> None:
    f = TaskFilter(statuses=tuple(statuses))
    if statuses and not set(statuses) <= set(action.states):
        with pytest.raises(FilterError):
            f.statuses_for(action)
        return
    picked = f.statuses_for(action)
    assert set(picked) <= set(action.states)
    assert picked == (tuple(statuses) or action.states)


@given(amount=st.integers(min_value=0, max_value=6000), unit=st.sampled_from(sorted(UNITS)))
def test_a_duration_is_that_long_before_now(amount: int, unit: str) -> None:
    seconds = amount * UNITS[unit]
    if seconds > 36_500 * 86400:  # a century: past any rule that keeps records for years
        with pytest.raises(FilterError):
            moment(f"{amount}{unit}", NOW, "since")
        return
    assert moment(f"{amount}{unit}", NOW, "since") == NOW - timedelta(seconds=seconds)


@given(
    when=st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(2100, 1, 1),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=9))]
        ),
    )
)
def test_an_iso_time_is_that_time_in_utc(when: datetime) -> None:
    assert moment(when.isoformat(), NOW, "until") == when.astimezone(UTC)
    naive = when.replace(tzinfo=None)
    assert moment(naive.isoformat(), NOW, "until") == naive.replace(tzinfo=UTC)
    z = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S") + "Z"
    assert moment(z, NOW, "until") == when.astimezone(UTC).replace(microsecond=0)


def test_iso_durations_and_seconds_and_nothing() -> None:
    assert moment("PT30M", NOW, "since") == NOW - timedelta(minutes=30)
    assert moment("P1D", NOW, "since") == NOW - timedelta(days=1)
    assert moment("90", NOW, "since") == NOW - timedelta(seconds=90)
    assert moment(timedelta(hours=2), NOW, "since") == NOW - timedelta(hours=2)
    assert moment(None, NOW, "since") is None and moment("  ", NOW, "since") is None


def _step(name: str, state: StepState, error: str | None = None) -> Step:
    return Step(
        id=hash(name) % 1000,
        task_id=1,
        name=name,
        status=state,
        attempts=1,
        retry_limit=3,
        retryable=True,
        dependent_system="default",
        results=None,
        last_error={"class": error, "message": "boom"} if error else None,
        run_at=None,
        started_at=None,
        finished_at=None,
        created_at=NOW,
        position=0,
        idempotency_key="k",
    )


def _task(status: TaskState, steps: list[Step], **fields: object) -> Task:
    base = Task(
        id=7,
        namespace="payments",
        name="refund",
        version="2.1.0",
        status=status,
        context={},
        idempotency_key="idem-7",
        correlation_id="corr-7",
        annotations=None,
        created_at=NOW - timedelta(hours=1),
        updated_at=NOW,
        started_at=None,
        finished_at=None,
        steps=steps,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def test_matches_says_what_each_field_means() -> None:
    failed = _task(
        TaskState.ERROR,
        [_step("charge", StepState.ERROR, "PermanentError"), _step("ship", StepState.PENDING)],
    )
    assert TaskFilter(name="refund", namespace="payments", version="2.1.0").matches(failed)
    assert not TaskFilter(name="refund", version="1.0.0").matches(failed)
    assert TaskFilter(key="corr-7").matches(failed) and TaskFilter(key="idem-7").matches(failed)
    assert TaskFilter(ids=(7,)).matches(failed) and not TaskFilter(ids=(8,)).matches(failed)
    assert TaskFilter(created_since=NOW - timedelta(hours=1)).matches(failed)  # inclusive
    assert not TaskFilter(created_until=NOW - timedelta(hours=1)).matches(failed)  # exclusive
    assert TaskFilter(step="charge").matches(failed)
    assert not TaskFilter(step="ship").matches(failed)  # pending, not in error
    assert TaskFilter(step="ship", step_states=(StepState.PENDING,)).matches(failed)
    assert TaskFilter(error_class="PermanentError").matches(failed)
    assert not TaskFilter(error_class="PermanentError", step="ship").matches(failed)
    assert not TaskFilter(error_class="TimeoutError").matches(failed)
    retrying = _task(TaskState.IN_PROGRESS, [_step("charge", StepState.WAITING_RETRY, "Timeout")])
    assert TaskFilter(error_class="Timeout").matches(retrying)
    assert not TaskFilter(error_class="Timeout").matches(retrying, (TaskState.ERROR,))
    healed = _task(TaskState.COMPLETE, [_step("charge", StepState.COMPLETE, "Timeout")])
    assert not TaskFilter(error_class="Timeout").matches(healed)  # it failed, then succeeded
    assert TaskFilter(error_class="x").wanted_step_states == FAILED_STEP_STATES


def test_describe_and_summary_read_as_sentences() -> None:
    f = parse_filter(
        now=NOW, template="payments/refund", statuses=["error"], since="2h", error_class="Boom"
    )
    assert f.describe() == (
        "template payments/refund, status error, created since 2026-03-01T10:00:00Z,"
        " a step in error or waiting_retry with error class Boom"
    )
    assert TaskFilter().describe() == "every task"
    assert TaskFilter(namespace="ops", ids=(1, 2)).describe() == "namespace ops, 2 selected task(s)"
    run = BulkReport(BulkAction.RETRY, 10, 8, 2, False, ("task 3: no",), 42, True)
    assert run.summary() == (
        "8 of 10 matching tasks retried; 2 skipped (no longer matching, or refused); stopped at"
        " the limit: go on with after=42"
    )
    dry = BulkReport(BulkAction.PURGE, 1, 0, 0, True)
    assert dry.summary() == "1 task would be purged (dry run: nothing changed)"
