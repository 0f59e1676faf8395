"""evlink's charging and freshness rules as pure functions: what to do, never doing it.

Each function decides from values (a command, the car's state, the provider's
action, the time, the settings) and returns a decision; :mod:`.charging` and
:mod:`.vehicles` carry it out (database, provider, events). Nothing here awaits,
reads a clock or draws a random number, so ``tests/resolvers/test_rules.py``
states every rule as a table and runs in milliseconds.

A charging request (:func:`.charging.set_charging`) is checked in this order, and
the first check that fails answers:

1. the vehicle is the caller's: 404 / 403 (:func:`.vehicles.get_vehicle`);
2. :func:`check_caller`: the PRO tier (``FORBIDDEN_TIER``), then the provider
   link (``PROVIDER_LINK_MISSING``), then the idempotency key: 1 to 255
   printable characters (``BAD_REQUEST``);
3. under the vehicle's lock, :func:`check_replay`: a key the user sent before
   answers with its command, or ``IDEMPOTENCY_KEY_REUSED`` when it was for
   another vehicle or action; then :func:`pending_to_reuse`: a PENDING command
   of the same action answers as it is (it takes the key when it had none);
4. on the car's state, read from the provider unless it is younger than
   ``EVLINK_CHARGING_FRESH_AGE``, :func:`check_request`: the ``startCharging`` /
   ``stopCharging`` capability, plugged in (START only), not in the wished state
   already (not judged while a PENDING command of the other action is being
   superseded: the state is in motion), all ``INVALID_VEHICLE_STATE``; then no
   smart-charging policy enabled (``SMART_CHARGING_ACTIVE``).

Only a request that passes them all spends a command quota, cancels the other
action's PENDING command ("superseded"), is stored and is sent. A provider that
refuses the action (:data:`PROVIDER_REFUSALS`), on the first send or a re-send,
ends the command FAILED with its message.

The watcher's look at a PENDING command, :func:`evaluate`, in this order:

1. the car's state, seen since the command was made, is the wished one
   (:func:`state_matches`): CONFIRMED;
2. the deadline has passed: TIMED_OUT, with the last failure reason; the
   provider's unresolved action is cancelled;
3. the provider's action is unresolved: wait;
4. the provider CONFIRMED its action but the car disagrees: wait one poll
   interval after the action's completion for the state to arrive;
5. ``attempts >= EVLINK_CHARGING_MAX_ATTEMPTS``: FAILED with the provider's
   failure reason when its action ended FAILED or CANCELLED; otherwise nothing
   more is sent and the deadline decides;
6. otherwise re-send once :func:`retry_backoff` has passed, counted from the
   first look that found the action failed or lapsed; that time is stored on the
   command (``next_attempt_at``), so a restart keeps it.

Between looks the watcher waits for an event at most :func:`seconds_to_next_look`;
:func:`next_poll` doubles the poll after a quiet wait, and a look after a quiet
wait reads the provider (:func:`watcher_max_age`).

Freshness: a stored state serves reads while it is younger than a max age
(:func:`fresh_for`, :func:`is_fresh`); ``None`` (never read) is never fresh.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar
from uuid import UUID

from evlink.domain import (
    CHARGING,
    UNPLUGGED,
    ActionState,
    ChargeAction,
    ChargeStateData,
    ChargingAction,
)
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
from evlink.settings import Settings

__all__ = [
    "MAX_BACKOFF",
    "MAX_IDEMPOTENCY_KEY",
    "PROVIDER_REFUSALS",
    "Decision",
    "Refusal",
    "check_caller",
    "check_replay",
    "check_request",
    "evaluate",
    "failure_text",
    "fresh_for",
    "is_fresh",
    "is_newer_action",
    "next_poll",
    "pending_to_reuse",
    "retry_backoff",
    "seconds_to_next_look",
    "seen_since",
    "state_matches",
    "takes_key",
    "watcher_max_age",
]

MAX_IDEMPOTENCY_KEY = 255
# Seconds: the longest wait between two sends, before the jitter.
MAX_BACKOFF = 300.0
# What a provider answers when it refuses an action; it ends the command FAILED.
PROVIDER_REFUSALS: tuple[type[EvlinkError], ...] = (InvalidVehicleState, SmartChargingActive)
DID_NOT_REACH = "The vehicle did not reach the wanted state in time"


class CommandFacts(Protocol):
    """What the rules read of a :class:`~evlink.models.ChargingCommand`."""

    @property
    def action(self) -> ChargingAction: ...
    @property
    def attempts(self) -> int: ...
    @property
    def deadline_at(self) -> datetime: ...
    @property
    def next_attempt_at(self) -> datetime | None: ...
    @property
    def failure_reason(self) -> str | None: ...


class VehicleFacts(Protocol):
    """What the rules read of a :class:`~evlink.models.Vehicle` (provider blocks)."""

    @property
    def capabilities(self) -> Mapping[str, Any] | None: ...
    @property
    def smart_charging_policy(self) -> Mapping[str, Any] | None: ...


class _HasAction(Protocol):
    @property
    def action(self) -> ChargingAction: ...


_Command = TypeVar("_Command", bound=_HasAction)


# -- a request ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request refused with an error of the table before anything is sent or stored."""

    error: type[EvlinkError]
    message: str | None = None  # None: the error's own message

    def exception(self) -> EvlinkError:
        return self.error(self.message)


