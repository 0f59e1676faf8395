"""How a ``chargeState`` subscription ends, on both protocols, once its events are
forwarded (evlink.schema.fanout): interrupted (its error, then ``complete``), stopped
by its client, replaced by an operation of the same id, with its socket closed by
either side. Each time the client sees what Strawberry sends, and the server lets go
of everything the subscription held: its event-bus subscription, its vehicle watch,
its place in the active-subscription gauge and its operation id."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace
from typing import Any
from uuid import UUID

import pytest
import websockets

from evlink.events import charge_state_topic
from evlink.models import ApiKey, Vehicle
from evlink.resolvers import accounts
from evlink.resolvers.auth import hash_key, revoke_key
from evlink.server import OpenSocket
from evlink.settings import Settings
from tests.conftest import PLUGGED, PROTOCOLS, TIMEOUT, Server, _truncate, run_server

TRANSPORT_WS, LEGACY_WS = PROTOCOLS
_ACTIVE = re.compile(rb'^evlink_active_subscriptions\{field="chargeState"\} ([0-9.]+)$', re.M)


def _compact(message: dict[str, Any]) -> str:
    """A message as Strawberry sends it (compact JSON, its keys in its order)."""
    return json.dumps(message, separators=(",", ":"))


def _complete(protocol: str, operation: str) -> str:
    if protocol == TRANSPORT_WS:
        return _compact({"id": operation, "type": "complete"})
    return _compact({"type": "complete", "id": operation})


def _error(protocol: str, operation: str, message: str, code: str) -> str:
    """An operation's error while it runs: a result with no data and the error."""
    payload = {"data": None, "errors": [{"message": message, "extensions": {"code": code}}]}
    if protocol == TRANSPORT_WS:
        return _compact({"id": operation, "type": "next", "payload": payload})
    return _compact({"type": "data", "id": operation, "payload": payload})


def _state(protocol: str, operation: str, plugged: bool) -> str:
    payload = {"data": {"chargeState": {"isPluggedIn": plugged}}}
    if protocol == TRANSPORT_WS:
        return _compact({"id": operation, "type": "next", "payload": payload})
    return _compact({"type": "data", "id": operation, "payload": payload})


async def _socket_and_cars(
    server: Server, protocol: str, cars: int = 1
) -> tuple[Any, list[Vehicle]]:
    """A new user's socket, its ``connection_init`` acknowledged, and ``cars`` of the
    user's cars, plugged in."""
    owner, key = await server.user()
    vehicles = [await server.vehicle(owner, "plugged") for _ in range(cars)]
    return await _open(server, protocol, key), vehicles


async def _open(server: Server, protocol: str, key: str) -> Any:
    ws = await websockets.connect(server.ws_url, subprotocols=[websockets.Subprotocol(protocol)])
    init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}}
    await ws.send(json.dumps(init))
    assert json.loads(await _message(ws))["type"] == "connection_ack"
    return ws


async def _message(ws: Any) -> str:
    """The next message as sent, graphql-ws keep-alives skipped."""
    for _ in range(100):  # bounded: keep-alives come seconds apart
        text: str = await asyncio.wait_for(ws.recv(), TIMEOUT)
        if json.loads(text) != {"type": "ka"}:
            return text
    pytest.fail("only keep-alives came")


async def _start(ws: Any, protocol: str, operation: str, car: Vehicle) -> None:
    kind = "subscribe" if protocol == TRANSPORT_WS else "start"
    payload = {"query": PLUGGED, "variables": {"id": str(car.id)}}
    await ws.send(json.dumps({"id": operation, "type": kind, "payload": payload}))


async def _remove_and_see_it_end(
    server: Server, ws: Any, protocol: str, car: Vehicle, operation: str
) -> None:
    """Remove ``car``: its subscription ``operation`` gets its error, then ``complete``."""
    await accounts.remove_vehicle(server.services, car)
    assert await _message(ws) == _error(protocol, operation, "Vehicle not found", "NOT_FOUND")
    assert await _message(ws) == _complete(protocol, operation)


