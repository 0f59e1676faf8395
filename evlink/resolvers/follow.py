"""Following a command or a vehicle's charge state as it changes: the one loop behind
the GraphQL subscriptions (``chargingCommand``, ``chargeState``, ``chargingSession``)
and REST's ``?wait``.

Each follow subscribes to its topic *before* it reads, then reads again after each
event (:mod:`evlink.events`), so nothing published in between is lost:

- :func:`follow_command` yields the command now, then each time its state, attempts
  or provider action changed, and ends once the command is final;
- :func:`follow_charge_state` yields the vehicle's charge state now (refreshed when
  older than the max age), then each state an event brings that differs from the
  last one yielded and is not older than it;
- :func:`follow_charging_session` yields the vehicle's open charging session now (if
  any), then each time an event says it grew or ended;
- :func:`wait_for_command` follows a command until it is final, the time is up or
  the server stops, and answers it as it then stands.

A broken event stream (Redis lost: :class:`~evlink.errors.StreamInterrupted`) ends
the two follows with that error, so that a subscriber learns it is no longer
followed; ``wait_for_command`` reads the database again instead, and every
:data:`WAIT_POLL_WITHOUT_EVENTS` seconds while other instances' events cannot
arrive. ``watching`` is the caller's hook around the follow's event subscription
(a websocket's: the subscription is interrupted with an error once the user no
longer owns the vehicle, :mod:`evlink.revocation`).

Followers of one message share what is made of it: :func:`follow_charge_state`
hands every follower of a message the same :class:`~evlink.domain.ChargeStateData`
object (:func:`evlink.events.shared`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol
from uuid import UUID

from evlink.domain import ChargeStateData
from evlink.errors import StreamInterrupted
from evlink.events import (
    Message,
    Subscription,
    charge_state_topic,
    charging_session_topic,
    command_topic,
    shared,
)
from evlink.models import ChargingCommand, User, Vehicle
from evlink.models.sessions import ChargingSession
from evlink.resolvers import sessions, vehicles
from evlink.services import Services

__all__ = [
    "WAIT_POLL_WITHOUT_EVENTS",
    "Forward",
    "Forwarding",
    "Watching",
    "follow_charge_state",
    "follow_charging_session",
    "follow_command",
    "wait_for_command",
]

# The caller's hook around a follow's event subscription: (vehicle id, subscription).
Watching = Callable[[UUID, Subscription], AbstractAsyncContextManager[None]]


class Forward(Protocol):
    """Where a follow's states go without it (evlink.schema.fanout.Forwarding)."""

    def state(self, state: ChargeStateData) -> None:
        """Take ``state`` now; never raises."""

    def take(
        self,
        messages: Subscription,
        watch: AbstractAsyncContextManager[None],
        passing: Callable[[Message], None],
    ) -> bool:
        """From now on the follow's event subscription and its watch are the forward's:
        it hands each message to ``passing`` (:meth:`Subscription.forward`), ends the
        subscription as it should end (an interruption included) and lets go of both
        then; the follow itself ends. False: not taken (the operation is over), the
        follow goes on with them."""


# Given once the first state was taken: where the next ones go, or None (yielded).
Forwarding = Callable[[], Forward | None]


def _not_forwarded() -> Forward | None:
    return None


# What waits for a followed command's next event; False: stop following.
_Wake = Callable[[Services, Subscription], Awaitable[bool]]

# Seconds between two reads of a waited-for command while other instances' events
# cannot arrive (the Redis link is down).
WAIT_POLL_WITHOUT_EVENTS = 1.0


@contextlib.asynccontextmanager
async def _unwatched(vehicle_id: UUID, subscription: Subscription) -> AsyncIterator[None]:
    yield


def follow_command(
    services: Services, command: ChargingCommand, *, watching: Watching = _unwatched
) -> AsyncGenerator[ChargingCommand, None]:
    """``command`` now, then each time its state, attempts or provider action changed,
    until it is final (the same object, read again in place)."""
    return _follow_command(services, command, watching, _next_message)


async def wait_for_command(
    services: Services, command: ChargingCommand, timeout: float
) -> ChargingCommand:
    """The command once it reaches an end state, or as it stands after ``timeout`` seconds
    or once the server starts shutting down (the answer goes out within uvicorn's
    graceful period, not cut off by it).

    Woken by the command's events; while the event bus is down (another instance's
    confirmation cannot arrive) it reads the database every second instead.
    """
    wait = _Wait(services, asyncio.get_running_loop().time() + timeout)
    async with contextlib.aclosing(_follow_command(services, command, _unwatched, wait)) as seen:
        async for _ in seen:  # each look reads ``command`` again in place
            pass
    return command


