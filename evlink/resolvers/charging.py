"""Charging control that is confirmed: the set_charging use case and the command watcher.

:func:`set_charging` checks the request (owner, tier, provider link, capability,
plug and charging state, smart-charging control), records a
:class:`~evlink.models.ChargingCommand` as PENDING, sends the provider action
and returns the command. The :class:`CommandWatcher` then follows every
PENDING command until the vehicle's ``powerDeliveryState`` matches the wish:

- it wakes on each new charge state and on each change of the provider's
  action (webhook, simulator step), and polls the provider with backoff when
  nothing comes;
- when the provider's action fails or lapses while the state still does not
  match, it re-sends, with exponential backoff and jitter, up to
  ``charging_max_attempts`` sends;
- it gives up at the command's deadline.

End states: CONFIRMED, FAILED (the provider's failure reason), TIMED_OUT,
CANCELLED (superseded by the other action). Commands live in the database, so a
restarted watcher resumes every PENDING one from where it stood: it re-sends
only what the provider itself reports as failed.

What to answer and what to do next is decided by the pure functions of
:mod:`evlink.resolvers.rules` (whose docstring gives the order of the checks);
this module carries their decisions out: the database, the provider, the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from uuid import UUID

from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q

from evlink.domain import (
    ActionState,
    ChargeAction,
    ChargeStateData,
    ChargingAction,
    VehicleData,
)
from evlink.errors import (
    BadRequest,
    DatabaseUnavailable,
    EvlinkError,
    InternalError,
    NotFound,
    ProviderLinkMissing,
    StreamInterrupted,
)
from evlink.events import charge_state_topic, command_topic, command_wake_topic
from evlink.models import ChargingCommand, CommandState, User, Vehicle
from evlink.models.vehicles import AnyVehicle
from evlink.resolvers import rules, vehicles
from evlink.resolvers.rules import PROVIDER_REFUSALS, Decision
from evlink.services import Services

__all__ = [
    "ChargingRequested",
    "CommandWatcher",
    "cancel_vehicle_commands",
    "get_command",
    "ingest_provider_update",
    "list_commands",
    "parse_action",
    "set_charging",
]

logger = logging.getLogger(__name__)


def parse_action(value: object) -> ChargingAction:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return ChargingAction(value.strip().upper())
    raise BadRequest('action must be "START" or "STOP"')


def _now() -> datetime:
    return datetime.now(UTC)


# -- the use case ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChargingRequested:
    """What :func:`set_charging` answers: the command and the vehicle it is for."""

    command: ChargingCommand
    vehicle: Vehicle


async def set_charging(
    services: Services,
    user: User,
    vehicle_id: str | UUID,
    action: ChargingAction,
    idempotency_key: str | None = None,
) -> ChargingRequested:
    """Ask a vehicle to start or stop charging: the PENDING (or replayed) command, with
    the vehicle it is for."""
    vehicle = await vehicles.get_vehicle(user, vehicle_id)
    linked = vehicle.provider_vehicle_id is not None
    refusal = rules.check_caller(user.tier, linked=linked, idempotency_key=idempotency_key)
    if refusal is not None and refusal.error is ProviderLinkMissing:
        raise vehicles.provider_link_missing(services, vehicle)  # logged, names the fix
    if refusal is not None:
        raise refusal.exception()

    # The lock orders requests within this process; the database's one-pending-per-
    # vehicle index orders them across instances: the loser of a race decides again.
    for _ in range(3):
        try:
            async with services.vehicle_lock(vehicle.id):
                command, created = await _decide(services, user, vehicle, action, idempotency_key)
        except IntegrityError:
            logger.info("vehicle %s: a concurrent charging request won; deciding again", vehicle.id)
            continue
        if created:
            logger.info("command %s (%s) sent to vehicle %s", command.id, action.value, vehicle.id)
        if created and services.watcher is not None:
            services.watcher.follow(command.id)
        return ChargingRequested(command, vehicle)
    raise InternalError("Concurrent charging requests did not settle")


async def _decide(
    services: Services,
    user: User,
    vehicle: Vehicle,
    action: ChargingAction,
    idempotency_key: str | None,
) -> tuple[ChargingCommand, bool]:
    """The command for this request, and whether it was made (and sent) now."""
    assert vehicle.provider_vehicle_id is not None
    if idempotency_key is not None:
        earlier = await ChargingCommand.get_or_none(user=user, idempotency_key=idempotency_key)
        if earlier is not None:
            asked_before = (earlier.vehicle_id, earlier.action)  # type: ignore[attr-defined]
            refusal = rules.check_replay(asked_before, (vehicle.id, action))
            if refusal is not None:
                raise refusal.exception()
            return earlier, False
    pending = await ChargingCommand.filter(vehicle=vehicle, state=CommandState.PENDING)
    same = rules.pending_to_reuse(pending, action)
    if same is not None:
        if rules.takes_key(idempotency_key, same.idempotency_key):
            same.idempotency_key = idempotency_key
            await same.save(update_fields=["idempotency_key", "updated_at"])
        return same, False
    # Not within the read budget: a command is judged on what the provider says now.
    status = await vehicles.vehicle_status(
        services, vehicle, max_age=services.settings.charging_fresh_age, within_budget=False
    )
    refusal = rules.check_request(
        status.vehicle, status.charge_state, action, superseding=bool(pending)
    )
    if refusal is not None:
        raise refusal.exception()
    if services.limiter is not None:
        # Only a command that will be sent costs quota: not a replay, not a refusal.
        await services.limiter.charge_command(user)
    for command in pending:
        await _finish(services, command, CommandState.CANCELLED, "superseded")
    watcher = services.watcher
    command = await ChargingCommand.create(
        vehicle=vehicle,
        user=user,
        action=action,
        idempotency_key=idempotency_key,
        deadline_at=_now() + timedelta(seconds=services.settings.charging_deadline),
        # The instance that takes the request follows the command first.
        lease_owner=watcher.owner if watcher else None,
        lease_expires_at=watcher.lease_until() if watcher else None,
    )
    services.metrics.commands.labels(state=CommandState.PENDING.value).inc()
    refused = await _send(services, command, vehicle.provider_vehicle_id)
    if refused is not None:
        raise refused
    await _publish(services, command)
    return command, True


async def _send(
    services: Services, command: ChargingCommand, provider_vehicle_id: str
) -> EvlinkError | None:
    """Send the provider action once and record it. A refusal by the provider
    (:data:`~evlink.resolvers.rules.PROVIDER_REFUSALS`) ends the command FAILED with its
    message and is returned; a provider outage leaves the command to the watcher."""
    command.attempts += 1
    try:
        action = await services.provider.set_charging(provider_vehicle_id, command.action)
    except PROVIDER_REFUSALS as refused:
        await command.save(update_fields=["attempts", "updated_at"])
        await _finish(services, command, CommandState.FAILED, refused.message)
        return refused
    except EvlinkError as exc:
        command.failure_reason = exc.message
        command.next_attempt_at = _now() + _backoff(services, command.attempts)
        await command.save(update_fields=_SEND_FIELDS)
        logger.warning(
            "command %s: provider did not take attempt %d (%s)", command.id, command.attempts, exc
        )
        return None
    _store_action(command, action)
    command.failure_reason = None
    command.next_attempt_at = None
    await command.save(update_fields=_SEND_FIELDS)
    return None


# Saves name their fields: a whole-row save from a stale copy would undo a lease renewal.
_SEND_FIELDS = [
    "attempts",
    "provider_action_id",
    "provider_action",
    "failure_reason",
    "next_attempt_at",
    "updated_at",
]


def _store_action(command: ChargingCommand, action: ChargeAction) -> None:
    command.provider_action_id = action.id
    command.provider_action = action.to_enode()


def _jitter() -> float:
    """The backoff's random factor: instances that failed together do not retry together."""
    return random.uniform(0.5, 1.5)


