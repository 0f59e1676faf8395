"""HTTP guards: body limits, media types, JSON for unknown routes, security headers, CORS."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
import websockets

from evlink.settings import Settings
from tests.conftest import TIMEOUT, Server, _truncate, run_server


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_bodies_over_the_limit_are_413(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    padding = " " * (server.settings.max_body + 1)

    rest = await server.http.post(
        f"/api/charging/{vehicle.id}",
        content='{"action": "START"}' + padding,
        headers={**auth(key), "content-type": "application/json"},
    )
    graphql = await server.http.post(
        "/graphql",
        content=json.dumps({"query": "{ viewer { id } }"}) + padding,
        headers={**auth(key), "content-type": "application/json"},
    )

    for response in (rest, graphql):
        assert response.status_code == 413
        assert response.json()["code"] == "PAYLOAD_TOO_LARGE"
    assert not [c for c in server.simulator.calls if c.startswith("set_charging")]


async def test_a_form_body_is_415(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")

    response = await server.http.post(
        f"/api/charging/{vehicle.id}", data={"action": "START"}, headers=auth(key)
    )

    assert response.status_code == 415
    assert response.json()["code"] == "UNSUPPORTED_MEDIA_TYPE"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/api/nothing-here", 404, "NOT_FOUND"),
        ("DELETE", "/api/status/abc", 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/api/charging/abc", 405, "METHOD_NOT_ALLOWED"),
    ],
)
async def test_unknown_routes_and_methods_answer_json(
    server: Server, method: str, path: str, status: int, code: str
) -> None:
    response = await server.http.request(method, path)
    assert response.status_code == status
    assert response.json()["code"] == code


async def test_security_headers_on_every_answer(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    for response in (
        await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key)),
        await server.http.get("/api/status/x"),
        await server.http.get("/healthz"),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
        assert response.headers["cache-control"] == "no-store"


async def test_cors_is_off_by_default(server: Server) -> None:
    response = await server.http.options(
        "/graphql",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in response.headers


async def test_cors_allows_configured_origins_only(settings: Settings) -> None:
    await _truncate(settings.database_url)
    async with run_server(replace(settings, cors_origins="https://ha.example")) as server:
        allowed = await server.http.options(
            "/graphql",
            headers={"Origin": "https://ha.example", "Access-Control-Request-Method": "POST"},
        )
        refused = await server.http.options(
            "/graphql",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
    assert allowed.headers["access-control-allow-origin"] == "https://ha.example"
    assert "access-control-allow-origin" not in refused.headers


async def _connect(server: Server, key: str) -> websockets.ClientConnection:
    socket = await websockets.connect(
        server.ws_url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")]
    )
    await socket.send(
        json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}})
    )
    return socket


async def test_websockets_per_user_are_capped(settings: Settings) -> None:
    await _truncate(settings.database_url)
    async with run_server(replace(settings, ws_max_connections_per_key=2)) as server:
        _, key = await server.user()
        first, second = await _connect(server, key), await _connect(server, key)
        for socket in (first, second):
            assert json.loads(await socket.recv())["type"] == "connection_ack"
        third = await _connect(server, key)
        with pytest.raises(websockets.ConnectionClosed) as refused:
            await asyncio.wait_for(third.recv(), TIMEOUT)
        assert refused.value.rcvd is not None
        assert refused.value.rcvd.code == 4403
        await first.close()
        await first.wait_closed()
        # A slot is free again once a socket is gone (the server has seen it close).
        for _ in range(50):  # bounded: the server notices the close in a moment
            fourth = await _connect(server, key)
            answer = await asyncio.wait_for(fourth.recv(), TIMEOUT)
            if json.loads(answer)["type"] == "connection_ack":
                break
        else:
            pytest.fail("a freed slot was not given back")
        await second.close()
        await fourth.close()


async def test_connection_init_must_come_in_time(settings: Settings) -> None:
    await _truncate(settings.database_url)
    async with run_server(replace(settings, ws_init_timeout=0.3)) as server:
        socket = await websockets.connect(
            server.ws_url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")]
        )
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), TIMEOUT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4408


async def test_websocket_messages_over_the_limit_close_the_socket(server: Server) -> None:
    _, key = await server.user()
    socket = await _connect(server, key)
    assert json.loads(await socket.recv())["type"] == "connection_ack"
    huge = {"id": "1", "type": "subscribe", "payload": {"query": "#" * 70_000}}

    await socket.send(json.dumps(huge))

    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(socket.recv(), TIMEOUT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009  # message too big
