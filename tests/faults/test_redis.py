"""A Redis that blinks: subscriptions, ``?wait``, the read cache and the logs of two
instances on one PostgreSQL and a redis-server of the test's own, stopped, started and
frozen under them.

What must hold (issue 15, parts 1 and 7): no subscriber goes silently stale, the
event reader comes back within a second of Redis, an event published just after
Redis came back reaches the other instance, and an outage is logged once.

The tests of instances run on PostgreSQL only (two instances share it) and are
skipped with the reason on SQLite; those of the event bus alone need only
redis-server. Each test starts a redis-server of its own on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from itertools import pairwise

import pytest
import redis.asyncio as aioredis
from gql.transport.exceptions import TransportQueryError

from evlink.errors import StreamInterrupted
from evlink.events import SILENCE_LIMIT, RedisEventBus
from evlink.models import ChargingCommand, CommandState
from evlink.providers.simulator import ManualClock, Simulator, SystemClock
from evlink.resolvers.follow import wait_for_command
from evlink.settings import Settings
from tests.conftest import (
    PROTOCOLS,
    TIMEOUT,
    Server,
    _truncate,
    next_result,
    run_server,
    subscription,
)
from tests.faults.redis_server import ClosingPort, RedisServer, SlowLink, redis_server

COMMAND = "subscription($id: ID!) { chargingCommand(id: $id) { state } }"
CHARGE_STATE = "subscription($id: ID!) { chargeState(vehicleId: $id) { isPluggedIn } }"
START = "mutation($id: ID!) { setCharging(vehicleId: $id, action: START) { id } }"


@pytest.fixture
async def own_redis() -> AsyncIterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    async with redis_server() as server:
        yield server


@pytest.fixture
async def redis(settings: Settings, own_redis: RedisServer) -> RedisServer:
    """The test's own Redis, for instances on the shared (emptied) PostgreSQL."""
    if settings.is_sqlite:
        pytest.skip("the Redis fault suite runs two instances on one PostgreSQL; this is SQLite")
    await _truncate(settings.database_url)
    return own_redis


@pytest.fixture
def shared(settings: Settings, redis: RedisServer) -> Settings:
    """Settings for instances on the shared PostgreSQL and the test's own Redis."""
    return replace(settings, redis_url=redis.url, command_lease=0.9)


def bus(server: Server) -> RedisEventBus:
    events = server.services.events
    assert isinstance(events, RedisEventBus)
    return events


async def redis_lost(redis: RedisServer, *servers: Server) -> None:
    """Stop Redis; return once every server's event bus has noticed."""
    async with contextlib.AsyncExitStack() as stack:
        probes = [
            await stack.enter_async_context(server.services.events.subscribe("probe"))
            for server in servers
        ]
        await redis.stop()
        for probe in probes:
            with pytest.raises(StreamInterrupted):
                await probe.get(timeout=TIMEOUT)


async def redis_back(redis: RedisServer, *servers: Server) -> None:
    """Start Redis again; return once every server reads events from it."""
    await redis.start()
    for server in servers:
        await asyncio.wait_for(bus(server).connected.wait(), TIMEOUT)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_subscription_asked_while_redis_is_down_sends_what_it_reads_then_ends(
    shared: Settings, redis: RedisServer, protocol: str
) -> None:
    async with run_server(shared) as server:
        user, key = await server.user()
        vehicle = await server.vehicle(user, "plugged")
        created = await server.graphql(START, {"id": str(vehicle.id)}, key=key)
        command_id = created["data"]["setCharging"]["id"]
        await redis_lost(redis, server)
        async with server.gql_client(key, protocol) as session:
            # Other instances' events cannot arrive: what it reads now, then an error at
            # once, rather than PENDING and then silence.
            async with subscription(session, COMMAND, id=command_id) as stream:
                assert (await next_result(stream))["chargingCommand"]["state"] == "PENDING"
                with pytest.raises(TransportQueryError) as ended:
                    await next_result(stream)
            async with subscription(session, CHARGE_STATE, id=str(vehicle.id)) as stream:
                assert (await next_result(stream))["chargeState"]["isPluggedIn"] is True
                with pytest.raises(TransportQueryError) as also_ended:
                    await next_result(stream)
            # A command that has ended has nothing left to follow: its subscription
            # completes as usual.
            await server.clock.advance(2)  # the car starts; this instance confirms it
            command = await ChargingCommand.get(id=command_id)
            confirmed = await wait_for_command(server.services, command, TIMEOUT)
            assert confirmed.state == CommandState.CONFIRMED
            async with subscription(session, COMMAND, id=command_id) as stream:
                assert (await next_result(stream))["chargingCommand"]["state"] == "CONFIRMED"
                with pytest.raises(StopAsyncIteration):
                    await next_result(stream)
    for error in (ended.value.errors, also_ended.value.errors):
        assert error is not None
        assert error[0]["extensions"] == {"code": "STREAM_INTERRUPTED", "retryAfter": 1}