async def _stop(ws: Any, protocol: str, operation: str) -> None:
    kind = "complete" if protocol == TRANSPORT_WS else "stop"
    await ws.send(json.dumps({"id": operation, "type": kind}))


async def _subscribed(ws: Any, protocol: str, operation: str, car: Vehicle) -> None:
    """Start ``operation`` and read its first state (then its events are forwarded)."""
    await _start(ws, protocol, operation, car)
    assert await _message(ws) == _state(protocol, operation, True)


async def _until_probed(ws: Any, protocol: str, car: Vehicle, operation: str) -> list[str]:
    """The messages that come before the first state of a new subscription ``operation``:
    all that the server sent for what it did before it read the ``start``."""
    await _start(ws, protocol, operation, car)
    before: list[str] = []
    for _ in range(20):  # bounded: the test's own few messages
        text = await _message(ws)
        if json.loads(text).get("id") == operation:
            return before
        before.append(text)
    pytest.fail("the probe's first state never came")


async def _collect_until_closed(ws: Any, into: list[str]) -> None:
    """The messages before the close, into ``into``; raises ConnectionClosed."""
    for _ in range(20):  # bounded: the few messages before the close
        into.append(await _message(ws))
    pytest.fail("the socket stayed open")


async def _change(server: Server, car: Vehicle, plugged: bool) -> None:
    server.simulator.update_vehicle(car.provider_vehicle_id or "", is_plugged_in=plugged)
    await server.clock.advance(1)


async def _active(server: Server) -> float:
    """The active chargeState subscriptions, as /metrics shows them."""
    found = _ACTIVE.search((await server.http.get("/metrics")).content)
    return float(found[1]) if found is not None else 0.0


def _bus_subscribers(server: Server, car: Vehicle) -> int:
    subscribers = server.services.events.subscribers  # type: ignore[attr-defined]
    return len(subscribers.get(charge_state_topic(car.id), ()))


def _the_socket(server: Server) -> OpenSocket:
    (socket,) = tuple(server.app.state.open_sockets)
    assert isinstance(socket, OpenSocket)
    return socket


def _watchers(server: Server, car: Vehicle) -> int:
    return len(_the_socket(server).watching.get(UUID(str(car.id)), ()))


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_an_interrupted_subscription_sends_its_error_then_complete_and_lets_go(
    server: Server, protocol: str
) -> None:
    """Its car removed: the error, then ``complete``, nothing more for it; the socket and
    the other subscription go on, and the id can be used again."""
    ws, (car, kept) = await _socket_and_cars(server, protocol, 2)
    try:
        await _subscribed(ws, protocol, "gone", car)
        await _subscribed(ws, protocol, "kept", kept)
        await _change(server, car, False)  # forwarded
        assert await _message(ws) == _state(protocol, "gone", False)

        await _remove_and_see_it_end(server, ws, protocol, car, "gone")
        assert await _until_probed(ws, protocol, kept, "gone") == []  # its id is free again
        assert (await _active(server), _bus_subscribers(server, car)) == (2, 0)
        assert (_watchers(server, car), _watchers(server, kept)) == (0, 2)
    finally:
        await ws.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_an_interrupted_subscription_no_longer_counts_against_the_operations_cap(
    settings: Settings, protocol: str
) -> None:
    await _truncate(settings.database_url)
    async with run_server(replace(settings, ws_max_operations=2)) as server:
        ws, (car, kept) = await _socket_and_cars(server, protocol, 2)
        try:
            await _subscribed(ws, protocol, "gone", car)
            await _subscribed(ws, protocol, "kept", kept)
            await _remove_and_see_it_end(server, ws, protocol, car, "gone")

            await _subscribed(ws, protocol, "new", kept)  # two again: within the cap
        finally:
            await ws.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_subscription_its_client_stops_sends_nothing_more_and_lets_go(
    server: Server, protocol: str
) -> None:
    """``complete`` (graphql-transport-ws: no answer) or ``stop`` (graphql-ws: answered
    ``complete``): its later states are not sent, what it held is let go, its id is
    free again."""
    ws, (car,) = await _socket_and_cars(server, protocol)
    try:
        await _subscribed(ws, protocol, "stopped", car)
        await _subscribed(ws, protocol, "going", car)

        await _stop(ws, protocol, "stopped")
        answer = [_complete(protocol, "stopped")] if protocol == LEGACY_WS else []
        assert await _until_probed(ws, protocol, car, "probe") == answer
        assert (await _active(server), _bus_subscribers(server, car)) == (2, 2)
        assert _watchers(server, car) == 2

        await _change(server, car, False)
        going = {_state(protocol, "going", False), _state(protocol, "probe", False)}
        assert {await _message(ws), await _message(ws)} == going
        assert await _until_probed(ws, protocol, car, "stopped") == []  # its id is free
    finally:
        await ws.close()