def check_caller(tier: Tier, *, linked: bool, idempotency_key: str | None) -> Refusal | None:
    """The caller's tier, the car's provider link, the key's length and text (step 2)."""
    if tier != Tier.PRO:
        return Refusal(ForbiddenTier)
    if not linked:
        return Refusal(ProviderLinkMissing)
    if idempotency_key is not None and not (
        0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY and idempotency_key.isprintable()
    ):
        # Printable: no control character (PostgreSQL stores no NUL) and no lone
        # surrogate (no UTF-8 for it), which GraphQL's strings can carry.
        return Refusal(
            BadRequest, f"idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters"
        )
    return None


def check_replay(
    earlier: tuple[UUID, ChargingAction], asked: tuple[UUID, ChargingAction]
) -> Refusal | None:
    """A key sent before answers with its command only for the same (vehicle, action)."""
    return None if earlier == asked else Refusal(IdempotencyKeyReused)


def pending_to_reuse(pending: Sequence[_Command], action: ChargingAction) -> _Command | None:
    """The PENDING command that already asks for ``action``, if there is one."""
    return next((command for command in pending if command.action == action), None)


def takes_key(idempotency_key: str | None, command_key: str | None) -> bool:
    """A reused PENDING command takes the request's key when it has none, so that a
    retry under that key finds it rather than making another."""
    return idempotency_key is not None and command_key is None


def state_matches(action: ChargingAction, state: ChargeStateData) -> bool:
    """Whether the vehicle is where the command wants it."""
    if action == ChargingAction.START:
        return state.power_delivery_state == CHARGING
    return state.power_delivery_state != CHARGING and state.is_charging is not True


def check_request(
    vehicle: VehicleFacts,
    state: ChargeStateData,
    action: ChargingAction,
    *,
    superseding: bool,
) -> Refusal | None:
    """The car's capability, plug, state and smart charging (step 4), in that order.
    ``superseding``: a PENDING command of the other action is being replaced."""
    capability = "startCharging" if action == ChargingAction.START else "stopCharging"
    block = (vehicle.capabilities or {}).get(capability) or {}
    if block.get("isCapable") is not True:
        return Refusal(InvalidVehicleState, f"The vehicle is not capable of {capability}")
    if action == ChargingAction.START:
        if state.is_plugged_in is False or state.power_delivery_state == UNPLUGGED:
            return Refusal(InvalidVehicleState, "The vehicle is not plugged in")
        if state_matches(action, state) and not superseding:
            return Refusal(InvalidVehicleState, "The vehicle is already charging")
    elif state_matches(action, state) and not superseding:
        return Refusal(InvalidVehicleState, "The vehicle is not charging")
    if (vehicle.smart_charging_policy or {}).get("isEnabled") is True:
        return Refusal(SmartChargingActive)
    return None