def _backoff(services: Services, attempts: int) -> timedelta:
    return rules.retry_backoff(services.settings.charging_retry_backoff, attempts, _jitter())


async def _finish(
    services: Services, command: ChargingCommand, state: CommandState, reason: str | None = None
) -> bool:
    """End ``command`` in ``state``; False when it had ended already."""
    now = _now()
    if reason is not None or state == CommandState.CONFIRMED:
        command.failure_reason = reason
    # A command ends once: the watcher and a request superseding it may both try, and
    # the first end state stays (compare-and-set on PENDING), with one end event.
    ended = await ChargingCommand.filter(id=command.id, state=CommandState.PENDING).update(
        state=state,
        completed_at=now,
        next_attempt_at=None,
        failure_reason=command.failure_reason,
        lease_owner=None,
        updated_at=now,
    )
    if not ended:
        await command.refresh_from_db()
        return False
    command.state = state
    command.completed_at = command.updated_at = now
    command.next_attempt_at = None
    command.lease_owner = None
    services.metrics.commands.labels(state=state.value).inc()
    await _publish(services, command)
    logger.info("command %s (%s) ended %s", command.id, command.action.value, state.value)
    return True


async def cancel_vehicle_commands(services: Services, vehicle: Vehicle, reason: str) -> int:
    """End the vehicle's PENDING commands as CANCELLED (a removed car); how many ended.
    Their watchers are woken and stop; the provider's actions in flight are left alone."""
    ended = 0
    for command in await ChargingCommand.filter(vehicle_id=vehicle.id, state=CommandState.PENDING):
        if await _finish(services, command, CommandState.CANCELLED, reason):
            ended += 1
            await services.events.publish(command_wake_topic(command.id), {"cancelled": True})
    return ended