async def test_a_graphql_ws_start_with_the_id_of_a_running_subscription_replaces_it(
    server: Server,
) -> None:
    """graphql-ws: the running one ends (``complete``) before the new one starts; a
    change then comes once."""
    ws, (car,) = await _socket_and_cars(server, LEGACY_WS)
    try:
        await _subscribed(ws, LEGACY_WS, "same", car)
        await _start(ws, LEGACY_WS, "same", car)
        assert await _message(ws) == _complete(LEGACY_WS, "same")
        assert await _message(ws) == _state(LEGACY_WS, "same", True)
        assert (await _active(server), _bus_subscribers(server, car)) == (1, 1)

        await _change(server, car, False)
        assert await _message(ws) == _state(LEGACY_WS, "same", False)
        assert await _until_probed(ws, LEGACY_WS, car, "probe") == []  # not twice
    finally:
        await ws.close()


async def test_a_graphql_transport_ws_subscribe_with_the_id_of_a_running_one_closes_4409(
    server: Server,
) -> None:
    ws, (car,) = await _socket_and_cars(server, TRANSPORT_WS)
    await _subscribed(ws, TRANSPORT_WS, "same", car)
    await _start(ws, TRANSPORT_WS, "same", car)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await _message(ws)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
        4409,
        "Subscriber for same already exists",
    )
    assert await server.app.state.open_sockets.until_closed(TIMEOUT)
    assert (await _active(server), _bus_subscribers(server, car)) == (0, 0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_socket_its_client_closes_lets_go_of_its_subscriptions(
    server: Server, protocol: str
) -> None:
    ws, (car,) = await _socket_and_cars(server, protocol)
    await _subscribed(ws, protocol, "1", car)
    await _subscribed(ws, protocol, "2", car)
    assert (await _active(server), _bus_subscribers(server, car)) == (2, 2)

    await ws.close()

    assert await server.app.state.open_sockets.until_closed(TIMEOUT)
    assert (await _active(server), _bus_subscribers(server, car)) == (0, 0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_socket_the_server_closes_ends_its_subscriptions_first(
    server: Server, protocol: str
) -> None:
    """Its key revoked: graphql-ws gets ``complete`` for each subscription before the
    close frame (4401), graphql-transport-ws the close frame alone; all is let go."""
    owner, key = await server.user()
    car = await server.vehicle(owner, "plugged")
    ws = await _open(server, protocol, key)
    await _subscribed(ws, protocol, "1", car)

    await revoke_key(str((await ApiKey.get(hash=hash_key(key))).id), server.services.cache)

    before: list[str] = []
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await _collect_until_closed(ws, before)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401
    assert before == ([_complete(protocol, "1")] if protocol == LEGACY_WS else [])
    assert await server.app.state.open_sockets.until_closed(TIMEOUT)
    assert (await _active(server), _bus_subscribers(server, car)) == (0, 0)