# -- the watcher ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a PENDING command after a look (:func:`evaluate`).

    ``end``: the end state to put it in (None: it stays PENDING). ``reason``: the
    failure reason it ends with, or notes. ``next_attempt_at``: when to look again
    (a re-send's time). ``schedule``: a new re-send time, so ``reason`` and
    ``next_attempt_at`` are stored. ``resend``: send the provider action again now.
    ``cancel_action``: on ending, cancel the provider's unresolved action.
    """

    end: CommandState | None = None
    reason: str | None = None
    next_attempt_at: datetime | None = None
    schedule: bool = False
    resend: bool = False
    cancel_action: bool = False


WAIT = Decision()


def evaluate(
    command: CommandFacts,
    state: ChargeStateData | None,
    action: ChargeAction | None,
    now: datetime,
    settings: Settings,
    *,
    jitter: float,
) -> Decision:
    """The watcher's decision on ``command`` (the module docstring's order).

    ``state``: the car's, as seen since the command was made (None: not seen yet).
    ``action``: the provider's latest. ``jitter``: the backoff's random factor.
    """
    if state is not None and state_matches(command.action, state):
        return Decision(end=CommandState.CONFIRMED)
    unresolved = action is not None and not action.is_resolved
    if now >= command.deadline_at:
        reason = command.failure_reason or DID_NOT_REACH
        return Decision(end=CommandState.TIMED_OUT, reason=reason, cancel_action=unresolved)
    if unresolved:
        return WAIT  # the provider is still working on it
    if action is not None and action.state == ActionState.CONFIRMED:
        # The provider says done but the car disagrees: give the state a poll to arrive.
        confirmed_at = action.completed_at or action.updated_at or now
        grace = timedelta(seconds=settings.charging_poll_interval)
        if now - confirmed_at < grace:
            return Decision(next_attempt_at=confirmed_at + grace)
    reason = failure_text(action)
    if command.attempts >= settings.charging_max_attempts:
        if action is not None and action.state in (ActionState.FAILED, ActionState.CANCELLED):
            return Decision(end=CommandState.FAILED, reason=reason)
        # Nothing more to send; the deadline decides.
        return Decision(reason=reason, next_attempt_at=command.deadline_at)
    if command.next_attempt_at is None:
        backoff = retry_backoff(settings.charging_retry_backoff, command.attempts, jitter)
        at = now + backoff
        return Decision(reason=reason, next_attempt_at=at, schedule=True, resend=now >= at)
    return Decision(resend=now >= command.next_attempt_at)


def retry_backoff(base: float, attempts: int, jitter: float) -> timedelta:
    """The wait before the next send after ``attempts`` sends: ``base`` doubled per
    send after the first, at most :data:`MAX_BACKOFF`, times ``jitter`` (0.5 to 1.5)."""
    delay = base * 2 ** max(0, attempts - 1)
    return timedelta(seconds=min(delay, MAX_BACKOFF) * jitter)


def failure_text(action: ChargeAction | None) -> str:
    """A command's failure reason, from the provider's action as it stands."""
    if action is None:
        return "The provider did not take the action"
    if action.failure_reason:
        kind = action.failure_reason.get("type") or "FAILED"
        detail = action.failure_reason.get("detail")
        return f"{kind}: {detail}" if detail else str(kind)
    if action.state == ActionState.CONFIRMED:
        return "The provider confirmed the action but the vehicle's state did not change"
    return f"The provider's action ended {action.state}"


def is_newer_action(update: ChargeAction, stored: dict[str, Any] | None) -> bool:
    """Whether a report of an action may replace the stored one: never an older one."""
    if not stored:
        return True
    stored_updated = ChargeAction.from_enode(stored).updated_at
    return (
        update.updated_at is None or stored_updated is None or update.updated_at >= stored_updated
    )


def seen_since(refreshed_at: datetime | None, created_at: datetime) -> bool:
    """evlink has read or been told the car's state since the command was made: only
    such a state may confirm it (a state from before may be a superseded command's)."""
    return refreshed_at is not None and refreshed_at >= created_at


def watcher_max_age(settings: Settings, *, fresh: bool, seen: bool) -> float:
    """How old a stored state the watcher's look may use: none after a quiet wait
    (``fresh``) or before a state was seen since the command; else the read max age."""
    return 0.0 if fresh or not seen else settings.status_max_age


def seconds_to_next_look(
    now: datetime, deadline_at: datetime, next_attempt_at: datetime | None, poll: float
) -> float:
    """The longest wait for an event: the poll, the deadline, the next send's time."""
    candidates = [poll, (deadline_at - now).total_seconds()]
    if next_attempt_at is not None:
        candidates.append((next_attempt_at - now).total_seconds())
    return max(0.0, min(candidates))


def next_poll(poll: float, *, woken: bool, settings: Settings) -> float:
    """The next poll interval: back to the setting after an event, doubled (up to the
    maximum) after a quiet wait."""
    if woken:
        return settings.charging_poll_interval
    return min(poll * 2, settings.charging_poll_max_interval)


# -- freshness ------------------------------------------------------------------------


def fresh_for(refreshed_at: datetime | None, now: datetime, max_age: float) -> float:
    """Seconds until a state read at ``refreshed_at`` must be read again (0: now)."""
    if refreshed_at is None:
        return 0.0
    return max(0.0, max_age - (now - refreshed_at).total_seconds())


def is_fresh(refreshed_at: datetime | None, now: datetime, max_age: float) -> bool:
    """Whether a state read at ``refreshed_at`` may still be served without a refresh."""
    return fresh_for(refreshed_at, now, max_age) > 0
