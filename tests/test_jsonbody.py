"""JSON from clients (evlink/jsonbody.py): nested too deep is a 400 on every path that
reads JSON and a 4400 close on a websocket, never a 500 and never a traceback in the log."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
import websockets

from evlink.jsonbody import MAX_DEPTH
from evlink.models import ChargingCommand, WebhookDelivery
from tests.conftest import PROTOCOLS, TIMEOUT, WEBHOOK_SECRET, EnodeWorld, Server
from tests.fakes.enode import enode_signature

# 60 KB: under EVLINK_MAX_BODY and EVLINK_WS_MAX_MESSAGE (64 KB), and far deeper than
# Python's JSON parser goes (it raised RecursionError: a 500 with a traceback).
DEEP = "[" * 30_000 + "]" * 30_000
TOO_DEEP = f"JSON nested deeper than {MAX_DEPTH} levels"
VIEWER = "{ viewer { id } }"
CHARGE_STATE = "subscription($id: ID!) { chargeState(vehicleId: $id) { batteryLevel } }"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def nested(levels: int) -> Any:
    """``levels`` arrays, one inside the other."""
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def loud_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What was logged above INFO or with a traceback: nothing, for a client's mistake."""
    return [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno > logging.INFO or r.exc_info
    ]


def graphql_refusal(response: Any) -> None:
    assert response.status_code == 400, response.text
    assert response.json() == {
        "errors": [{"message": TOO_DEEP, "extensions": {"code": "BAD_REQUEST"}}]
    }


async def test_a_body_nested_30000_deep_is_a_400_on_graphql_and_rest(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    user, key = await server.user()
    car = await server.vehicle(user, "plugged")
    json_type = {"content-type": "application/json"}

    for headers in ({}, auth(key)):
        graphql_refusal(
            await server.http.post("/graphql", content=DEEP, headers={**json_type, **headers})
        )
    for path in (f"/api/charging/{car.id}", f"/api/ha/charging/{car.id}"):
        refused = await server.http.post(path, content=DEEP, headers={**json_type, **auth(key)})
        assert refused.status_code == 400, path
        assert refused.json() == {"detail": TOO_DEEP, "code": "BAD_REQUEST"}, path

    assert not await ChargingCommand.filter(vehicle_id=car.id).exists()
    assert loud_records(caplog) == []


async def test_json_past_the_limit_is_refused_even_where_python_parses_it(server: Server) -> None:
    user, key = await server.user()
    car = await server.vehicle(user, "plugged")

    # The variables object is one level, so the whole body is one level deeper again.
    deepest = {"query": VIEWER, "variables": {"unused": nested(MAX_DEPTH - 2)}}
    too_deep = {"query": VIEWER, "variables": {"unused": nested(MAX_DEPTH - 1)}}
    graphql_refusal(await server.http.post("/graphql", json=too_deep, headers=auth(key)))
    # In a query string, the variables are a document of their own.
    variables = json.dumps({"unused": nested(MAX_DEPTH)})
    in_query_string = {"query": VIEWER, "variables": variables}
    graphql_refusal(await server.http.get("/graphql", params=in_query_string, headers=auth(key)))
    refused = await server.http.post(
        f"/api/charging/{car.id}",
        json={"action": "START", "note": nested(MAX_DEPTH)},
        headers=auth(key),
    )
    assert refused.status_code == 400
    assert refused.json() == {"detail": TOO_DEEP, "code": "BAD_REQUEST"}
    assert not await ChargingCommand.filter(vehicle_id=car.id).exists()

    # One level less is served: the refusals above are the limit's, not another rule's.
    served = await server.http.post("/graphql", json=deepest, headers=auth(key))
    assert served.json() == {"data": {"viewer": {"id": str(user.id)}}}
    started = await server.http.post(
        f"/api/charging/{car.id}",
        json={"action": "START", "note": nested(MAX_DEPTH - 1)},
        headers=auth(key),
    )
    assert started.status_code == 200, started.text
    assert await ChargingCommand.filter(vehicle_id=car.id).count() == 1


async def test_a_body_that_is_not_text_is_a_400_on_graphql_and_rest(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    user, key = await server.user()
    car = await server.vehicle(user, "plugged")
    headers = {"content-type": "application/json", **auth(key)}

    for body in (b'{"query": "\xff"}', b"\xff\xfe\xfd"):  # not UTF-8; a truncated UTF-16
        graphql = await server.http.post("/graphql", content=body, headers=headers)
        rest = await server.http.post(f"/api/charging/{car.id}", content=body, headers=headers)
        assert graphql.status_code == 400, graphql.text
        assert graphql.json()["errors"][0]["extensions"] == {"code": "BAD_REQUEST"}
        assert rest.status_code == 400, rest.text
        assert rest.json()["code"] == "BAD_REQUEST"
    assert loud_records(caplog) == []


async def test_a_signed_webhook_body_nested_too_deep_is_a_400_and_stores_nothing(
    enode: EnodeWorld, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    enode.fake.webhooks_enabled = False  # only this test's deliveries reach evlink
    # A list of events, an event, then the arrays: one more level than allowed.
    past_the_limit = json.dumps([{"event": "system:heartbeat", "x": nested(MAX_DEPTH - 1)}])
    at_the_limit = json.dumps([{"event": "system:heartbeat", "x": nested(MAX_DEPTH - 2)}])

    for body in (DEEP.encode(), past_the_limit.encode()):
        refused = await post_signed(enode, body)
        assert refused.status_code == 400
        assert refused.json() == {"detail": TOO_DEEP, "code": "BAD_REQUEST"}
    assert await WebhookDelivery.all().count() == 0

    accepted = await post_signed(enode, at_the_limit.encode())
    assert accepted.json() == {"status": "accepted", "events": 1}
    assert await WebhookDelivery.all().count() == 1
    assert loud_records(caplog) == []


async def post_signed(enode: EnodeWorld, body: bytes) -> Any:
    return await enode.server.http.post(
        "/api/webhooks/enode",
        content=body,
        headers={
            "content-type": "application/json",
            "x-enode-signature": enode_signature(WEBHOOK_SECRET, body),
        },
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_websocket_message_nested_too_deep_closes_the_socket_with_4400(
    server: Server, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    user, key = await server.user()
    car = await server.vehicle(user, "plugged")
    subscribe = "subscribe" if protocol == "graphql-transport-ws" else "start"

    def message(padding: int) -> str:
        """A subscribe message: itself, its payload and the variables are three levels."""
        variables = {"id": str(car.id), "unused": nested(padding)}
        payload = {"query": CHARGE_STATE, "variables": variables}
        return json.dumps({"id": "1", "type": subscribe, "payload": payload})

    # Before connection_init: Python's parser gives up on this one.
    async with websockets.connect(
        server.ws_url, subprotocols=[websockets.Subprotocol(protocol)]
    ) as socket:
        await socket.send(DEEP)
        await assert_closed_with_4400(socket)
    # After it, a message Python parses but that nests one level past the limit.
    async with websockets.connect(
        server.ws_url, subprotocols=[websockets.Subprotocol(protocol)]
    ) as socket:
        await socket.send(json.dumps({"type": "connection_init", "payload": auth(key)}))
        assert json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))["type"] == (
            "connection_ack"
        )
        await socket.send(message(MAX_DEPTH - 2))
        await assert_closed_with_4400(socket)

    assert loud_records(caplog) == []
    # One level less is served: the close above is the limit's.
    async with websockets.connect(
        server.ws_url, subprotocols=[websockets.Subprotocol(protocol)]
    ) as socket:
        await socket.send(json.dumps({"type": "connection_init", "payload": auth(key)}))
        await asyncio.wait_for(socket.recv(), TIMEOUT)
        await socket.send(message(MAX_DEPTH - 3))
        while True:  # bounded by TIMEOUT: skip keep-alives until the first event
            message = json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))
            if message["type"] in ("next", "data"):
                break
        assert message["payload"]["data"]["chargeState"]["batteryLevel"] is not None


async def assert_closed_with_4400(socket: websockets.ClientConnection) -> None:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(read_until_closed(socket), TIMEOUT)
    assert closed.value.rcvd is not None, "no close frame"
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4400, TOO_DEEP)


