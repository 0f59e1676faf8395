"""Subscriptions over real websockets with the gql client, on both protocols."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from datetime import timedelta

import pytest
import websockets
from gql import Client
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport

from evlink.events import charge_state_topic, command_topic
from evlink.models import ChargeState, Tier
from evlink.models.vehicles import charge_state_data
from evlink.settings import Settings
from tests.conftest import (
    PLUGGED,
    PLUGGED_AND_STATE,
    PROTOCOLS,
    TIMEOUT,
    Server,
    _truncate,
    next_result,
    plugged_subscribers,
    run_server,
    subscription,
)

SET_CHARGING = """
mutation($id: ID!, $action: ChargingAction!) {
  setCharging(vehicleId: $id, action: $action) { id state attempts action }
}
"""
COMMAND = """
subscription($id: ID!) { chargingCommand(id: $id) { id state attempts failureReason } }
"""
CHARGE_STATE = """
subscription($id: ID!) {
  chargeState(vehicleId: $id) { batteryLevel isCharging powerDeliveryState lastUpdated }
}
"""


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_start_is_pending_then_confirmed_and_status_says_charging(
    server: Server, protocol: str
) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")

    created = await server.graphql(
        SET_CHARGING, {"id": str(vehicle.id), "action": "START"}, key=key
    )
    command = created["data"]["setCharging"]
    assert command["state"] == "PENDING"
    assert command["attempts"] == 1

    async with (
        server.gql_client(key, protocol) as session,
        subscription(session, COMMAND, id=command["id"]) as stream,
    ):
        first = await next_result(stream)
        assert first["chargingCommand"]["state"] == "PENDING"

        await server.clock.advance(2)  # the simulated car takes the action after 1 s

        second = await next_result(stream)
        assert second["chargingCommand"]["state"] == "CONFIRMED"
        with pytest.raises(StopAsyncIteration):
            await next_result(stream)  # completes after an end state

    status = await server.http.get(
        f"/api/status/{vehicle.id}", headers={"Authorization": f"Bearer {key}"}
    )
    body = status.json()
    assert body["isCharging"] is True
    assert body["chargingState"] == "PLUGGED_IN:CHARGING"
    assert body["chargeState"]["isCharging"] is True


async def test_a_command_event_that_changes_nothing_sends_nothing(server: Server) -> None:
    """An event on the command's topic is a prompt to read it again, not a change: the
    subscriber gets the command only when it changed (state, attempts, action)."""
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    created = await server.graphql(
        SET_CHARGING, {"id": str(vehicle.id), "action": "START"}, key=key
    )
    command_id = created["data"]["setCharging"]["id"]

    async with (
        server.gql_client(key, PROTOCOLS[0]) as session,
        subscription(session, COMMAND, id=command_id) as stream,
    ):
        first = await next_result(stream)
        for _ in range(2):  # as a re-published or another instance's message would be
            await server.services.events.publish(command_topic(command_id), {"id": command_id})
        await server.clock.advance(2)
        second = await next_result(stream)

    assert first["chargingCommand"]["state"] == "PENDING"
    assert second["chargingCommand"]["state"] == "CONFIRMED"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_charge_state_streams_current_then_each_change(server: Server, protocol: str) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "charging", battery_level=30.0, charge_limit=90)

    async with (
        server.gql_client(key, protocol) as session,
        subscription(session, CHARGE_STATE, id=str(vehicle.id)) as stream,
    ):
        now = (await next_result(stream))["chargeState"]
        assert now["isCharging"] is True
        assert now["powerDeliveryState"] == "PLUGGED_IN:CHARGING"

        await server.clock.advance(1800)
        later = (await next_result(stream))["chargeState"]
        assert later["batteryLevel"] > now["batteryLevel"]
        assert later["lastUpdated"] > now["lastUpdated"]

        server.simulator.update_vehicle(vehicle.provider_vehicle_id or "", is_plugged_in=False)
        await server.clock.advance(1)
        unplugged = (await next_result(stream))["chargeState"]
        assert unplugged["powerDeliveryState"] == "UNPLUGGED"
        assert unplugged["isCharging"] is False


async def test_an_event_older_than_what_was_sent_is_not_sent(server: Server) -> None:
    """A subscription sends the state it reads first; an event published before that
    read may arrive after it (seen once from outside: 32.340 then 32.332): it is not
    sent, so a subscriber never sees the state go back in time."""
    user, key = await server.user()
    vehicle = await server.vehicle(user, "charging", battery_level=30.0)
    topic = charge_state_topic(vehicle.id)

    async with (
        server.gql_client(key, PROTOCOLS[0]) as session,
        subscription(session, CHARGE_STATE, id=str(vehicle.id)) as stream,
    ):
        first = (await next_result(stream))["chargeState"]
        sent = await ChargeState.get(vehicle_id=vehicle.id)
        state = charge_state_data(sent)
        older = replace(
            state, battery_level=10, last_updated=state.last_updated - timedelta(seconds=1)
        )
        newer = replace(
            state, battery_level=50, last_updated=state.last_updated + timedelta(seconds=1)
        )
        for event in (older, newer):  # as the bus delivers them: out of order
            await server.services.events.publish(
                topic, {"vehicleId": str(vehicle.id), **event.to_enode()}
            )
        following = (await next_result(stream))["chargeState"]

    assert first["batteryLevel"] == 30
    assert following["batteryLevel"] == 50  # the older one (10) was never sent


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_only_the_owner_may_subscribe(server: Server, protocol: str) -> None:
    owner, _ = await server.user()
    _, other_key = await server.user(tier=Tier.PRO)
    vehicle = await server.vehicle(owner, "charging")

    async with (
        server.gql_client(other_key, protocol) as session,
        subscription(session, CHARGE_STATE, id=str(vehicle.id)) as stream,
    ):
        with pytest.raises(TransportQueryError) as refused:
            await next_result(stream)
    assert refused.value.errors is not None
    assert refused.value.errors[0]["extensions"]["code"] == "FORBIDDEN_OWNER"


async def test_bad_key_closes_graphql_transport_ws_with_4401_before_any_operation(
    server: Server,
) -> None:
    async with websockets.connect(
        server.ws_url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")]
    ) as socket:
        await socket.send('{"type": "connection_init", "payload": {"Authorization": "Bearer x"}}')
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), TIMEOUT)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
        4401,
        "Missing or invalid API key",
    )


async def test_bad_key_gets_connection_error_on_legacy_graphql_ws(server: Server) -> None:
    async with websockets.connect(
        server.ws_url, subprotocols=[websockets.Subprotocol("graphql-ws")]
    ) as socket:
        await socket.send('{"type": "connection_init", "payload": {"Authorization": "Bearer x"}}')
        answer = json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))
        assert answer["type"] == "connection_error"
        assert answer["payload"]["code"] == "UNAUTHENTICATED"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), TIMEOUT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401  # as on graphql-transport-ws, not 1011


async def test_key_in_upgrade_header_is_accepted(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    transport = WebsocketsTransport(
        url=server.ws_url,
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
        headers={"Authorization": f"Bearer {key}"},
    )
    async with (
        Client(transport=transport) as session,
        subscription(session, CHARGE_STATE, id=str(vehicle.id)) as stream,
    ):
        first = await next_result(stream)
    assert first["chargeState"]["powerDeliveryState"] == "PLUGGED_IN:STOPPED"


async def test_a_query_over_legacy_graphql_ws_is_a_clear_client_error(server: Server) -> None:
    _, key = await server.user()
    async with websockets.connect(
        server.ws_url, subprotocols=[websockets.Subprotocol("graphql-ws")]
    ) as socket:
        await socket.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}})
        )
        assert json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))["type"] == (
            "connection_ack"
        )
        await socket.send(
            json.dumps({"id": "1", "type": "start", "payload": {"query": "{ viewer { id } }"}})
        )
        answer = {"type": "ka"}
        for _ in range(5):  # bounded: keep-alives may come first
            answer = json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))
            if answer["type"] != "ka":
                break
    assert answer["type"] == "error"
    assert answer["payload"]["extensions"]["code"] == "BAD_REQUEST"


async def _keep_alives_only(socket: websockets.ClientConnection) -> None:
    """Read what comes (bounded: a few keep-alives at most) until the socket closes."""
    for _ in range(5):
        message = json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))
        assert message["type"] == "ka", message


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_second_connection_init_closes_the_socket_on_both_protocols(
    server: Server, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """graphql-ws acked every ``connection_init`` (even with a bad key) and started a
    keep-alive task for each, which filled the log with tracebacks after the close."""
    _, key = await server.user()
    async with websockets.connect(
        server.ws_url, subprotocols=[websockets.Subprotocol(protocol)]
    ) as socket:
        for payload in ({"Authorization": f"Bearer {key}"}, {"Authorization": "Bearer evl_x"}):
            await socket.send(json.dumps({"type": "connection_init", "payload": payload}))
        assert json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))["type"] == (
            "connection_ack"
        )
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await _keep_alives_only(socket)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
        4429,
        "Too many initialisation requests",
    )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_an_unknown_operation_name_is_the_client_s_mistake_on_both_protocols(
    server: Server, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """As HTTP's 400: a BAD_REQUEST error naming the operation, not an internal error
    with a traceback in the server's log for every such message."""
    _, key = await server.user()
    document = 'subscription A { chargeState(vehicleId: "1") { range } } ' + (
        'subscription B { chargeState(vehicleId: "1") { batteryLevel } }'
    )
    start = "subscribe" if protocol == "graphql-transport-ws" else "start"
    async with websockets.connect(
        server.ws_url, subprotocols=[websockets.Subprotocol(protocol)]
    ) as socket:
        await socket.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}})
        )
        assert json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))["type"] == (
            "connection_ack"
        )
        payload = {"query": document, "operationName": "X"}
        await socket.send(json.dumps({"id": "1", "type": start, "payload": payload}))
        answer = {"type": "ka"}
        for _ in range(5):  # bounded: keep-alives may come first
            answer = json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))
            if answer["type"] != "ka":
                break
    assert answer["type"] == "error", answer
    (error,) = answer["payload"] if isinstance(answer["payload"], list) else [answer["payload"]]
    assert error["message"] == 'Unknown operation named "X".'
    assert error["extensions"] == {"code": "BAD_REQUEST"}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_subscribers_of_one_change_each_get_their_own_selection(server: Server) -> None:
    """One change is executed once per document and variables (schema.fanout): subscribers
    with the same document share the result, others get theirs, other cars are apart."""
    owner, key = await server.user()
    car = await server.vehicle(owner, "plugged")
    other_car = await server.vehicle(owner, "plugged")
    async with plugged_subscribers(
        server, key, (PLUGGED, car), (PLUGGED, car), (PLUGGED_AND_STATE, car), (PLUGGED, other_car)
    ) as (a, b, c, d):
        server.simulator.update_vehicle(car.provider_vehicle_id or "", is_plugged_in=False)
        await server.clock.advance(1)
        assert await next_result(a) == {"chargeState": {"isPluggedIn": False}}
        assert await next_result(b) == {"chargeState": {"isPluggedIn": False}}
        assert await next_result(c) == {
            "chargeState": {"isPluggedIn": False, "powerDeliveryState": "UNPLUGGED"}
        }
        server.simulator.update_vehicle(other_car.provider_vehicle_id or "", is_plugged_in=False)
        await server.clock.advance(1)
        assert await next_result(d) == {"chargeState": {"isPluggedIn": False}}