async def _publish(services: Services, command: ChargingCommand) -> None:
    await services.events.publish(
        command_topic(command.id),
        {"id": str(command.id), "state": command.state.value, "attempts": command.attempts},
    )


# -- reading commands ---------------------------------------------------------------


def _parse_command_id(command_id: str | UUID) -> UUID:
    try:
        return command_id if isinstance(command_id, UUID) else UUID(command_id)
    except (ValueError, TypeError):
        raise NotFound("Command not found") from None


async def get_command(user: User, command_id: str | UUID) -> ChargingCommand:
    """The command on one of the user's vehicles. Another user's command answers exactly
    as a missing one does (NOT_FOUND, from the same query), so that command ids cannot be
    probed; vehicles keep their 403 (docs/security.md)."""
    command = await ChargingCommand.get_or_none(
        id=_parse_command_id(command_id),
        vehicle__user_id=user.id,
        vehicle__deleted_at__isnull=True,
    )
    if command is None:
        raise NotFound("Command not found")
    return command


async def list_commands(vehicle: AnyVehicle, last: int = 10) -> list[ChargingCommand]:
    last = max(0, min(last, 100))
    query = ChargingCommand.filter(vehicle_id=vehicle.id)
    return await query.order_by("-created_at").limit(last)


# -- provider updates -------------------------------------------------------------


async def ingest_provider_update(services: Services, update: VehicleData | ChargeAction) -> None:
    """Record what a provider pushed (webhook, simulator step); wake who follows it."""
    if isinstance(update, VehicleData):
        await vehicles.ingest_vehicle_update(services, update)
        return
    commands = await ChargingCommand.filter(provider_action_id=update.id)
    for command in commands:
        if not rules.is_newer_action(update, command.provider_action):
            continue
        _store_action(command, update)
        await command.save(update_fields=["provider_action_id", "provider_action", "updated_at"])
        await services.events.publish(command_wake_topic(command.id), {"action": update.state})


# -- the watcher ---------------------------------------------------------------------


class _LeaseLost(Exception):
    """Another instance holds the command now: stop following it."""


