"""evlink's rules as tables (evlink/resolvers/rules.py): no server, no database, no clock.

Each table states one documented rule; the rows where several checks would fail at
once state the order of the checks (ARCHITECTURE.md, "Charging commands and the
CommandWatcher", and the module's docstring). `make mutate` runs these tests alone
against mutants of the module (docs/testing.md).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from evlink.domain import CHARGING, ActionState, ChargeAction, ChargeStateData, ChargingAction
from evlink.errors import (
    BadRequest,
    EvlinkError,
    ForbiddenTier,
    IdempotencyKeyReused,
    InvalidVehicleState,
    ProviderLinkMissing,
    SmartChargingActive,
)
from evlink.models.commands import CommandState
from evlink.models.users import Tier
from evlink.resolvers import rules
from evlink.resolvers.rules import DID_NOT_REACH, Decision, Refusal
from evlink.settings import Settings

START, STOP = ChargingAction.START, ChargingAction.STOP
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(
    status_max_age=60.0,
    charging_max_attempts=3,
    charging_poll_interval=2.0,
    charging_poll_max_interval=30.0,
    charging_retry_backoff=2.0,
)


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


# -- a request: the caller ------------------------------------------------------------

KEY_LENGTH = Refusal(BadRequest, "idempotency key must be 1 to 255 printable characters")


@pytest.mark.parametrize(
    ("tier", "linked", "key", "expected"),
    [
        # Tier first: a FREE or BASIC caller hears about the tier whatever else is wrong.
        (Tier.FREE, False, "", Refusal(ForbiddenTier)),
        (Tier.BASIC, False, "", Refusal(ForbiddenTier)),
        (Tier.BASIC, True, None, Refusal(ForbiddenTier)),
        # Then the provider link, then the key's length.
        (Tier.PRO, False, "", Refusal(ProviderLinkMissing)),
        (Tier.PRO, False, None, Refusal(ProviderLinkMissing)),
        (Tier.PRO, True, "", KEY_LENGTH),
        (Tier.PRO, True, "k" * 256, KEY_LENGTH),
        # Then its text: printable (GraphQL's strings may carry NUL or a lone surrogate).
        (Tier.PRO, True, "a\x00b", KEY_LENGTH),
        (Tier.PRO, True, "\ud800", KEY_LENGTH),
        (Tier.PRO, True, "line\nbreak", KEY_LENGTH),
        (Tier.PRO, True, "Küche 2026-11-30 #1", None),
        (Tier.PRO, True, "k" * 255, None),
        (Tier.PRO, True, "k", None),
        (Tier.PRO, True, None, None),
    ],
)
def test_the_caller_is_checked_tier_then_link_then_key_length(
    tier: Tier, linked: bool, key: str | None, expected: Refusal | None
) -> None:
    assert rules.check_caller(tier, linked=linked, idempotency_key=key) == expected


def test_a_refusal_is_raised_as_its_error_of_the_table() -> None:
    with_message = Refusal(InvalidVehicleState, "The vehicle is not plugged in").exception()
    assert type(with_message) is InvalidVehicleState
    assert (with_message.code, with_message.status) == ("INVALID_VEHICLE_STATE", 400)
    assert with_message.message == "The vehicle is not plugged in"
    default = Refusal(SmartChargingActive).exception()
    assert (default.code, default.status) == ("SMART_CHARGING_ACTIVE", 422)
    assert default.message == SmartChargingActive.default_message


# -- a request: replays -------------------------------------------------------------

CAR, OTHER_CAR = uuid.uuid4(), uuid.uuid4()


@pytest.mark.parametrize(
    ("earlier", "asked", "expected"),
    [
        ((CAR, START), (CAR, START), None),
        ((CAR, START), (CAR, STOP), Refusal(IdempotencyKeyReused)),
        ((CAR, START), (OTHER_CAR, START), Refusal(IdempotencyKeyReused)),
        ((CAR, STOP), (OTHER_CAR, START), Refusal(IdempotencyKeyReused)),
    ],
)
def test_a_key_sent_before_answers_only_for_the_same_vehicle_and_action(
    earlier: tuple[uuid.UUID, ChargingAction],
    asked: tuple[uuid.UUID, ChargingAction],
    expected: Refusal | None,
) -> None:
    assert rules.check_replay(earlier, asked) == expected


@dataclass(frozen=True)
class Pending:
    action: ChargingAction
    name: str = ""


@pytest.mark.parametrize(
    ("pending", "action", "expected"),
    [
        ([], START, None),
        ([Pending(STOP)], START, None),
        ([Pending(START, "start")], START, "start"),
        ([Pending(STOP, "stop"), Pending(START, "start")], START, "start"),
        ([Pending(STOP, "stop"), Pending(START, "start")], STOP, "stop"),
    ],
)
def test_a_pending_command_of_the_same_action_is_reused(
    pending: list[Pending], action: ChargingAction, expected: str | None
) -> None:
    reused = rules.pending_to_reuse(pending, action)
    assert (reused.name if reused is not None else None) == expected


@pytest.mark.parametrize(
    ("key", "command_key", "expected"),
    [
        ("retry", None, True),
        ("retry", "first", False),
        (None, None, False),
        (None, "first", False),
    ],
)
def test_a_reused_command_takes_the_requests_key_only_when_it_has_none(
    key: str | None, command_key: str | None, expected: bool
) -> None:
    assert rules.takes_key(key, command_key) is expected


# -- a request: the car ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "state", "expected"),
    [
        (START, ChargeStateData(power_delivery_state=CHARGING), True),
        (START, ChargeStateData(power_delivery_state=CHARGING, is_charging=False), True),
        (START, ChargeStateData(power_delivery_state="PLUGGED_IN:IDLE", is_charging=True), False),
        (STOP, ChargeStateData(power_delivery_state="PLUGGED_IN:IDLE"), True),
        (STOP, ChargeStateData(power_delivery_state="UNPLUGGED", is_charging=False), True),
        (STOP, ChargeStateData(power_delivery_state=CHARGING), False),
        (STOP, ChargeStateData(power_delivery_state="PLUGGED_IN:IDLE", is_charging=True), False),
        (STOP, ChargeStateData(power_delivery_state="UNKNOWN", is_charging=None), True),
    ],
)
def test_the_wished_state(action: ChargingAction, state: ChargeStateData, expected: bool) -> None:
    """START: powerDeliveryState is PLUGGED_IN:CHARGING; STOP: it is not, and isCharging
    is not true."""
    assert rules.state_matches(action, state) is expected


CAPABLE = {"startCharging": {"isCapable": True}, "stopCharging": {"isCapable": True}}


@dataclass(frozen=True)
class Car:
    capabilities: dict[str, Any] | None = field(default_factory=lambda: dict(CAPABLE))
    smart_charging_policy: dict[str, Any] | None = field(
        default_factory=lambda: {"isEnabled": False}
    )


SMART = {"isEnabled": True}
IDLE = ChargeStateData(power_delivery_state="PLUGGED_IN:IDLE", is_plugged_in=True)
CHARGING_NOW = ChargeStateData(power_delivery_state=CHARGING, is_plugged_in=True, is_charging=True)
UNPLUGGED = ChargeStateData(power_delivery_state="UNPLUGGED", is_plugged_in=False)
NOT_CAPABLE_START = Refusal(InvalidVehicleState, "The vehicle is not capable of startCharging")
NOT_CAPABLE_STOP = Refusal(InvalidVehicleState, "The vehicle is not capable of stopCharging")
NOT_PLUGGED = Refusal(InvalidVehicleState, "The vehicle is not plugged in")
ALREADY = Refusal(InvalidVehicleState, "The vehicle is already charging")
NOT_CHARGING = Refusal(InvalidVehicleState, "The vehicle is not charging")
SMART_ON = Refusal(SmartChargingActive)


@pytest.mark.parametrize(
    ("car", "state", "action", "superseding", "expected"),
    [
        # 1. the capability, before anything else
        (
            Car(capabilities={}, smart_charging_policy=SMART),
            UNPLUGGED,
            START,
            False,
            NOT_CAPABLE_START,
        ),
        (Car(capabilities=None), IDLE, START, False, NOT_CAPABLE_START),
        (Car(capabilities={"startCharging": None}), IDLE, START, False, NOT_CAPABLE_START),
        (
            Car(capabilities={"startCharging": {"isCapable": "true"}}),
            IDLE,
            START,
            False,
            NOT_CAPABLE_START,
        ),
        (
            Car(capabilities={"startCharging": {"isCapable": True}}),
            CHARGING_NOW,
            STOP,
            False,
            NOT_CAPABLE_STOP,
        ),
        (
            Car(capabilities={"stopCharging": {"isCapable": True}}),
            IDLE,
            START,
            False,
            NOT_CAPABLE_START,
        ),
        # 2. plugged in (START only), before the state and smart charging
        (Car(smart_charging_policy=SMART), UNPLUGGED, START, False, NOT_PLUGGED),
        (Car(), UNPLUGGED, START, True, NOT_PLUGGED),  # superseding does not skip it
        (Car(), ChargeStateData(power_delivery_state="UNPLUGGED"), START, False, NOT_PLUGGED),
        (
            Car(),
            ChargeStateData(power_delivery_state="PLUGGED_IN:IDLE", is_plugged_in=False),
            START,
            False,
            NOT_PLUGGED,
        ),
        (Car(), ChargeStateData(power_delivery_state="UNKNOWN"), START, False, None),
        (Car(), UNPLUGGED, STOP, True, None),
        # 3. not in the wished state already, unless superseding; before smart charging
        (Car(smart_charging_policy=SMART), CHARGING_NOW, START, False, ALREADY),
        (Car(smart_charging_policy=SMART), IDLE, STOP, False, NOT_CHARGING),
        (Car(), UNPLUGGED, STOP, False, NOT_CHARGING),
        (Car(), CHARGING_NOW, START, True, None),
        (Car(), IDLE, STOP, True, None),
        # 4. the smart-charging policy, last
        (Car(smart_charging_policy=SMART), IDLE, START, False, SMART_ON),
        (Car(smart_charging_policy=SMART), CHARGING_NOW, STOP, False, SMART_ON),
        (Car(smart_charging_policy=SMART), CHARGING_NOW, START, True, SMART_ON),
        (Car(smart_charging_policy={"isEnabled": "yes"}), IDLE, START, False, None),
        (Car(smart_charging_policy=None), IDLE, START, False, None),
        (Car(smart_charging_policy={}), CHARGING_NOW, STOP, False, None),
        (Car(), IDLE, START, False, None),
        (Car(), CHARGING_NOW, STOP, False, None),
    ],
)
def test_the_car_is_checked_capability_plug_state_then_smart_charging(
    car: Car,
    state: ChargeStateData,
    action: ChargingAction,
    superseding: bool,
    expected: Refusal | None,
) -> None:
    assert rules.check_request(car, state, action, superseding=superseding) == expected


def test_provider_refusals_are_the_two_car_state_errors() -> None:
    """What a provider answers when it refuses an action: those end the command FAILED;
    any other provider error leaves it PENDING for the watcher (tests/resolvers/
    test_rules_against_a_permissive_provider.py watches both happen)."""
    assert set(rules.PROVIDER_REFUSALS) == {InvalidVehicleState, SmartChargingActive}
    assert all(issubclass(error, EvlinkError) for error in rules.PROVIDER_REFUSALS)


# -- the watcher ----------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    action: ChargingAction = START
    attempts: int = 1
    deadline_at: datetime = NOW + seconds(30)
    next_attempt_at: datetime | None = None
    failure_reason: str | None = None


def action_of(state: str, **fields: Any) -> ChargeAction:
    return ChargeAction(id="action-1", target_id="car-1", kind="START", state=state, **fields)


PENDING = action_of(ActionState.PENDING)
FAILED = action_of(ActionState.FAILED, failure_reason={"type": "NO_RESPONSE", "detail": "Car"})
CANCELLED = action_of(ActionState.CANCELLED)
CONFIRMED_NOW = action_of(ActionState.CONFIRMED, completed_at=NOW)
NOT_TAKEN = "The provider did not take the action"
CONFIRMED_BUT = "The provider confirmed the action but the vehicle's state did not change"
TWO_S = seconds(2)  # the backoff after one send (2 s, jitter 1), and the poll interval

EVALUATE = [
    # 1. the state matches: CONFIRMED, whatever the deadline, the action or the attempts
    ("state matches", Command(), CHARGING_NOW, None, NOW, Decision(end=CommandState.CONFIRMED)),
    (
        "matches past the deadline",
        Command(deadline_at=NOW, attempts=9),
        CHARGING_NOW,
        FAILED,
        NOW,
        Decision(end=CommandState.CONFIRMED),
    ),
    (
        "STOP matches",
        Command(action=STOP),
        IDLE,
        PENDING,
        NOW,
        Decision(end=CommandState.CONFIRMED),
    ),
    # 2. the deadline: TIMED_OUT with the last failure reason; an unresolved action cancelled
    (
        "deadline, action unresolved",
        Command(deadline_at=NOW, failure_reason="outage"),
        IDLE,
        PENDING,
        NOW,
        Decision(end=CommandState.TIMED_OUT, reason="outage", cancel_action=True),
    ),
    (
        "deadline, no action",
        Command(deadline_at=NOW - seconds(1)),
        None,
        None,
        NOW,
        Decision(end=CommandState.TIMED_OUT, reason=DID_NOT_REACH),
    ),
    (
        "deadline, action failed",
        Command(deadline_at=NOW),
        None,
        FAILED,
        NOW,
        Decision(end=CommandState.TIMED_OUT, reason=DID_NOT_REACH),
    ),
    (
        "deadline, attempts spent",
        Command(deadline_at=NOW, attempts=3),
        IDLE,
        CANCELLED,
        NOW,
        Decision(end=CommandState.TIMED_OUT, reason=DID_NOT_REACH),
    ),
    # 3. the provider's action unresolved: wait, even with the attempts spent
    ("action pending", Command(), IDLE, PENDING, NOW, Decision()),
    ("action pending, attempts spent", Command(attempts=3), IDLE, PENDING, NOW, Decision()),
    # 4. the provider CONFIRMED, the car disagrees: one poll interval for the state
    (
        "confirmed just now",
        Command(attempts=3),
        IDLE,
        CONFIRMED_NOW,
        NOW,
        Decision(next_attempt_at=NOW + TWO_S),
    ),
    (
        "confirmed 1 s ago",
        Command(),
        None,
        action_of(ActionState.CONFIRMED, completed_at=NOW - seconds(1)),
        NOW,
        Decision(next_attempt_at=NOW + seconds(1)),
    ),
    (
        "confirmed, only updatedAt",
        Command(),
        IDLE,
        action_of(ActionState.CONFIRMED, updated_at=NOW - seconds(1.5)),
        NOW,
        Decision(next_attempt_at=NOW + seconds(0.5)),
    ),
    (
        "confirmed, completedAt before updatedAt",
        Command(),
        IDLE,
        action_of(
            ActionState.CONFIRMED, completed_at=NOW - seconds(1), updated_at=NOW - seconds(10)
        ),
        NOW,
        Decision(next_attempt_at=NOW + seconds(1)),
    ),
    (
        "confirmed, no times",
        Command(),
        IDLE,
        action_of(ActionState.CONFIRMED),
        NOW,
        Decision(next_attempt_at=NOW + TWO_S),
    ),
    (
        "confirmed a poll ago",
        Command(attempts=3),
        IDLE,
        action_of(ActionState.CONFIRMED, completed_at=NOW - TWO_S),
        NOW,
        Decision(reason=CONFIRMED_BUT, next_attempt_at=NOW + seconds(30)),
    ),
    # 5. the attempts spent: FAILED only when the provider's action failed or was cancelled
    (
        "spent, action failed",
        Command(attempts=3),
        IDLE,
        FAILED,
        NOW,
        Decision(end=CommandState.FAILED, reason="NO_RESPONSE: Car"),
    ),
    (
        "spent, action cancelled",
        Command(attempts=4),
        IDLE,
        CANCELLED,
        NOW,
        Decision(end=CommandState.FAILED, reason="The provider's action ended CANCELLED"),
    ),
    (
        "spent, no action",
        Command(attempts=3),
        IDLE,
        None,
        NOW,
        Decision(reason=NOT_TAKEN, next_attempt_at=NOW + seconds(30)),
    ),
    (
        "spent, an unknown end",
        Command(attempts=3),
        None,
        action_of("EXPIRED"),
        NOW,
        Decision(reason="The provider's action ended EXPIRED", next_attempt_at=NOW + seconds(30)),
    ),
    # 6. a re-send: scheduled at now + backoff (stored), then sent once that time has come
    (
        "one attempt left",
        Command(attempts=2),
        IDLE,
        FAILED,
        NOW,
        Decision(reason="NO_RESPONSE: Car", next_attempt_at=NOW + seconds(4), schedule=True),
    ),
    (
        "not taken",
        Command(),
        None,
        None,
        NOW,
        Decision(reason=NOT_TAKEN, next_attempt_at=NOW + TWO_S, schedule=True),
    ),
    (
        "confirmed long ago",
        Command(),
        IDLE,
        action_of(ActionState.CONFIRMED, completed_at=NOW - seconds(5)),
        NOW,
        Decision(reason=CONFIRMED_BUT, next_attempt_at=NOW + TWO_S, schedule=True),
    ),
    (
        "scheduled, not yet",
        Command(next_attempt_at=NOW + seconds(0.001)),
        IDLE,
        FAILED,
        NOW,
        Decision(),
    ),
    ("scheduled, due now", Command(next_attempt_at=NOW), IDLE, FAILED, NOW, Decision(resend=True)),
    (
        "scheduled, overdue",
        Command(next_attempt_at=NOW - seconds(5), failure_reason="x"),
        None,
        None,
        NOW,
        Decision(resend=True),
    ),
]


@pytest.mark.parametrize(
    ("command", "state", "action", "now", "expected"),
    [row[1:] for row in EVALUATE],
    ids=[row[0] for row in EVALUATE],
)
def test_the_watcher_decides_in_the_documented_order(
    command: Command,
    state: ChargeStateData | None,
    action: ChargeAction | None,
    now: datetime,
    expected: Decision,
) -> None:
    assert rules.evaluate(command, state, action, now, SETTINGS, jitter=1.0) == expected


def test_a_resend_due_at_once_is_scheduled_and_sent_in_the_same_look() -> None:
    """With no backoff the stored time is now: the same look sends (no extra wait)."""
    no_backoff = Settings(charging_retry_backoff=0.0)
    decision = rules.evaluate(Command(), None, FAILED, NOW, no_backoff, jitter=1.0)
    assert decision == Decision(
        reason="NO_RESPONSE: Car", next_attempt_at=NOW, schedule=True, resend=True
    )


def test_the_jitter_scales_the_scheduled_backoff() -> None:
    early = rules.evaluate(Command(attempts=2), None, FAILED, NOW, SETTINGS, jitter=0.5)
    late = rules.evaluate(Command(attempts=2), None, FAILED, NOW, SETTINGS, jitter=1.5)
    assert (early.next_attempt_at, late.next_attempt_at) == (NOW + TWO_S, NOW + seconds(6))


@pytest.mark.parametrize(
    ("base", "attempts", "jitter", "expected"),
    [
        (2.0, 0, 1.0, 2.0),
        (2.0, 1, 1.0, 2.0),
        (2.0, 2, 1.0, 4.0),
        (2.0, 3, 1.0, 8.0),
        (2.0, 3, 0.5, 4.0),
        (2.0, 3, 1.5, 12.0),
        (2.0, 9, 1.0, 300.0),  # 512 s capped
        (2.0, 9, 1.5, 450.0),  # the jitter applies after the cap
        (150.0, 2, 1.0, 300.0),
        (149.0, 2, 1.0, 298.0),
        (0.0, 5, 1.0, 0.0),
    ],
)
def test_the_backoff_doubles_per_send_up_to_300_s_times_the_jitter(
    base: float, attempts: int, jitter: float, expected: float
) -> None:
    assert rules.retry_backoff(base, attempts, jitter) == seconds(expected)


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (None, NOT_TAKEN),
        (FAILED, "NO_RESPONSE: Car"),
        (action_of(ActionState.FAILED, failure_reason={"type": "CONFLICT"}), "CONFLICT"),
        (action_of(ActionState.FAILED, failure_reason={"detail": "Gone"}), "FAILED: Gone"),
        (action_of(ActionState.FAILED, failure_reason={"type": None, "detail": ""}), "FAILED"),
        (
            action_of(ActionState.CANCELLED, failure_reason={}),
            "The provider's action ended CANCELLED",
        ),
        (action_of(ActionState.CONFIRMED), CONFIRMED_BUT),
        (action_of(ActionState.FAILED), "The provider's action ended FAILED"),
    ],
)
def test_the_failure_reason_names_the_providers_own(
    action: ChargeAction | None, expected: str
) -> None:
    assert rules.failure_text(action) == expected


def _stored(updated_at: str | None) -> dict[str, Any]:
    return {"id": "action-1", "state": "PENDING", "updatedAt": updated_at}


@pytest.mark.parametrize(
    ("update", "stored", "expected"),
    [
        (action_of("CONFIRMED", updated_at=NOW), None, True),
        (action_of("CONFIRMED", updated_at=NOW), {}, True),
        (action_of("CONFIRMED"), _stored("2025-06-01T12:00:01.000Z"), True),
        (action_of("CONFIRMED", updated_at=NOW), _stored(None), True),
        (action_of("CONFIRMED", updated_at=NOW), _stored("2025-06-01T11:59:59.000Z"), True),
        (action_of("CONFIRMED", updated_at=NOW), _stored("2025-06-01T12:00:00.000Z"), True),
        (action_of("PENDING", updated_at=NOW), _stored("2025-06-01T12:00:00.001Z"), False),
    ],
)
def test_an_older_report_of_an_action_never_replaces_a_newer_one(
    update: ChargeAction, stored: dict[str, Any] | None, expected: bool
) -> None:
    assert rules.is_newer_action(update, stored) is expected


@pytest.mark.parametrize(
    ("refreshed_at", "expected"),
    [(None, False), (NOW - seconds(0.001), False), (NOW, True), (NOW + seconds(1), True)],
)
def test_only_a_state_seen_since_the_command_was_made_confirms_it(
    refreshed_at: datetime | None, expected: bool
) -> None:
    assert rules.seen_since(refreshed_at, NOW) is expected


@pytest.mark.parametrize(
    ("fresh", "seen", "expected"),
    [(False, True, 60.0), (True, True, 0.0), (False, False, 0.0), (True, False, 0.0)],
)
def test_the_watcher_asks_the_provider_after_a_quiet_wait_or_before_a_new_state(
    fresh: bool, seen: bool, expected: float
) -> None:
    assert rules.watcher_max_age(SETTINGS, fresh=fresh, seen=seen) == expected


@pytest.mark.parametrize(
    ("deadline", "next_attempt", "poll", "expected"),
    [
        (10.0, None, 2.0, 2.0),
        (1.5, None, 2.0, 1.5),
        (10.0, 0.5, 2.0, 0.5),
        (0.25, 0.5, 2.0, 0.25),
        (10.0, 3.0, 2.0, 2.0),
        (-1.0, None, 2.0, 0.0),
        (10.0, -3.0, 2.0, 0.0),
    ],
)
def test_the_watcher_waits_at_most_the_poll_the_deadline_or_the_next_send(
    deadline: float, next_attempt: float | None, poll: float, expected: float
) -> None:
    next_at = None if next_attempt is None else NOW + seconds(next_attempt)
    assert rules.seconds_to_next_look(NOW, NOW + seconds(deadline), next_at, poll) == expected


@pytest.mark.parametrize(
    ("poll", "woken", "expected"),
    [
        (8.0, True, 2.0),
        (2.0, False, 4.0),
        (8.0, False, 16.0),
        (16.0, False, 30.0),
        (30.0, False, 30.0),
    ],
)
def test_an_event_resets_the_poll_and_a_quiet_wait_doubles_it_up_to_the_maximum(
    poll: float, woken: bool, expected: float
) -> None:
    assert rules.next_poll(poll, woken=woken, settings=SETTINGS) == expected


# -- freshness ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "fresh_for", "fresh"),
    [
        (None, 0.0, False),  # never read
        (0.0, 60.0, True),
        (10.0, 50.0, True),
        (59.5, 0.5, True),
        (60.0, 0.0, False),  # exactly the max age: read again
        (61.0, 0.0, False),
        (-5.0, 65.0, True),  # read "in the future" (another instance's clock)
    ],
)
def test_a_stored_state_serves_reads_while_younger_than_the_max_age(
    age: float | None, fresh_for: float, fresh: bool
) -> None:
    refreshed_at = None if age is None else NOW - seconds(age)
    assert rules.fresh_for(refreshed_at, NOW, 60.0) == fresh_for
    assert rules.is_fresh(refreshed_at, NOW, 60.0) is fresh


def test_a_max_age_of_zero_never_serves_a_stored_state() -> None:
    assert rules.is_fresh(NOW, NOW, 0.0) is False
    assert rules.fresh_for(NOW - seconds(1), NOW, 0.0) == 0.0