async def read_until_closed(socket: websockets.ClientConnection) -> None:
    """Messages until the close (keep-alives may come first); the caller bounds the wait."""
    while True:
        await socket.recv()


HUGE = "9" * 4301  # Python refuses to convert an integer of more than 4,300 digits
TOO_LONG = "A number in the JSON is too long"


async def test_a_number_too_long_for_python_is_a_400_everywhere(
    enode: EnodeWorld, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = enode.server
    user, key = await enode.linked_user()
    car = await enode.vehicle(user, isPluggedIn=True)
    headers = {"content-type": "application/json", **auth(key)}
    graphql_body = f'{{"query": "{{ __typename }}", "x": {HUGE}}}'.encode()

    for extra in ({}, auth(key)):
        graphql = await server.http.post(
            "/graphql", content=graphql_body, headers={"content-type": "application/json", **extra}
        )
        assert graphql.status_code == 400, graphql.text
        assert graphql.json() == {
            "errors": [{"message": TOO_LONG, "extensions": {"code": "BAD_REQUEST"}}]
        }
    rest = await server.http.post(
        f"/api/charging/{car.id}", content=f'{{"action": {HUGE}}}'.encode(), headers=headers
    )
    webhook = await post_signed(enode, f'[{{"event": "x", "n": {HUGE}}}]'.encode())

    assert (rest.status_code, rest.json()) == (400, {"detail": TOO_LONG, "code": "BAD_REQUEST"})
    assert (webhook.status_code, webhook.json()["code"]) == (400, "BAD_REQUEST")
    assert loud_records(caplog) == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_websocket_message_with_a_number_too_long_closes_with_4400(
    server: Server, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with websockets.connect(
        server.ws_url, subprotocols=[websockets.Subprotocol(protocol)]
    ) as socket:
        await socket.send(f'{{"type": "connection_init", "payload": {{"x": {HUGE}}}}}')
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(read_until_closed(socket), TIMEOUT)

    assert closed.value.rcvd is not None, "no close frame"
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4400, TOO_LONG)
    assert loud_records(caplog) == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_websocket_message_that_is_not_json_closes_with_4400_on_both_protocols(
    server: Server, protocol: str
) -> None:
    """graphql-ws (legacy) used to skip it and keep the socket open."""
    async with websockets.connect(
        server.ws_url, subprotocols=[websockets.Subprotocol(protocol)]
    ) as socket:
        await socket.send("{{{")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(read_until_closed(socket), TIMEOUT)

    assert closed.value.rcvd is not None, "no close frame"
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
        4400,
        "WebSocket message must be valid JSON",
    )