async def test_wait_reads_the_database_while_redis_is_down(
    shared: Settings, redis: RedisServer
) -> None:
    # B's cars run on real time: a START takes 1.5 s, long after A has begun to wait.
    car_park = Simulator(SystemClock(), action_delay=1.5, tick=0.1)
    async with run_server(shared) as a, run_server(shared, simulator=car_park) as b:
        user, key = await b.user()
        vehicle = await b.vehicle(user, "plugged")
        await redis_lost(redis, a, b)
        headers = {**auth(key), "Idempotency-Key": "blink-1"}
        taken = await b.http.post(
            f"/api/charging/{vehicle.id}", json={"action": "START"}, headers=headers
        )
        assert taken.status_code == 200, taken.text  # B follows the command
        loop = asyncio.get_running_loop()
        asked = loop.time()
        # The same request on A (same key: the same command) waits for its outcome. B's
        # confirmation cannot reach A as an event: A must read the database.
        waited = await a.http.post(
            f"/api/charging/{vehicle.id}?wait=8", json={"action": "START"}, headers=headers
        )
        took = loop.time() - asked
    assert waited.status_code == 200, waited.text
    assert waited.json()["command_id"] == taken.json()["command_id"]
    assert waited.json()["state"] == "CONFIRMED"
    assert took < 5


async def test_the_event_reader_is_back_within_a_second_of_redis(
    shared: Settings, redis: RedisServer
) -> None:
    async with run_server(shared) as server:
        events = bus(server)
        async with events.subscribe("probe") as probe:
            await redis_lost(redis, server)
            with pytest.raises(StreamInterrupted):
                await probe.get(timeout=TIMEOUT)  # told when the link broke
            # While Redis is away its port closes every connection: the reader keeps
            # trying, and the pause between two tries stays under a second.
            async with ClosingPort(redis.port) as port:
                arrivals = await asyncio.wait_for(port.connections(8), 3 * TIMEOUT)
            assert max(later - earlier for earlier, later in pairwise(arrivals)) < 1.0
            loop = asyncio.get_running_loop()
            await redis.start()
            answering = loop.time()
            await asyncio.wait_for(events.connected.wait(), TIMEOUT)
            assert loop.time() - answering < 1.0
            # Told again once it is back: events published in between were missed,
            # so whoever stayed subscribed reads what it follows again.
            with pytest.raises(StreamInterrupted):
                await probe.get(timeout=TIMEOUT)
            # A quiet link that still answers (a ping) is kept past the silence limit.
            assert await probe.get(timeout=SILENCE_LIMIT + 1) is None


async def test_an_instance_back_on_redis_serves_what_changed_while_it_was_away(
    shared: Settings, redis: RedisServer
) -> None:
    clock = ManualClock()
    car_park = Simulator(clock, action_delay=1.0)  # the one provider both instances talk to
    async with (
        run_server(shared, clock=clock, simulator=car_park) as a,
        run_server(shared, clock=clock, simulator=car_park) as b,
    ):
        user, key = await a.user()
        vehicle = await a.vehicle(user, "plugged")
        status = f"/api/status/{vehicle.id}"
        assert (await a.http.get(status, headers=auth(key))).json()["isPluggedIn"] is True
        await redis_lost(redis, a, b)
        assert (await a.http.get(status, headers=auth(key))).json()["isPluggedIn"] is True
        car_park.update_vehicle(vehicle.provider_vehicle_id or "", is_plugged_in=False)
        await clock.advance(1)  # pushed into B (the last to start); A is not told
        # A answers from its read cache for at most EVLINK_CACHE_TTL while Redis is away.
        assert (await a.http.get(status, headers=auth(key))).json()["isPluggedIn"] is True
        await redis_back(redis, a, b)
        # Back on Redis, A's cache has read again: what B changed shows at once.
        assert (await a.http.get(status, headers=auth(key))).json()["isPluggedIn"] is False


async def test_the_bus_is_live_only_once_redis_confirms_its_subscription(
    own_redis: RedisServer,
) -> None:
    """Over a slow link the subscription reaches Redis late. Subscribers are served from
    events only once Redis has confirmed it, so what another instance publishes right
    after is not missed."""
    async with SlowLink(own_redis.port, delay=0.3) as link:
        far = RedisEventBus(link.url, prefix="evlink:faults:events:")
        near = RedisEventBus(own_redis.url, prefix="evlink:faults:events:")
        try:
            await far.start(timeout=TIMEOUT)
            assert far.live
            async with far.subscribe("topic") as messages:
                await near.publish("topic", {"n": 1})
                assert await messages.get(timeout=TIMEOUT) == {"n": 1}
        finally:
            await far.aclose()
            await near.aclose()