class CommandWatcher:
    """Follows PENDING commands to an end state, each by exactly one instance.

    A command is followed under a lease in the database (``lease_owner``,
    ``lease_expires_at``), taken with a compare-and-set UPDATE that only one
    instance can win, renewed while followed, and released on a clean
    shutdown. A scan takes over commands whose lease has lapsed (an instance
    died), so every PENDING command is followed again within about one lease.
    """

    def __init__(self, services: Services, *, owner: str | None = None) -> None:
        self.services = services
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._tasks: dict[UUID, asyncio.Task[None]] = {}
        self._closing = False
        self._keeper: asyncio.Task[None] | None = None

    @property
    def lease_seconds(self) -> float:
        return self.services.settings.command_lease

    def lease_until(self) -> datetime:
        return _now() + timedelta(seconds=self.lease_seconds)

    async def start(self) -> None:
        """Take every PENDING command that no live instance follows, then keep leases."""
        await self.scan()
        self._keeper = asyncio.create_task(self._keep_leases(), name="command-leases")

    async def scan(self) -> None:
        """Claim and follow the PENDING commands whose lease is free or lapsed."""
        now = _now()
        candidates = await ChargingCommand.filter(
            Q(state=CommandState.PENDING)
            & (Q(lease_owner=None) | Q(lease_expires_at__lt=now) | Q(lease_owner=self.owner))
        ).values_list("id", flat=True)
        for command_id in candidates:
            command_uuid = UUID(str(command_id))
            if command_uuid not in self._tasks and await self.claim(command_uuid):
                logger.info("command %s: following it (%s)", command_uuid, self.owner)
                self.follow(command_uuid)

    async def claim(self, command_id: UUID) -> bool:
        """Take or renew the lease of one PENDING command; True when this instance holds it."""
        now = _now()
        taken = await ChargingCommand.filter(
            Q(id=command_id)
            & Q(state=CommandState.PENDING)
            & (Q(lease_owner=None) | Q(lease_expires_at__lt=now) | Q(lease_owner=self.owner))
        ).update(lease_owner=self.owner, lease_expires_at=self.lease_until())
        return taken == 1

    def follow(self, command_id: UUID) -> None:
        if self._closing or command_id in self._tasks:
            return
        task = asyncio.create_task(self._follow(command_id), name=f"command-{command_id}")
        self._tasks[command_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(command_id, None))

    @property
    def following(self) -> set[UUID]:
        return set(self._tasks)

    async def aclose(self, *, release: bool = True) -> None:
        """Stop following; with ``release`` hand the leases back so others take over at once."""
        self._closing = True
        tasks = [t for t in (self._keeper, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if release:
            released = await ChargingCommand.filter(
                lease_owner=self.owner, state=CommandState.PENDING
            ).update(lease_owner=None, lease_expires_at=None)
            if released:
                logger.info("released %d command lease(s)", released)

    async def _keep_leases(self) -> None:
        """Renew what this instance follows; drop what another took; take over lapsed ones."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                for command_id in list(self._tasks):
                    if not await self.claim(command_id):
                        logger.warning(
                            "command %s: lease lost; another instance follows it", command_id
                        )
                        self._tasks[command_id].cancel()
                await self.scan()
            except DatabaseUnavailable:
                pass  # logged once per outage (evlink.models.backends); the next round retries
            except Exception:
                logger.exception("command leases: renewal failed; retrying")

    async def _follow(self, command_id: UUID) -> None:
        try:
            await self._follow_until_final(command_id)
        except asyncio.CancelledError:
            raise
        except _LeaseLost:
            logger.warning("command %s: lease lost; another instance follows it", command_id)
        except DatabaseUnavailable:
            pass  # logged once per outage; the command stays PENDING, the next scan resumes it
        except Exception:
            # The command stays PENDING in the database; a restart resumes it.
            logger.exception("command %s: the watcher stopped following it", command_id)

    async def _follow_until_final(self, command_id: UUID) -> None:
        settings = self.services.settings
        command = await ChargingCommand.get(id=command_id).select_related("vehicle")
        vehicle: Vehicle = command.vehicle
        topics = (charge_state_topic(vehicle.id), command_wake_topic(command_id))
        poll = settings.charging_poll_interval
        async with self.services.events.subscribe(*topics) as messages:
            # The first look trusts what is stored (fresh enough per max age); a look
            # after a quiet wait asks the provider.
            fresh = False
            while True:
                await command.refresh_from_db()
                if command.state.is_final:
                    return
                state = await self._charge_state(vehicle, command, fresh=fresh)
                action = await self._action(command, fresh=fresh)
                decision = rules.evaluate(
                    command, state, action, _now(), settings, jitter=_jitter()
                )
                if await self._carry_out(command, vehicle, action, decision):
                    return
                wait = rules.seconds_to_next_look(
                    _now(), command.deadline_at, command.next_attempt_at, poll
                )
                try:
                    message = await messages.get(timeout=wait)
                except StreamInterrupted:
                    message = None  # events may have been missed: ask the provider
                fresh = message is None  # nothing came: poll the provider next time
                poll = rules.next_poll(poll, woken=bool(message), settings=settings)

    async def _charge_state(
        self, vehicle: Vehicle, command: ChargingCommand, *, fresh: bool
    ) -> ChargeStateData | None:
        """The car's state as seen since ``command`` was made; None when there is none
        (the provider failed, and only an older state is stored).

        A state seen before the command cannot confirm it: it may be what a
        superseded command of the other kind left behind (the car was charging,
        STOP pending, then START) while the car has moved since. So the first
        look asks the provider unless a newer state is stored already.
        """
        await vehicle.refresh_from_db()
        seen = rules.seen_since(vehicle.refreshed_at, command.created_at)
        max_age = rules.watcher_max_age(self.services.settings, fresh=fresh, seen=seen)
        # Within the read budget: a hanging provider does not stall the watcher (deadline,
        # events); the refresh's result arrives as a charge-state event when it changed.
        status = await vehicles.vehicle_status(self.services, vehicle, max_age=max_age)
        if rules.seen_since(status.vehicle.refreshed_at, command.created_at):
            return status.charge_state
        return None

    async def _action(self, command: ChargingCommand, *, fresh: bool) -> ChargeAction | None:
        if command.provider_action_id is None:
            return None
        stored = ChargeAction.from_enode(
            command.provider_action or {"id": command.provider_action_id}
        )
        if not fresh or stored.is_resolved:
            return stored
        try:
            action = await self.services.provider.get_action(command.provider_action_id)
        except NotFound:
            # The provider forgot the action (a restarted simulator): it lapsed.
            logger.warning("command %s: the provider no longer knows its action", command.id)
            return replace(stored, state=ActionState.FAILED, failure_reason=_LOST_ACTION)
        except EvlinkError as exc:
            logger.warning("command %s: reading the provider action failed: %s", command.id, exc)
            return stored
        if rules.is_newer_action(action, command.provider_action):
            _store_action(command, action)
            await command.save(update_fields=["provider_action", "updated_at"])
        return action

    async def _carry_out(
        self,
        command: ChargingCommand,
        vehicle: Vehicle,
        action: ChargeAction | None,
        decision: Decision,
    ) -> bool:
        """Do what :func:`~evlink.resolvers.rules.evaluate` decided; True once the command
        has reached an end state."""
        if decision.end is not None:
            await _finish(self.services, command, decision.end, decision.reason)
            if decision.cancel_action and action is not None:
                with contextlib.suppress(EvlinkError):
                    await self.services.provider.cancel_action(action.id)
            return True
        if decision.reason is not None:
            command.failure_reason = decision.reason
        if decision.next_attempt_at is not None:
            command.next_attempt_at = decision.next_attempt_at
        if decision.schedule:
            await command.save(update_fields=["failure_reason", "next_attempt_at", "updated_at"])
        if not decision.resend:
            return False
        assert vehicle.provider_vehicle_id is not None
        if not await self.claim(command.id):
            raise _LeaseLost()
        logger.info("command %s: re-sending (attempt %d)", command.id, command.attempts + 1)
        if await _send(self.services, command, vehicle.provider_vehicle_id) is not None:
            return True  # the provider refused: the command ended FAILED
        await _publish(self.services, command)
        return False


_LOST_ACTION = {"type": "NOT_FOUND", "detail": "The provider no longer knows the action"}
