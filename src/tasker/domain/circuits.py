"""The circuit breaker of a dependent system and the in-flight limits of a claim, as pure functions.

A circuit is `closed` (steps run), `open` (its steps are not claimed, so they wait without spending
attempts) or `half_open` (one probe step goes through). It opens after `failure_threshold`
consecutive failures that are the system's fault (`tasker.domain.failures.system_evidence`); once
its cool-down is over, one claim turns it half-open and takes a single probe. The probe's success
closes it; its failure opens it again with the cool-down doubled, up to `max_cooldown_seconds`, and
gives the probe its attempt back, so an outage of any length never exhausts a step's retries. An
answer from the system (a success, a refusal, a handler's own bug) ends a closed circuit's streak.

Each function takes a `Circuit` and returns the circuit it becomes (and the transition to record,
if any); `tasker.store.systems` reads the row, applies the function and writes the result. Where
several workers race for one change (turning a circuit half-open, taking over a lost probe,
resetting a streak without locking the row), the store's UPDATE repeats the condition in its WHERE
clause so that exactly one of them wins; tests/integration/test_circuit_sql.py checks those
statements against these functions on both stores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import Enum, StrEnum
from typing import Any

from tasker.domain.failures import DEFAULT_MAX_OUTAGE_SECONDS, GAVE_UP, outage_verdict
from tasker.domain.fairness import scope_of
from tasker.domain.rates import RateLimit
from tasker.domain.records import FailureRecord
from tasker.domain.states import StepState

DEFAULT_FAILURE_THRESHOLD = 5
DEFAULT_COOLDOWN_SECONDS = 5.0
DEFAULT_MAX_COOLDOWN_SECONDS = 30.0
#: No cool-down is longer than a day, whatever a row says (rows written before settings were
#: validated).
MAX_COOLDOWN_SECONDS = 86_400.0
#: No system may keep steps waiting longer than a week, whatever its row says.
MAX_OUTAGE_CAP_SECONDS = 7 * 86_400.0
#: `probe_step_id` while a claim transaction is choosing the probe (it never outlives that
#: transaction: the claim records the probe's step id, or None, before it commits).
RESERVED = -1


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


C = CircuitState

#: The moves of a circuit. The probe's outcome is recorded from whatever state the circuit is in
#: when it arrives: normally half-open, but an operator may have reset the circuit meanwhile (and
#: it may have opened again), hence `closed -> closed` ("probe succeeded") and `open -> open`
#: ("probe failed").
CIRCUIT_TRANSITIONS: dict[CircuitState, frozenset[CircuitState]] = {
    C.CLOSED: frozenset({C.OPEN, C.CLOSED}),
    C.OPEN: frozenset({C.HALF_OPEN, C.CLOSED, C.OPEN}),
    C.HALF_OPEN: frozenset({C.CLOSED, C.OPEN}),
}


def seconds(value: float | None, default: float, cap: float = MAX_COOLDOWN_SECONDS) -> float:
    """A stored duration as a usable number of seconds: missing, non-finite or non-positive values
    fall back to the default, and none exceeds `cap` (a bad row must not crash every worker)."""
    if value is None or not math.isfinite(value) or value <= 0:
        return default
    return min(value, cap)


@dataclass(frozen=True)
class Circuit:
    """One dependent system's breaker: its settings (None: the default) and where it stands."""

    name: str
    state: CircuitState = C.CLOSED
    consecutive_failures: int = 0
    failure_threshold: int | None = None
    cooldown_seconds: float | None = None
    max_cooldown_seconds: float | None = None
    #: The cool-down of the current opening (it doubles with each failed probe).
    current_cooldown_seconds: float | None = None
    opened_at: datetime | None = None
    open_until: datetime | None = None
    #: The step let through as the probe of a half-open circuit (`RESERVED` while one is chosen).
    probe_step_id: int | None = None
    #: When the current streak of failures that are the system's fault began (None: it answers).
    failing_since: datetime | None = None
    max_outage_seconds: float | None = None
    max_in_flight: int | None = None

    @classmethod
    def of(cls, row: Any) -> Circuit:
        """The circuit of a `tasker_dependent_systems` row (any object with its column names)."""
        return cls(
            name=row.name,
            state=CircuitState(row.circuit_state),
            consecutive_failures=row.consecutive_failures,
            failure_threshold=row.failure_threshold,
            cooldown_seconds=row.cooldown_seconds,
            max_cooldown_seconds=row.max_cooldown_seconds,
            current_cooldown_seconds=row.current_cooldown_seconds,
            opened_at=row.opened_at,
            open_until=row.open_until,
            probe_step_id=row.probe_step_id,
            failing_since=row.failing_since,
            max_outage_seconds=row.max_outage_seconds,
            max_in_flight=row.max_in_flight,
        )

    @property
    def threshold(self) -> int:
        return self.failure_threshold or DEFAULT_FAILURE_THRESHOLD

    @property
    def base_cooldown(self) -> float:
        return seconds(self.cooldown_seconds, DEFAULT_COOLDOWN_SECONDS)

    @property
    def cooldown_cap(self) -> float:
        return max(
            seconds(self.max_cooldown_seconds, DEFAULT_MAX_COOLDOWN_SECONDS), self.base_cooldown
        )

    @property
    def outage_limit(self) -> float:
        """How long steps wait for this system while it answers nothing."""
        return seconds(
            self.max_outage_seconds, DEFAULT_MAX_OUTAGE_SECONDS, cap=MAX_OUTAGE_CAP_SECONDS
        )