@pytest.mark.parametrize("enabled", [False, True])
async def test_websocket_compression_is_offered_only_when_enabled(
    settings: Settings, enabled: bool
) -> None:
    await _truncate(settings.database_url)
    async with run_server(replace(settings, ws_compression=enabled)) as server:
        _, key = await server.user()
        async with websockets.connect(
            server.ws_url, subprotocols=[PROTOCOLS[0]], compression="deflate"
        ) as ws:
            await ws.send(
                json.dumps(
                    {"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}}
                )
            )
            assert (
                json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "connection_ack"
            )
            extensions = (
                ws.response.headers.get("Sec-WebSocket-Extensions") if ws.response else None
            )
    assert (extensions is not None and "permessage-deflate" in extensions) is enabled


async def test_a_subscription_over_http_is_a_400_that_points_to_the_websocket(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    user, key = await server.user()
    car = await server.vehicle(user, "plugged")
    request = {"query": CHARGE_STATE, "variables": json.dumps({"id": str(car.id)})}
    before = list(server.simulator.calls)

    answers = []
    for headers in ({}, {"Authorization": f"Bearer {key}"}):
        answers.append(await server.http.get("/graphql", params=request, headers=headers))
        body = {"query": CHARGE_STATE, "variables": {"id": str(car.id)}}
        answers.append(await server.http.post("/graphql", json=body, headers=headers))

    for answer in answers:
        assert answer.status_code == 400, answer.text
        (error,) = answer.json()["errors"]
        assert error["extensions"] == {"code": "BAD_REQUEST"}
        assert "websocket" in error["message"]
        assert "graphql-transport-ws" in error["message"]
    assert server.simulator.calls == before  # refused before the resolver ran
    loud = [r.getMessage() for r in caplog.records if r.levelno > logging.INFO or r.exc_info]
    assert loud == []
