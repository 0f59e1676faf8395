"""The MQTT bridge: evlink's events out to the broker, Home Assistant's switch in.

Every instance with ``EVLINK_MQTT_URL`` runs one :class:`MqttBridge` with one
broker connection, which

- says ``online`` on ``<prefix>/status`` (retained) with a last will ``offline``,
  and says ``online`` again when another instance's will or shutdown says
  ``offline`` while it is still up;
- takes switch commands through the shared subscription ``$share/evlink/…``,
  so the broker hands each message to exactly one instance
  (:mod:`evlink.mqtt.commands` runs it);
- publishes state only while it holds the publisher lease (one row of
  ``mqtt_leases``, compare-and-set): one instance publishes each change, however
  many run. The publisher follows each published car's charge-state events, its
  charging-session events and its last command, and publishes the retained
  state, session, command and discovery configs; identical payloads are not
  sent twice.

The broker being away never stops evlink: the connection is retried with a
backoff doubling from :data:`RECONNECT_BASE` to :data:`RECONNECT_CAP`, one WARNING
per outage, and everything retained is published again on reconnection (and
when Home Assistant says ``online`` on ``<discovery>/status``).

Home Assistant's ``online`` is coalesced: one republish runs at a time, at most one
more waits behind it (any further ``online`` meanwhile joins that one), and two
start at least :data:`REPUBLISH_INTERVAL` apart. A flood of ``online`` costs two
rounds, and the last one starts after the last ``online`` it absorbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import ssl
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions
from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q

from evlink.domain import format_timestamp
from evlink.errors import DatabaseUnavailable, EvlinkError, StreamInterrupted
from evlink.events import charge_state_topic, charging_session_topic, command_topic
from evlink.models import ChargeState, ChargingCommand, MqttLease, Vehicle
from evlink.models.vehicles import charge_state_data
from evlink.mqtt import commands
from evlink.mqtt.accounts import published_cars
from evlink.mqtt.config import Broker, parse_broker_url
from evlink.mqtt.discovery import (
    Car,
    command_payload,
    discovery_messages,
    refusal_payload,
    removal_messages,
    session_payload,
    state_payload,
)
from evlink.mqtt.topics import Topics
from evlink.resolvers import sessions, vehicles
from evlink.services import Services
from evlink.settings import Settings

__all__ = ["RECONNECT_BASE", "RECONNECT_CAP", "REPUBLISH_INTERVAL", "MqttBridge", "build_bridge"]

logger = logging.getLogger(__name__)

# Seconds between two tries to reach the broker: doubling from the base up to the cap.
RECONNECT_BASE = 0.5
RECONNECT_CAP = 5.0
# Seconds one publish or subscribe may take before the connection is taken as broken.
CALL_TIMEOUT = 5.0
KEEPALIVE = 15  # seconds: a dead broker is noticed within about 1.5 times this
LEASE_NAME = "publisher"
# Seconds between the starts of two republishes asked for by Home Assistant's ``online``.
REPUBLISH_INTERVAL = 5.0


def _now() -> datetime:
    return datetime.now(UTC)


def _json(payload: dict[str, Any] | None) -> bytes:
    return b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()


def command_json(command: ChargingCommand) -> dict[str, Any]:
    """The last-command JSON of a stored command."""
    return command_payload(
        command_id=str(command.id),
        action=command.action.value,
        state=command.state.value,
        attempts=command.attempts,
        failure_reason=command.failure_reason,
        updated_at=format_timestamp(command.updated_at),
    )


class MqttBridge:
    """One broker connection per instance; see the module's docstring."""

    def __init__(
        self,
        services: Services,
        broker: Broker,
        topics: Topics,
        *,
        scan_interval: float,
        lease_seconds: float,
        owner: str | None = None,
    ) -> None:
        self.services = services
        self.broker = broker
        self.topics = topics
        self.scan_interval = scan_interval
        self.lease_seconds = lease_seconds
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leader = False
        # Set while the broker connection is up (tests and /readyz-like checks wait on it).
        self.connected = asyncio.Event()
        self.disconnected = asyncio.Event()  # set while it is not
        self.disconnected.set()
        self._client: aiomqtt.Client | None = None
        self._cars: dict[str, Car] = {}
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._command_followers: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._sent: dict[str, bytes] = {}  # the last payload sent on each retained topic
        self._currencies: dict[str, str | None] = {}  # each car's latest session's currency
        self._tasks: set[asyncio.Task[None]] = set()
        self._failing = False
        self._commands_seen_at = _now()
        self._republisher: asyncio.Task[None] | None = None
        self._republish_wanted = False
        self._dropped_log = commands.LogLimiter(commands.DROPPED_INTERVAL)

    # -- life ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting and publishing; returns at once (the broker may be away)."""
        self._spawn(self._connect_forever(), "mqtt-connection")
        self._spawn(self._publish_forever(), "mqtt-publisher")

    async def aclose(self) -> None:
        """Say ``offline``, hand the lease back, disconnect."""
        client = self._client
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await client.publish(
                    self.topics.status, b"offline", qos=1, retain=True, timeout=CALL_TIMEOUT
                )
        for task in [*self._tasks, *self._followers.values()]:
            task.cancel()
        for _, task in self._command_followers.values():
            task.cancel()
        pending = [*self._tasks, *self._followers.values()]
        pending += [task for _, task in self._command_followers.values()]
        await asyncio.gather(*pending, return_exceptions=True)
        if self.leader:
            with contextlib.suppress(Exception):
                await MqttLease.filter(name=LEASE_NAME, owner=self.owner).update(
                    owner=None, expires_at=None
                )

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the connection -----------------------------------------------------------

    def _new_client(self) -> aiomqtt.Client:
        broker = self.broker
        return aiomqtt.Client(
            broker.host,
            broker.port,
            username=broker.username,
            password=broker.password,
            identifier=f"evlink-{uuid.uuid4().hex[:12]}",
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(self.topics.status, b"offline", qos=1, retain=True),
            keepalive=KEEPALIVE,
            timeout=CALL_TIMEOUT,
            tls_context=ssl.create_default_context() if broker.tls else None,
            logger=logging.getLogger("evlink.mqtt.client"),
        )

    async def _connect_forever(self) -> None:
        delay = RECONNECT_BASE
        while True:
            try:
                async with self._new_client() as client:
                    await self._connected(client)
                    delay = RECONNECT_BASE
                    async for message in client.messages:
                        self._dispatch(message)
            except aiomqtt.MqttError as exc:
                self._down(exc)
            except Exception as exc:  # never let the connection die for good
                logger.exception("mqtt: the connection failed; connecting again")
                self._down(exc)
            finally:
                self._client = None
                self.connected.clear()
                self.disconnected.set()
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, RECONNECT_CAP)

    async def _connected(self, client: aiomqtt.Client) -> None:
        topics = self.topics
        # Retain as published: a retained command is seen as such and dropped.
        options = SubscribeOptions(qos=1, retainAsPublished=True)
        await client.subscribe(topics.charging_set_filter, options=options)
        await client.subscribe(topics.status, qos=1)
        await client.subscribe(topics.ha_status, qos=1)
        await client.publish(topics.status, b"online", qos=1, retain=True)
        self._client = client
        self.disconnected.clear()
        self.connected.set()
        if self._failing:
            logger.info("mqtt: connected to %s again", self.broker.describe())
        else:
            logger.info("mqtt: connected to %s", self.broker.describe())
        self._failing = False
        if self.leader:
            # What changed while the broker was away: publish everything again.
            self._spawn(self._publish_all(force=True), "mqtt-republish")

    def _down(self, exc: BaseException) -> None:
        if not self._failing:
            self._failing = True
            logger.warning(
                "mqtt: broker %s unavailable (%s); evlink serves on and connects again",
                self.broker.describe(),
                exc,
            )

    def _dispatch(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, bytes) else b""
        if topic == self.topics.status:
            if payload == b"offline" and self._client is not None:
                # Another instance's will or shutdown: this one is still here.
                self._spawn(self._say_online(), "mqtt-online")
        elif topic == self.topics.ha_status:
            if payload == b"online" and self.leader:
                self._republish_for_home_assistant()
        else:
            self._spawn(
                commands.handle(
                    self.services,
                    self.topics,
                    topic,
                    payload,
                    retained=message.retain,
                    limiter=self._dropped_log,
                ),
                "mqtt-command",
            )

    def _republish_for_home_assistant(self) -> None:
        """Ask for one republish: joins the one waiting, if any (see the module's docstring)."""
        self._republish_wanted = True
        if self._republisher is None or self._republisher.done():
            self._republisher = self._spawn(self._republish_while_wanted(), "mqtt-republish")

    async def _republish_while_wanted(self) -> None:
        loop = asyncio.get_running_loop()
        while self._republish_wanted:
            self._republish_wanted = False
            started = loop.time()
            logger.info("mqtt: Home Assistant started; publishing discovery and state again")
            await self._publish_all(force=True)
            if self._republish_wanted:
                await asyncio.sleep(max(0.0, started + REPUBLISH_INTERVAL - loop.time()))

    async def _say_online(self) -> None:
        await self._publish(self.topics.status, b"online", force=True)

    async def _publish(self, topic: str, data: bytes, *, force: bool = False) -> None:
        """Publish retained, unless the same payload went out last; a broken connection
        drops it (everything is published again on reconnection)."""
        client = self._client
        if client is None or (not force and self._sent.get(topic) == data):
            return
        try:
            await client.publish(topic, data, qos=1, retain=True, timeout=CALL_TIMEOUT)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            logger.debug("mqtt: %s not published: %s", commands.shown(topic), exc)
            return
        self._sent[topic] = data

    # -- the publisher ------------------------------------------------------------

    async def _publish_forever(self) -> None:
        while True:
            try:
                await self._publisher_round()
            except DatabaseUnavailable:
                pass  # logged once per outage (evlink.models.backends); the next round retries
            except Exception:
                logger.exception("mqtt: the publisher's round failed; retrying")
            await asyncio.sleep(self.scan_interval)

    async def _publisher_round(self) -> None:
        leader = await self._claim()
        if leader and not self.leader:
            logger.info("mqtt: this instance publishes state (%s)", self.owner)
            self.leader = True
        elif not leader and self.leader:
            logger.warning("mqtt: publisher lease lost; another instance publishes state")
            self.leader = False
            self._stop_following()
        if self.leader:
            await self._scan()

    async def _claim(self) -> bool:
        """Take or renew the publisher lease; True when this instance holds it."""
        now = _now()
        until = now + timedelta(seconds=self.lease_seconds)
        taken = await MqttLease.filter(
            Q(name=LEASE_NAME)
            & (Q(owner=None) | Q(owner=self.owner) | Q(expires_at__lt=now) | Q(expires_at=None))
        ).update(owner=self.owner, expires_at=until)
        if taken:
            return True
        if await MqttLease.exists(name=LEASE_NAME):
            return False
        try:
            await MqttLease.create(name=LEASE_NAME, owner=self.owner, expires_at=until)
        except IntegrityError:
            return False  # another instance made it first
        return True

    def _stop_following(self) -> None:
        for task in self._followers.values():
            task.cancel()
        for _, task in self._command_followers.values():
            task.cancel()
        self._followers.clear()
        self._command_followers.clear()
        self._cars.clear()
        self._sent.clear()
        self._currencies.clear()

    async def _scan(self) -> None:
        """Follow the cars to publish now; clear those no longer published; pick up
        commands made over REST or GraphQL since the last scan."""
        cars = await published_cars()
        for vehicle_id in set(self._cars) - set(cars):
            await self._forget(self._cars.pop(vehicle_id))
        for vehicle_id, car in cars.items():
            known = self._cars.get(vehicle_id)
            self._cars[vehicle_id] = car
            if known is None or vehicle_id not in self._followers:
                self._followers[vehicle_id] = asyncio.create_task(
                    self._follow_car(car), name=f"mqtt-car-{vehicle_id}"
                )
            elif known != car:
                await self._publish_discovery(car)
        await self._pick_up_commands()

    async def _forget(self, car: Car) -> None:
        follower = self._followers.pop(car.vehicle_id, None)
        if follower is not None:
            follower.cancel()
        command = self._command_followers.pop(car.vehicle_id, None)
        if command is not None:
            command[1].cancel()
        self._currencies.pop(car.vehicle_id, None)
        for topic in removal_messages(self.topics, car):
            await self._publish(topic, b"")
        logger.info("mqtt: vehicle %s no longer published; its topics cleared", car.vehicle_id)

    async def _pick_up_commands(self) -> None:
        since = self._commands_seen_at - timedelta(seconds=1)
        self._commands_seen_at = _now()
        recent = await ChargingCommand.filter(
            vehicle_id__in=list(self._cars), updated_at__gte=since
        ).order_by("created_at")
        for command in recent:
            vehicle_id = str(command.vehicle_id)  # type: ignore[attr-defined]
            self._follow_command(self._cars[vehicle_id], str(command.id))

    async def _publish_all(self, *, force: bool) -> None:
        for car in list(self._cars.values()):
            await self._publish_car(car, force=force)

    async def _publish_discovery(self, car: Car, *, force: bool = False) -> None:
        currency = self._currencies.get(car.vehicle_id)
        for topic, config in discovery_messages(self.topics, car, currency):
            await self._publish(topic, _json(config), force=force)

    async def _publish_car(self, car: Car, *, force: bool = False) -> bool:
        """Discovery, state, latest session and last command of ``car``, as stored;
        False when no state is stored yet."""
        await self._publish_session(car, force=force)
        await self._publish_discovery(car, force=force)
        last = await ChargingCommand.filter(vehicle_id=car.vehicle_id).first()
        if last is not None:
            await self._publish(self._command_topic(car), _json(command_json(last)), force=force)
        stored = await ChargeState.get_or_none(vehicle_id=car.vehicle_id)
        if stored is None:
            return False
        state = charge_state_data(stored).to_enode()
        await self._publish(self._state_topic(car), _json(state_payload(state)), force=force)
        return True

    async def _first_read(self, car: Car) -> None:
        """Read a car evlink has no state of yet, once: the change arrives as an event."""
        vehicle = await Vehicle.get_or_none(id=car.vehicle_id, deleted_at=None)
        if vehicle is None or vehicle.provider_vehicle_id is None:
            return
        try:
            await vehicles.vehicle_status(self.services, vehicle)
        except EvlinkError as exc:
            logger.info("mqtt: vehicle %s has no state yet (%s)", car.vehicle_id, exc.code)

    async def _publish_session(self, car: Car, *, force: bool = False) -> None:
        """The car's current or latest charging session (nothing before its first); the
        cost entity's config again when the session's currency changed."""
        vehicle = await Vehicle.get_or_none(id=car.vehicle_id, deleted_at=None)
        if vehicle is None:
            return
        latest = await sessions.list_sessions(self.services, vehicle, last=1)
        if not latest:
            return
        session = sessions.summary(latest[0])
        if self._currencies.get(car.vehicle_id) != session.currency:
            self._currencies[car.vehicle_id] = session.currency
            await self._publish_discovery(car)
        payload = session_payload(
            session_id=str(session.session.id),
            active=session.active,
            started_at=format_timestamp(session.session.started_at),
            ended_at=format_timestamp(session.session.ended_at),
            end_reason=session.session.end_reason,
            energy_kwh=session.energy_kwh,
            cost=session.cost,
            currency=session.currency,
        )
        topic = self.topics.session(car.user_topic_id, car.vehicle_id)
        await self._publish(topic, _json(payload), force=force)

    def _state_topic(self, car: Car) -> str:
        return self.topics.state(car.user_topic_id, car.vehicle_id)

    def _command_topic(self, car: Car) -> str:
        return self.topics.command(car.user_topic_id, car.vehicle_id)

    async def _follow_car(self, car: Car) -> None:
        """Follow ``car``'s charge state and switch outcomes, and its sessions."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._follow_state(car), name=f"mqtt-state-{car.vehicle_id}")
                group.create_task(self._follow_sessions(car), name=f"mqtt-session-{car.vehicle_id}")
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("mqtt: following vehicle %s failed", car.vehicle_id)
            self._followers.pop(car.vehicle_id, None)  # the next scan follows it again

    async def _follow_sessions(self, car: Car) -> None:
        """Publish the car's session each time one opens, grows or ends."""
        async with self.services.events.subscribe(
            charging_session_topic(car.vehicle_id)
        ) as messages:
            await self._publish_session(car)
            while True:
                with contextlib.suppress(StreamInterrupted):  # missed some: read it anyway
                    await messages.get()
                await self._publish_session(car)

    async def _follow_state(self, car: Car) -> None:
        """Publish each charge-state change and each switch outcome of ``car``."""
        topics = (charge_state_topic(car.vehicle_id), commands.outcome_topic(car.vehicle_id))
        async with self.services.events.subscribe(*topics) as messages:
            if not await self._publish_car(car):
                await self._first_read(car)
            while True:
                try:
                    message = await messages.get()
                except StreamInterrupted:  # events may have been missed: read again
                    await self._publish_car(car)
                    continue
                if message is not None:
                    await self._on_car_message(car, message)

    async def _on_car_message(self, car: Car, message: dict[str, Any]) -> None:
        outcome = message.get(commands.OUTCOME)
        if outcome is None:
            await self._publish(self._state_topic(car), _json(state_payload(message)))
        elif outcome == commands.REFUSED:
            payload = refusal_payload(
                str(message.get("action")),
                str(message.get("code")),
                str(message.get("message")),
                format_timestamp(_now()),
            )
            await self._publish(self._command_topic(car), _json(payload))
        elif outcome == commands.MADE:
            self._follow_command(car, str(message.get("commandId")))

    def _follow_command(self, car: Car, command_id: str) -> None:
        current = self._command_followers.get(car.vehicle_id)
        if current is not None and current[0] == command_id and not current[1].done():
            return
        if current is not None:
            current[1].cancel()
        task = asyncio.create_task(
            self._publish_command_until_final(car, command_id), name=f"mqtt-command-{command_id}"
        )
        self._command_followers[car.vehicle_id] = (command_id, task)

    async def _publish_command_until_final(self, car: Car, command_id: str) -> None:
        """Publish the command as it stands and on each of its events until it ends."""
        try:
            async with self.services.events.subscribe(command_topic(command_id)) as messages:
                while True:
                    command = await ChargingCommand.get_or_none(id=command_id)
                    if command is None:
                        return
                    await self._publish(self._command_topic(car), _json(command_json(command)))
                    if command.state.is_final:
                        return
                    with contextlib.suppress(StreamInterrupted):
                        await messages.get(timeout=self.scan_interval)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("mqtt: following command %s failed", command_id)


def build_bridge(services: Services, settings: Settings, scan_interval: float) -> MqttBridge | None:
    """The bridge the settings ask for; None without ``EVLINK_MQTT_URL``."""
    if not settings.mqtt_url:
        return None
    return MqttBridge(
        services,
        parse_broker_url(settings.mqtt_url),
        Topics(settings.mqtt_prefix, settings.mqtt_discovery_prefix),
        scan_interval=scan_interval,
        lease_seconds=settings.command_lease,
    )