#: The columns of `tasker_dependent_systems` that the breaker changes (settings are the operator's).
STATE_COLUMNS = (
    "circuit_state",
    "consecutive_failures",
    "current_cooldown_seconds",
    "opened_at",
    "open_until",
    "probe_step_id",
    "failing_since",
)


def columns(c: Circuit, *names: str) -> dict[str, Any]:
    """The circuit's breaker state as column values to write: `names` of `STATE_COLUMNS`, or all."""
    values: dict[str, Any] = {
        "circuit_state": c.state.value,
        "consecutive_failures": c.consecutive_failures,
        "current_cooldown_seconds": c.current_cooldown_seconds,
        "opened_at": c.opened_at,
        "open_until": c.open_until,
        "probe_step_id": c.probe_step_id,
        "failing_since": c.failing_since,
    }
    return {n: values[n] for n in names} if names else values


@dataclass(frozen=True)
class CircuitTransition:
    src: CircuitState
    dst: CircuitState
    reason: str


@dataclass(frozen=True)
class CircuitChange:
    """What a circuit becomes, and the transition to record when its state moved."""

    circuit: Circuit
    transition: CircuitTransition | None = None


# -- outcomes of attempts --------------------------------------------------------------------------


def _closed(c: Circuit) -> Circuit:
    """`c` closed with its failure streak, cool-down, probe and outage clock forgotten."""
    return replace(
        c,
        state=C.CLOSED,
        consecutive_failures=0,
        current_cooldown_seconds=None,
        open_until=None,
        probe_step_id=None,
        failing_since=None,
    )


def on_probe_success(c: Circuit) -> CircuitChange:
    """The probe went through: the system is back. The circuit closes and forgets its failures."""
    closed = _closed(c)
    return CircuitChange(closed, CircuitTransition(c.state, C.CLOSED, "probe succeeded"))


def on_probe_failure(c: Circuit, now: datetime, *, failures: int = 0) -> CircuitChange:
    """The probe failed (the system's fault): open again with the cool-down doubled, up to the cap.

    `failures` counts the other failures of the same cycle; the probe's own is added here.
    """
    cooldown = min(seconds(c.current_cooldown_seconds, c.base_cooldown) * 2, c.cooldown_cap)
    reopened = replace(
        c,
        state=C.OPEN,
        consecutive_failures=c.consecutive_failures + failures + 1,
        current_cooldown_seconds=cooldown,
        opened_at=now,
        open_until=now + timedelta(seconds=cooldown),
        probe_step_id=None,
        failing_since=c.failing_since or now,
    )
    reason = f"probe failed; next probe in {cooldown:g}s"
    return CircuitChange(reopened, CircuitTransition(c.state, C.OPEN, reason))


def on_failures(c: Circuit, now: datetime, failures: int) -> CircuitChange:
    """`failures` more failures that are the system's fault (from any number of workers).

    They extend the streak (which began now, or goes on); a closed circuit whose streak reaches its
    threshold opens for the base cool-down. An open or half-open circuit only counts them.
    """
    total = c.consecutive_failures + failures
    since = c.failing_since or now
    if c.state == C.CLOSED and total >= c.threshold:
        base = c.base_cooldown
        opened = replace(
            c,
            state=C.OPEN,
            consecutive_failures=total,
            current_cooldown_seconds=base,
            opened_at=now,
            open_until=now + timedelta(seconds=base),
            probe_step_id=None,
            failing_since=since,
        )
        reason = (
            f"{total} consecutive retryable failures (threshold {c.threshold}); probe in {base:g}s"
        )
        return CircuitChange(opened, CircuitTransition(C.CLOSED, C.OPEN, reason))
    return CircuitChange(replace(c, consecutive_failures=total, failing_since=since))


