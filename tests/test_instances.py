"""Several instances on one PostgreSQL and one Redis: events, leases, takeover, shutdown.

These run only on PostgreSQL with ``EVLINK_TEST_REDIS_URL`` set (CI sets both);
elsewhere they skip with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import httpx
import pytest
import websockets
from gql.transport.exceptions import TransportQueryError

from evlink.domain import ChargingAction
from evlink.events import RedisEventBus
from evlink.models import ChargingCommand, CommandState, Tier, User, Vehicle
from evlink.models.database import open_database
from evlink.resolvers import accounts
from evlink.resolvers.charging import CommandWatcher
from evlink.resolvers.follow import wait_for_command
from evlink.settings import Settings
from tests.conftest import (
    PROTOCOLS,
    TIMEOUT,
    WEBHOOK_SECRET,
    _truncate,
    enode_settings,
    free_port,
    next_result,
    run_enode_world,
    run_server,
    serve_process,
    shared_settings,
    subscription,
    two_instances,
)
from tests.faults.redis_server import RedisServer

COMMAND = "subscription($id: ID!) { chargingCommand(id: $id) { state } }"
CHARGE_STATE = "subscription($id: ID!) { chargeState(vehicleId: $id) { isPluggedIn } }"


@pytest.fixture
def shared(settings: Settings) -> Settings:
    """Settings for instances that share the database and Redis."""
    return replace(shared_settings(settings), command_lease=0.9)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_subscriber_on_one_instance_sees_a_command_followed_on_another(
    shared: Settings, protocol: str
) -> None:
    async with two_instances(shared) as pair:
        a, b, clock = pair.a, pair.b, pair.clock
        user, key = await a.user()
        vehicle = await a.vehicle(user, "plugged")
        async with a.gql_client(key, protocol) as session:
            created = await b.graphql(
                "mutation($id: ID!) { setCharging(vehicleId: $id, action: START) { id } }",
                {"id": str(vehicle.id)},
                key=key,
            )
            command_id = created["data"]["setCharging"]["id"]
            async with subscription(session, COMMAND, id=command_id) as stream:
                assert (await next_result(stream))["chargingCommand"]["state"] == "PENDING"
                await clock.advance(2)  # the car starts; B follows the command it took
                assert (await next_result(stream))["chargingCommand"]["state"] == "CONFIRMED"
        command = await ChargingCommand.get(id=command_id)
        assert command.lease_owner is None  # released at the end


async def test_a_charge_state_change_received_by_one_instance_reaches_the_other(
    shared: Settings,
) -> None:
    async with two_instances(shared) as pair:
        a, b, clock, car_park = pair.a, pair.b, pair.clock, pair.car_park
        user, key = await a.user()
        vehicle = await a.vehicle(user, "plugged")
        async with (
            a.gql_client(key, PROTOCOLS[0]) as session,
            subscription(session, CHARGE_STATE, id=str(vehicle.id)) as stream,
        ):
            assert (await next_result(stream))["chargeState"]["isPluggedIn"] is True
            car_park.update_vehicle(vehicle.provider_vehicle_id or "", is_plugged_in=False)
            await clock.advance(1)  # the step is pushed into B (the last to start)
            assert (await next_result(stream))["chargeState"]["isPluggedIn"] is False
        assert b.services.events is not a.services.events


async def test_each_command_is_claimed_by_exactly_one_instance(shared: Settings) -> None:
    await _truncate(shared.database_url)
    async with run_server(shared) as server:
        user, _ = await server.user(tier=Tier.PRO)
        await User.filter(id=user.id).update(tier=Tier.PRO)
        deadline = datetime.now(UTC) + timedelta(minutes=5)
        cars = [  # one pending command per vehicle, as the database insists
            await Vehicle.create(
                user=user, provider="simulator", provider_vehicle_id=f"sim-plugged-{uuid4().hex}"
            )
            for _ in range(20)
        ]
        watchers = [CommandWatcher(server.services, owner=f"instance-{i}") for i in range(4)]
        await ChargingCommand.bulk_create(
            ChargingCommand(
                vehicle=car, user=user, action=ChargingAction.START, deadline_at=deadline
            )
            for car in cars
        )
        commands = await ChargingCommand.filter(vehicle_id__in=[car.id for car in cars])

        claims = await asyncio.gather(
            *(w.claim(c.id) for c in commands for w in watchers)  # 80 racing claims
        )

        # The server's own watcher may have scanned first (it claims lapsed and free
        # leases every few seconds): then none of the four wins. Never two.
        assert server.services.watcher is not None
        held = {
            c.id: c.lease_owner
            for c in await ChargingCommand.filter(id__in=[c.id for c in commands])
        }
        for i, command in enumerate(commands):
            won = [w.owner for w, ok in zip(watchers, claims[i * 4 : i * 4 + 4], strict=True) if ok]
            assert len(won) <= 1
            assert held[command.id] == (won[0] if won else server.services.watcher.owner)
        assert any(claims)  # the race ran: the server's scan did not take them all first
        await ChargingCommand.filter(id__in=[c.id for c in commands]).delete()


async def test_killed_instance_command_is_taken_over_without_a_duplicate_action(
    shared: Settings,
) -> None:
    async with run_enode_world(shared) as world:
        fake, b = world.fake, world.server
        user, key = await world.linked_user()
        vehicle = await world.vehicle(
            user, isPluggedIn=True, powerDeliveryState="PLUGGED_IN:STOPPED"
        )
        # Instance A: a real `evlink serve` process on the same database, Redis and Enode.
        a_settings = enode_settings(shared, fake.base_url or "")
        async with serve_process(
            a_settings.database_url,
            EVLINK_REDIS_URL=a_settings.redis_url,
            EVLINK_PROVIDER="enode",
            EVLINK_ENODE_CLIENT_ID=a_settings.enode_client_id,
            EVLINK_ENODE_CLIENT_SECRET=a_settings.enode_client_secret,
            EVLINK_ENODE_API_URL=a_settings.enode_api_url,
            EVLINK_ENODE_OAUTH_URL=a_settings.enode_oauth_url,
            EVLINK_ENODE_WEBHOOK_SECRET=WEBHOOK_SECRET,
            EVLINK_COMMAND_LEASE="0.9",
            EVLINK_CHARGING_POLL_INTERVAL="60",
        ) as a_url:
            async with httpx.AsyncClient(base_url=a_url) as a:
                answer = await a.post(
                    f"/api/charging/{vehicle.id}",
                    json={"action": "START"},
                    headers={"Authorization": f"Bearer {key}"},
                )
            assert answer.status_code == 200, answer.text
            command_id = answer.json()["command_id"]
            taken = await ChargingCommand.get(id=command_id)
            assert taken.lease_owner is not None
            assert taken.lease_owner != b.services.watcher.owner  # type: ignore[union-attr]
        # serve_process ends A with SIGKILL: no goodbye, the lease stays behind.

        # The car starts; Enode tells B (its webhook). B takes the command over once
        # A's lease lapses, and confirms it from what it has recorded, without a resend.
        await fake.resolve_action_and_notify(answer.json()["enode_response"]["id"])
        command = await ChargingCommand.get(id=command_id)
        final = await wait_for_command(b.services, command, TIMEOUT)
        assert final.lease_owner is None

    assert final.state == CommandState.CONFIRMED
    assert final.attempts == 1
    posts = [p for m, p in fake.requests if m == "POST" and p.endswith("/charging")]
    assert posts == [f"/vehicles/{vehicle.provider_vehicle_id}/charging"]


async def test_shutdown_closes_websockets_with_1001_and_releases_leases(
    shared: Settings,
) -> None:
    await _truncate(shared.database_url)
    async with run_server(shared) as first:
        user, key = await first.user()
        vehicle = await first.vehicle(user, "plugged")
        created = await first.graphql(
            "mutation($id: ID!) { setCharging(vehicleId: $id, action: START) { id } }",
            {"id": str(vehicle.id)},
            key=key,
        )
        command_id = created["data"]["setCharging"]["id"]
        socket_ = await websockets.connect(
            first.ws_url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")]
        )
        await socket_.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}})
        )
        assert json.loads(await socket_.recv())["type"] == "connection_ack"
        await socket_.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": COMMAND, "variables": {"id": command_id}},
                }
            )
        )
        assert json.loads(await socket_.recv())["payload"]["data"]["chargingCommand"]["state"] == (
            "PENDING"
        )
        simulator = first.simulator
        clock = first.clock
    # The block's end shut the server down, as SIGTERM does.
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(socket_.recv(), TIMEOUT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1001
    async with open_database(shared.database_url):
        command = await ChargingCommand.get(id=command_id)
    assert command.state == CommandState.PENDING
    assert command.lease_owner is None  # released: another instance may follow it at once

    async with run_server(shared, clock=clock, simulator=simulator) as second:
        await clock.advance(2)
        final = await wait_for_command(second.services, command, TIMEOUT)
    assert final.state == CommandState.CONFIRMED


@contextlib.asynccontextmanager
async def private_redis(port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    """A redis-server of this test's own on 127.0.0.1:port, stopped at the end; yields its
    process (a test may kill it)."""
    server = RedisServer(port)
    await server.start()
    try:
        assert server.process is not None
        yield server.process
    finally:
        await server.stop()


async def test_lost_redis_ends_subscriptions_with_an_error_then_reconnects(
    settings: Settings,
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    await _truncate(settings.database_url)
    shared = replace(settings, redis_url=f"redis://127.0.0.1:{port}/0")
    async with private_redis(port) as redis_process, run_server(shared) as server:
        bus = server.services.events
        assert isinstance(bus, RedisEventBus)
        assert bus.connected.is_set()
        user, key = await server.user()
        vehicle = await server.vehicle(user, "plugged")
        async with (
            server.gql_client(key, PROTOCOLS[0]) as session,
            subscription(session, CHARGE_STATE, id=str(vehicle.id)) as stream,
        ):
            assert (await next_result(stream))["chargeState"]["isPluggedIn"] is True
            redis_process.kill()  # Redis goes away mid-stream
            with pytest.raises(TransportQueryError) as broken:
                await next_result(stream)
        assert broken.value.errors is not None
        assert broken.value.errors[0]["extensions"]["code"] == "STREAM_INTERRUPTED"
        lost = await server.http.get("/readyz")  # still serving: not out of the balancer
        assert (lost.status_code, lost.json()["redis"]) == (200, "degraded")
        await redis_process.wait()
        async with private_redis(port):
            await asyncio.wait_for(bus.connected.wait(), TIMEOUT)
            back = await server.http.get("/readyz")
            assert (back.status_code, back.json()["redis"]) == (200, "ok")


async def test_concurrent_enode_links_on_two_instances_give_one_enode_user_id(
    shared: Settings,
) -> None:
    """Both instances hold the user in their auth cache without an Enode id; six
    `linkVehicleAccount` calls spread over them give the user one id, the one stored."""
    link = "mutation($uri: String!) { linkVehicleAccount(redirectUri: $uri) }"
    async with run_enode_world(shared) as world:
        a = world.server
        async with run_server(enode_settings(shared, world.fake.base_url or "")) as b:
            user, key = await a.user()
            for instance in (a, b):
                warm = await instance.graphql("{ viewer { email } }", key=key)
                assert warm["data"]["viewer"]["email"] == user.email

            bodies = await asyncio.gather(
                *(
                    instance.graphql(link, {"uri": "https://example.com/"}, key=key)
                    for instance in (a, b, a, b, a, b)
                )
            )

            assert all("errors" not in body for body in bodies), bodies
            given = (await User.get(id=user.id)).enode_user_id
            assert given is not None
            assert [link["userId"] for link in world.fake.links.values()] == [given] * 6


async def test_a_car_removed_through_one_instance_ends_a_subscription_on_the_other(
    shared: Settings,
) -> None:
    async with two_instances(shared) as pair:
        a, b = pair.a, pair.b
        user, key = await a.user()
        vehicle = await a.vehicle(user, "plugged")
        cached = await a.http.get(
            f"/api/status/{vehicle.id}", headers={"Authorization": f"Bearer {key}"}
        )
        assert cached.status_code == 200
        async with (
            a.gql_client(key, PROTOCOLS[0]) as session,
            subscription(session, CHARGE_STATE, id=str(vehicle.id)) as stream,
        ):
            assert (await next_result(stream))["chargeState"]["isPluggedIn"] is True
            await accounts.remove_vehicle(b.services, vehicle)
            with pytest.raises(TransportQueryError) as ended:
                await next_result(stream)
        assert ended.value.errors is not None
        assert ended.value.errors[0]["extensions"]["code"] == "NOT_FOUND"
        # The subscription ended on the invalidation that also reached a's read cache.
        gone = await a.http.get(
            f"/api/status/{vehicle.id}", headers={"Authorization": f"Bearer {key}"}
        )
        assert gone.status_code == 404
