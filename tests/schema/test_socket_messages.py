"""Websocket messages of a shape Strawberry cannot read (evlink/schema/socket_messages.py):
a 4400 close with the reason on both protocols, never a dropped socket or a traceback."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
import websockets

from tests.conftest import PROTOCOLS, TIMEOUT, Server

VIEWER = {"query": "{ viewer { id } }"}


def malformed(protocol: str) -> dict[str, tuple[bool, Any]]:
    """name: (sent after connection_init?, the message). Each one raised inside
    Strawberry's handlers (or ran and failed as an internal error) before the check."""
    start = "subscribe" if protocol == "graphql-transport-ws" else "start"
    stop = "complete" if protocol == "graphql-transport-ws" else "stop"
    return {
        "an array": (False, []),
        "a string": (False, "connection_init"),
        "null": (False, None),
        "no type": (False, {"payload": {}}),
        "a number for an id": (True, {"id": 5, "type": start, "payload": VIEWER}),
        "no id": (True, {"type": start, "payload": VIEWER}),
        "a payload that is not an object": (True, {"id": "1", "type": start, "payload": "x"}),
        "a query that is not a string": (True, {"id": "1", "type": start, "payload": {"query": 5}}),
        "variables that are not an object": (
            True,
            {"id": "1", "type": start, "payload": {**VIEWER, "variables": ["x"]}},
        ),
        "extensions that are not an object": (
            True,
            {"id": "1", "type": start, "payload": {**VIEWER, "extensions": 5}},
        ),
        "an operation name that is not a string": (
            True,
            {"id": "1", "type": start, "payload": {**VIEWER, "operationName": 5}},
        ),
        "a stop without an id": (True, {"type": stop}),
    }


async def open_socket(server: Server, protocol: str, key: str, *, init: bool) -> Any:
    socket = await websockets.connect(
        server.ws_url, subprotocols=[websockets.Subprotocol(protocol)]
    )
    if init:
        await socket.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}})
        )
        assert json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))["type"] == (
            "connection_ack"
        )
    return socket


async def read_until_closed(socket: Any) -> None:
    """Messages until the close (keep-alives may come first); the caller bounds the wait."""
    while True:
        await socket.recv()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_message_of_the_wrong_shape_closes_the_socket_with_4400(
    server: Server, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    _, key = await server.user()

    for name, (init, message) in malformed(protocol).items():
        socket = await open_socket(server, protocol, key, init=init)
        await socket.send(json.dumps(message))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(read_until_closed(socket), TIMEOUT)
        assert closed.value.rcvd is not None, f"{name}: no close frame"
        assert closed.value.rcvd.code == 4400, name
        assert closed.value.rcvd.reason, name

    loud = [r.getMessage() for r in caplog.records if r.levelno > logging.INFO or r.exc_info]
    assert loud == []
    # A message of the right shape is served on the same protocol.
    socket = await open_socket(server, protocol, key, init=True)
    start = "subscribe" if protocol == "graphql-transport-ws" else "start"
    subscription = 'subscription { chargeState(vehicleId: "none") { batteryLevel } }'
    await socket.send(json.dumps({"id": "1", "type": start, "payload": {"query": subscription}}))
    while True:  # bounded by TIMEOUT per message: keep-alives may come first
        answer = json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))
        if answer["type"] != "ka":
            break
    assert answer["id"] == "1"
    assert "NOT_FOUND" in json.dumps(answer["payload"])  # GraphQL's answer, on either protocol
    await socket.close()