def after_cycle(
    c: Circuit,
    now: datetime,
    *,
    failures: int = 0,
    probe_ok: bool = False,
    probe_failed: bool = False,
) -> CircuitChange:
    """What one cycle's outcomes of this system do to its circuit: a probe's success wins, then a
    probe's failure, then the count of other failures that are the system's fault."""
    if probe_ok:
        return on_probe_success(c)
    if probe_failed:
        return on_probe_failure(c, now, failures=failures)
    return on_failures(c, now, failures)


def on_answer(c: Circuit) -> Circuit:
    """The system answered (and no failure of this cycle says otherwise): a closed circuit's streak
    ends. Open and half-open circuits wait for their probe. Changes `ANSWER_COLUMNS` only."""
    if c.state != C.CLOSED:
        return c
    return replace(c, consecutive_failures=0, failing_since=None)


ANSWER_COLUMNS = ("consecutive_failures", "failing_since")


def on_reset(c: Circuit) -> CircuitChange:
    """An operator closes the circuit and clears its streak (`tasker systems reset`). Changes
    `RESET_COLUMNS` only."""
    closed = _closed(c)
    moved = CircuitTransition(c.state, C.CLOSED, "reset by an operator")
    return CircuitChange(closed, moved if c.state != C.CLOSED else None)


RESET_COLUMNS = tuple(n for n in STATE_COLUMNS if n != "opened_at")


# -- claims ----------------------------------------------------------------------------------------


class Access(Enum):
    """What a claim may take of a system's steps, as far as its circuit goes."""

    FREE = "free"  # closed: any number, within the limits
    BLOCKED = "blocked"  # none
    COOLDOWN_OVER = "cooldown_over"  # open and due: turn it half-open and take one probe
    PROBE_IF_LOST = "probe_if_lost"  # half-open: one probe, if the last one's worker lost it


def claim_access(c: Circuit, now: datetime) -> Access:
    if c.state == C.CLOSED:
        return Access.FREE
    if c.state == C.OPEN:
        due = c.open_until is not None and c.open_until <= now
        return Access.COOLDOWN_OVER if due else Access.BLOCKED
    return Access.PROBE_IF_LOST


def on_cooldown_elapsed(c: Circuit, now: datetime) -> CircuitChange | None:
    """An open circuit whose cool-down is over turns half-open with its probe reserved (None when
    it is not due). Changes `COOLDOWN_COLUMNS` only."""
    if claim_access(c, now) != Access.COOLDOWN_OVER:
        return None
    half = replace(c, state=C.HALF_OPEN, probe_step_id=RESERVED)
    moved = CircuitTransition(C.OPEN, C.HALF_OPEN, "cool-down over: one probe goes through")
    return CircuitChange(half, moved)


COOLDOWN_COLUMNS = ("circuit_state", "probe_step_id")


def probe_lost(c: Circuit, probe_state: StepState | str | None) -> bool:
    """Whether a half-open circuit may let a new probe through: its probe (whose step is now in
    `probe_state`, None when there is no such step) is no longer running."""
    if c.state != C.HALF_OPEN:
        return False
    return c.probe_step_id is None or probe_state != StepState.IN_PROGRESS


def take_over_probe(c: Circuit) -> Circuit:
    """Reserve the probe of a half-open circuit whose probe was lost. Changes `probe_step_id`."""
    return replace(c, probe_step_id=RESERVED)


# -- in-flight limits ------------------------------------------------------------------------------


def room(limits: Mapping[str, int | None], busy: Mapping[str, int]) -> dict[str, int]:
    """Steps that may still start under each limit (`max_in_flight`; None: no limit), given how many
    run now."""
    return {n: max(0, lim - busy.get(n, 0)) for n, lim in limits.items() if lim is not None}


class Admission(Enum):
    """What a claim does with a due step (`ClaimPlan.admit`)."""

    #: Claim it.
    TAKE = "take"
    #: Leave it: its system is blocked, or an in-flight limit is full.
    LEAVE = "leave"
    #: Its system's rate limit is used up: move it to when a slot frees (`tasker.domain.rates`).
    DEFER = "defer"
    #: Its fair-share key is full (`tasker.domain.fairness`): it waits its turn where it is.
    WAIT_KEY = "wait_key"