async def test_an_unreadable_message_does_not_stop_the_reader(own_redis: RedisServer) -> None:
    prefix = "evlink:faults:events:"
    reader = RedisEventBus(own_redis.url, prefix=prefix)
    writer = RedisEventBus(own_redis.url, prefix=prefix)
    stranger = aioredis.from_url(own_redis.url)
    try:
        await reader.start(timeout=TIMEOUT)
        async with reader.subscribe("topic") as messages:
            for unreadable in (b"not json", b"[]", b'{"origin": "other"}'):
                await stranger.publish(prefix + "topic", unreadable)
            await writer.publish("topic", {"n": 1})
            assert await messages.get(timeout=TIMEOUT) == {"n": 1}
    finally:
        await stranger.aclose()
        await reader.aclose()
        await writer.aclose()


async def test_a_frozen_redis_link_ends_subscriptions_within_seconds(
    shared: Settings, redis: RedisServer
) -> None:
    async with run_server(shared) as server:
        user, key = await server.user()
        vehicle = await server.vehicle(user, "plugged")
        loop = asyncio.get_running_loop()
        async with (
            server.gql_client(key, PROTOCOLS[0]) as session,
            subscription(session, CHARGE_STATE, id=str(vehicle.id)) as stream,
        ):
            assert (await next_result(stream))["chargeState"]["isPluggedIn"] is True
            redis.freeze()  # the link stays open and says nothing
            frozen = loop.time()
            with pytest.raises(TransportQueryError) as broken:
                await next_result(stream)
            noticed = loop.time() - frozen
        asked = loop.time()
        ready = await server.http.get("/readyz")  # degraded: this instance still serves
        readiness_took = loop.time() - asked
        redis.thaw()
        await asyncio.wait_for(bus(server).connected.wait(), TIMEOUT)
    assert broken.value.errors is not None
    assert broken.value.errors[0]["extensions"]["code"] == "STREAM_INTERRUPTED"
    assert noticed < 5
    assert ready.status_code == 200
    assert ready.json()["redis"] == "degraded"
    assert readiness_took < 3  # a load balancer's health check does not time out


async def test_the_first_event_after_redis_returns_reaches_the_other_instance(
    shared: Settings, redis: RedisServer
) -> None:
    clock = ManualClock()
    a_cars = Simulator(clock, action_delay=1.0)  # A's alone: its steps are pushed into A
    async with run_server(shared, clock=clock, simulator=a_cars) as a, run_server(shared) as b:
        user, key = await a.user()
        vehicle = await a.vehicle(user, "plugged")
        # A reads the car from its provider and publishes what it found: its pool now
        # holds a connection, which dies with Redis.
        assert (await a.http.get(f"/api/status/{vehicle.id}", headers=auth(key))).status_code == 200
        await redis_lost(redis, a, b)
        await redis_back(redis, a, b)
        async with (
            b.gql_client(key, PROTOCOLS[1]) as session,
            subscription(session, CHARGE_STATE, id=str(vehicle.id)) as stream,
        ):
            assert (await next_result(stream))["chargeState"]["isPluggedIn"] is True
            a_cars.update_vehicle(vehicle.provider_vehicle_id or "", is_plugged_in=False)
            await clock.advance(1)  # A records the change: its first publish since then
            assert (await next_result(stream))["chargeState"]["isPluggedIn"] is False


async def test_an_outage_is_logged_once_not_per_event_or_subscriber(
    shared: Settings, redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="evlink")
    async with run_server(shared) as server:
        user, key = await server.user()
        cars = [await server.vehicle(user, "charging") for _ in range(2)]
        for car in cars:  # read once: from now on each step publishes two events per car
            assert (await server.http.get(f"/api/status/{car.id}", headers=auth(key))).is_success
        for _outage in range(2):
            caplog.clear()
            async with (
                server.gql_client(key, PROTOCOLS[0]) as session,
                contextlib.AsyncExitStack() as stack,
            ):
                streams = [
                    await stack.enter_async_context(
                        subscription(session, CHARGE_STATE, id=str(car.id))
                    )
                    for car in cars
                ]
                for stream in streams:
                    await next_result(stream)
                await redis_lost(redis, server)
                for stream in streams:
                    with pytest.raises(TransportQueryError):
                        await next_result(stream)
            for _tick in range(3):
                await server.clock.advance(60)  # charge states and invalidations, all lost
            async with ClosingPort(redis.port) as port:
                await asyncio.wait_for(port.connections(3), TIMEOUT)  # the reader tries again
            await redis_back(redis, server)
            await server.clock.advance(60)  # published again
            logged = [
                (r.levelname, r.name)
                for r in caplog.records
                # The rate limiter logs its own switch to memory and back (evlink.ratelimit).
                if r.name.startswith("evlink")
                and r.name != "evlink.ratelimit"
                and r.levelno >= logging.WARNING
            ]
            assert sorted(logged) == [("WARNING", "evlink.events")] * 2, caplog.text
            assert "publishing to Redis works again" in caplog.text
