"""Forwarded subscription events (evlink.schema.fanout): encoded once per document,
variables and state, each message with its own operation id, in order, and a socket
that cannot take more loses the oldest, never the newest."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
import websockets

from evlink.events import MAILBOX, charge_state_topic
from evlink.models import ChargeState
from evlink.models.vehicles import charge_state_data
from tests.conftest import (
    PLUGGED,
    PLUGGED_AND_STATE,
    PROTOCOLS,
    TIMEOUT,
    Server,
    next_result,
    plugged_subscribers,
)

EVERYTHING = """subscription($id: ID!) { chargeState(vehicleId: $id) {
  batteryLevel range isPluggedIn isCharging batteryCapacity chargeLimit chargeRate
  chargeTimeRemaining isFullyCharged lastUpdated powerDeliveryState maxCurrent
} }"""
_START = {PROTOCOLS[0]: "subscribe", PROTOCOLS[1]: "start"}  # transport-ws, legacy graphql-ws
_ENCODED = re.compile(rb"^evlink_subscription_payloads_encoded_total ([0-9.]+)$", re.M)


async def _encoded(server: Server) -> float:
    found = _ENCODED.search((await server.http.get("/metrics")).content)
    assert found is not None
    return float(found[1])


async def test_one_change_is_encoded_once_per_document_for_all_its_subscribers(
    server: Server,
) -> None:
    """Three subscribers of one document (on both protocols) and one of another: one
    change is encoded twice, not four times, and each gets its own selection."""
    owner, key = await server.user()
    car = await server.vehicle(owner, "plugged")
    async with plugged_subscribers(
        server, key, (PLUGGED, car), (PLUGGED, car), (PLUGGED, car), (PLUGGED_AND_STATE, car)
    ) as (a, b, c, d):
        before = await _encoded(server)
        server.simulator.update_vehicle(car.provider_vehicle_id or "", is_plugged_in=False)
        await server.clock.advance(1)
        for stream in (a, b, c):
            assert await next_result(stream) == {"chargeState": {"isPluggedIn": False}}
        assert await next_result(d) == {
            "chargeState": {"isPluggedIn": False, "powerDeliveryState": "UNPLUGGED"}
        }
        assert await _encoded(server) - before == 2


async def _open(server: Server, protocol: str, key: str, **options: Any) -> Any:
    ws = await websockets.connect(
        server.ws_url, subprotocols=[websockets.Subprotocol(protocol)], **options
    )
    await ws.send(
        json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}})
    )
    assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "connection_ack"
    return ws


async def _start(ws: Any, protocol: str, operation_id: str, query: str, car: str) -> None:
    payload = {"query": query, "variables": {"id": car}}
    await ws.send(json.dumps({"id": operation_id, "type": _START[protocol], "payload": payload}))


async def _results(ws: Any, count: int) -> list[str]:
    """The next ``count`` result messages, as sent (keep-alives skipped)."""
    found: list[str] = []
    while len(found) < count:
        text = await asyncio.wait_for(ws.recv(), TIMEOUT)
        if json.loads(text)["type"] in ("next", "data"):
            found.append(text)
    return found


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_forwarded_message_is_what_strawberry_sends_with_its_own_operation_id(
    server: Server, protocol: str
) -> None:
    """Three operations on one socket, two with the same document: after a change each
    gets a message with its own id and selection, laid out as Strawberry lays out the
    first one (the same keys in the same order, compact JSON)."""
    owner, key = await server.user()
    car = await server.vehicle(owner, "plugged")
    ws = await _open(server, protocol, key)
    try:
        for operation_id, query in (("a", PLUGGED), ("b", PLUGGED_AND_STATE), ('c"', PLUGGED)):
            await _start(ws, protocol, operation_id, query, str(car.id))
        first = {json.loads(text)["id"]: text for text in await _results(ws, 3)}
        server.simulator.update_vehicle(car.provider_vehicle_id or "", is_plugged_in=False)
        await server.clock.advance(1)
        later = {json.loads(text)["id"]: text for text in await _results(ws, 3)}
    finally:
        await ws.close()
    assert set(first) == set(later) == {"a", "b", 'c"'}
    for operation_id, text in later.items():
        message = json.loads(text)
        assert list(message) == list(json.loads(first[operation_id]))  # Strawberry's order
        assert text == json.dumps(message, separators=(",", ":"))
    assert json.loads(later["a"])["payload"] == {"data": {"chargeState": {"isPluggedIn": False}}}
    assert json.loads(later['c"'])["payload"] == json.loads(later["a"])["payload"]
    assert json.loads(later["b"])["payload"]["data"]["chargeState"] == {
        "isPluggedIn": False,
        "powerDeliveryState": "UNPLUGGED",
    }


async def test_a_subscriber_that_reads_nothing_loses_the_oldest_states_never_the_newest(
    server: Server,
) -> None:
    """A socket whose client stops reading fills up: the states forwarded meanwhile wait,
    at most MAILBOX of them, the oldest dropped; once it reads it gets what was kept, in
    order, ending with the newest."""
    owner, key = await server.user()
    car = await server.vehicle(owner, "charging", battery_level=1.0)
    small = socket.socket()
    small.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills after a few messages
    small.connect(("127.0.0.1", int(server.ws_url.split(":")[2].split("/")[0])))
    ws = await _open(server, PROTOCOLS[0], key, sock=small, max_queue=1)
    try:
        await _start(ws, PROTOCOLS[0], "1", EVERYTHING, str(car.id))
        await _results(ws, 1)
        state = charge_state_data(await ChargeState.get(vehicle_id=car.id))
        published = 15_000  # about 6 MB of messages: more than the kernel buffers take
        for n in range(1, published + 1):  # each newer than the one before
            newer = replace(
                state, battery_level=n, last_updated=state.last_updated + timedelta(seconds=n)
            )
            message = {"vehicleId": str(car.id), **newer.to_enode()}
            await server.services.events.publish(charge_state_topic(car.id), message)
        levels: list[int] = []
        while not levels or levels[-1] != published:
            (text,) = await _results(ws, 1)
            levels.append(json.loads(text)["payload"]["data"]["chargeState"]["batteryLevel"])
    finally:
        await ws.close()
    assert levels == sorted(set(levels))  # in order, none twice
    assert len(levels) < published - MAILBOX  # the socket's buffers filled: some were lost
    assert levels[-MAILBOX:] == list(range(published - MAILBOX + 1, published + 1))