@dataclass
class ClaimPlan:
    """What a claim must respect now: systems it may not touch, and room left under each limit."""

    blocked: set[str] = field(default_factory=set)
    system_room: dict[str, int] = field(default_factory=dict)
    namespace_room: dict[str, int] = field(default_factory=dict)
    probes: set[str] = field(default_factory=set)
    #: Starts left in the window of each rate-limited system (`tasker.domain.rates.room`), and the
    #: time they were counted at (after the systems' locks were taken).
    rate_room: dict[str, int] = field(default_factory=dict)
    rate_now: datetime | None = None
    #: Each rate-limited system's limit, as read under its lock.
    rates: dict[str, RateLimit] = field(default_factory=dict)
    #: Fair share: the limit of each scope, and the room of each key now running steps.
    key_limits: dict[str, int] = field(default_factory=dict)
    key_room: dict[str, int] = field(default_factory=dict)
    #: Claims take prioritized steps too (`tasker.domain.priorities`): merge the two queues.
    prioritized: bool = False

    @property
    def unrestricted(self) -> bool:
        return not (
            self.blocked
            or self.system_room
            or self.namespace_room
            or self.rate_room
            or self.key_limits
        )

    def limit_probes(self) -> None:
        """A half-open system lets one step through, whatever its limit; a system with no room left
        is blocked (one out of rate-limit room is not: its due steps are deferred)."""
        for name in self.probes:
            self.system_room[name] = min(self.system_room.get(name, 1), 1)
        for name, left in self.system_room.items():
            if left <= 0:
                self.blocked.add(name)

    def full_keys(self) -> list[str]:
        """Fair-share keys with no room left: their steps are passed over in SQL."""
        return sorted(k for k, left in self.key_room.items() if left <= 0)

    def admit(self, system: str, namespace: str, key: str | None = None) -> Admission:
        """Take one unit of room for a step of this system, namespace and fair-share key, if every
        limit has room; else say why not."""
        if system in self.blocked:
            return Admission.LEAVE
        if self.system_room.get(system, 1) <= 0 or self.namespace_room.get(namespace, 1) <= 0:
            return Admission.LEAVE
        limit = None if key is None else self.key_limits.get(scope_of(key))
        if key is not None and limit is not None and self.key_room.setdefault(key, limit) <= 0:
            return Admission.WAIT_KEY
        if self.rate_room.get(system, 1) <= 0:
            return Admission.DEFER
        if system in self.system_room:
            self.system_room[system] -= 1
        if namespace in self.namespace_room:
            self.namespace_room[namespace] -= 1
        if system in self.rate_room:
            self.rate_room[system] -= 1
        if key is not None and key in self.key_room:
            self.key_room[key] -= 1
        return Admission.TAKE


# -- the outage hold -------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutageDecision:
    """What becomes of an attempt that spent a step's last try on a failure that is its system's
    fault: the step waits for the system (`hold`), or it fails."""

    hold: bool
    state: StepState
    refund_attempt: bool
    #: Seconds until the step is tried again; None keeps the outcome's own delay.
    retry_delay: float | None
    error: FailureRecord


def outage_decision(
    c: Circuit, *, error: FailureRecord | None, attempt: int, now: datetime
) -> OutageDecision:
    """The outage promise for one step (`tasker.domain.failures.outage_verdict`).

    While the system has answered nothing since the step's first failed attempt, the step does not
    fail: its last attempt is given back and it waits in `waiting_retry`, tried again at the
    system's cool-down pace; its failures keep counting towards the circuit, whose probes decide
    when it runs once it opens. After `max_outage_seconds` of silence (default an hour), or when
    the system answered other steps meanwhile, it fails with an error that says which.
    """
    limit = c.outage_limit
    verdict = outage_verdict(
        failing_since=c.failing_since,
        now=now,
        max_outage_seconds=limit,
        unanswered_failures=c.consecutive_failures + 1,
        attempts=attempt,
    )
    out: FailureRecord = {**error} if error is not None else {"class": "Error", "message": ""}
    message = str(out.get("message", ""))
    suffix = GAVE_UP.format(attempt)
    if message.endswith(suffix):
        message = message[: -len(suffix)]
    if verdict.hold:
        out["message"] = (
            f"{message} (waiting for '{c.name}': it has answered nothing for "
            f"{verdict.silent_seconds:.0f}s; attempts are not spent while it is down, "
            f"up to max_outage_seconds={limit:g})"
        )
        out["waiting_for_system"] = c.name
        wait = seconds(c.current_cooldown_seconds or c.cooldown_seconds, DEFAULT_COOLDOWN_SECONDS)
        return OutageDecision(True, StepState.WAITING_RETRY, True, wait, out)
    reason = (
        f"'{c.name}' has answered nothing for {verdict.silent_seconds:.0f}s, past its "
        f"max_outage_seconds={limit:g}"
        if verdict.silent_seconds >= limit
        else f"'{c.name}' answered other steps meanwhile"
    )
    out["message"] = f"{message}{suffix} ({reason})"
    return OutageDecision(False, StepState.ERROR, False, None, out)