async def follow_charge_state(
    services: Services,
    vehicle: Vehicle,
    *,
    watching: Watching = _unwatched,
    forwarding: Forwarding = _not_forwarded,
) -> AsyncGenerator[ChargeStateData, None]:
    """The vehicle's charge state now, then each newer one its events bring: yielded,
    or, once the first was taken, handed to what ``forwarding`` gives, which takes the
    event subscription and the watch over (:meth:`Forward.take`): then this ends at
    once, and nothing of it is held while the subscription lasts."""
    vehicle_id = vehicle.id
    messages = services.events.subscribe(charge_state_topic(vehicle_id))
    watch = watching(vehicle_id, messages)
    async with contextlib.AsyncExitStack() as held:
        await held.enter_async_context(messages)
        await held.enter_async_context(watch)
        newer = _NewerStates((await vehicles.vehicle_status(services, vehicle)).charge_state)
        del vehicle  # not held for the subscription's life (bench/README.md, memory)
        yield newer.last
        forward = forwarding()
        if forward is not None and forward.take(messages, watch, newer.to(forward.state)):
            held.pop_all()  # the forward's now: it ends them with the subscription
            return
        async for message in messages:
            state = newer.take(message)
            if state is not None:
                yield state


class _NewerStates:
    """The charge states worth passing on after ``last``: the read above may have
    published what it found, and an event published before it may arrive after it:
    neither is passed on again, nor anything older."""

    __slots__ = ("forward", "last")

    def __init__(self, last: ChargeStateData) -> None:
        self.last = last
        self.forward: Callable[[ChargeStateData], None] | None = None

    def take(self, message: Message) -> ChargeStateData | None:
        """The message's state, if newer (then it is the last one), else None."""
        state = shared(message, _charge_state)
        if state == self.last or _older(state, self.last):
            return None
        self.last = state
        return state

    def to(self, forward: Callable[[ChargeStateData], None]) -> Callable[[Message], None]:
        """Each message's state, if newer, handed to ``forward`` (itself, called with a
        message: no closure held for the subscription's life)."""
        self.forward = forward
        return self

    def __call__(self, message: Message) -> None:
        state = self.take(message)
        if state is not None and self.forward is not None:
            self.forward(state)


async def follow_charging_session(
    services: Services, user: User, vehicle: Vehicle, *, watching: Watching = _unwatched
) -> AsyncGenerator[ChargingSession, None]:
    """The vehicle's open session now (if any), then each change its events bring: as it
    grows, and once when it ends (each read again, so none is yielded twice)."""
    topic = charging_session_topic(vehicle.id)
    async with services.events.subscribe(topic) as messages, watching(vehicle.id, messages):
        last = None
        current = await sessions.current_session(services, vehicle)
        if current is not None:
            last = _session_seen(current)
            yield current
        async for message in messages:
            found = await sessions.get_session(services, user, str(message["id"]))
            if _session_seen(found) != last:
                last = _session_seen(found)
                yield found


def _session_seen(session: ChargingSession) -> tuple[object, ...]:
    return (session.id, session.sample_count, session.ended_at)


async def _follow_command(
    services: Services,
    command: ChargingCommand,
    watching: Watching,
    wake: _Wake,
) -> AsyncGenerator[ChargingCommand, None]:
    topic = command_topic(command.id)
    vehicle_id: UUID = command.vehicle_id  # type: ignore[attr-defined]
    async with services.events.subscribe(topic) as messages, watching(vehicle_id, messages):
        last = None
        while True:
            await command.refresh_from_db()
            seen = (command.state, command.attempts, command.provider_action_id)
            if seen != last:
                last = seen
                yield command
            if command.state.is_final or not await wake(services, messages):
                return


async def _next_message(services: Services, messages: Subscription) -> bool:
    """The next event (a broken stream raises StreamInterrupted)."""
    await messages.get()
    return True


class _Wait:
    """Waking a ``?wait``: by an event, or after at most the time left (a second while
    events from other instances cannot arrive), and never past the deadline or the
    server's shutdown; a broken stream only means reading the database again."""

    def __init__(self, services: Services, until: float) -> None:
        self.until = until
        self.stopping = services.open_sockets.stopping

    async def __call__(self, services: Services, messages: Subscription) -> bool:
        remaining = self.until - asyncio.get_running_loop().time()
        if remaining <= 0 or self.stopping.is_set():
            return False
        if not services.events.live:
            remaining = min(remaining, WAIT_POLL_WITHOUT_EVENTS)
        with contextlib.suppress(StreamInterrupted):  # read the database again
            await _woken(messages, self.stopping, remaining)
        return True


async def _woken(messages: Subscription, stopping: asyncio.Event, timeout: float) -> None:
    """Return on the next message, once ``stopping`` is set or after ``timeout`` seconds."""
    reading = asyncio.ensure_future(messages.get(timeout=timeout))
    stopped = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait((reading, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        reading.cancel()
    if reading.done() and not reading.cancelled():
        reading.result()  # raises StreamInterrupted


def _charge_state(message: Message) -> ChargeStateData:
    return ChargeStateData.from_enode(message)


def _older(state: ChargeStateData, than: ChargeStateData) -> bool:
    return (
        state.last_updated is not None
        and than.last_updated is not None
        and state.last_updated < than.last_updated
    )
