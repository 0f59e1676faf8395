"""HTTP guards: body limits, media types, JSON for unknown routes, security headers, CORS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import websockets

from evlink.settings import Settings
from tests.conftest import PROTOCOLS, TIMEOUT, Server, _truncate, free_port, run_server


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

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        yield json.dumps({"query": "{ viewer { id } }"}).encode()
        yield padding.encode()

    streamed = await server.http.post(
        "/graphql", content=chunks(), headers={**auth(key), "content-type": "application/json"}
    )

    assert rest.status_code == 413
    assert rest.json() == {"detail": "The body is too large", "code": "PAYLOAD_TOO_LARGE"}
    for response in (graphql, streamed):  # in GraphQL's error shape on /graphql
        assert response.status_code == 413
        assert response.json() == {
            "errors": [
                {"message": "The body is too large", "extensions": {"code": "PAYLOAD_TOO_LARGE"}}
            ]
        }
    assert not [c for c in server.simulator.calls if c.startswith("set_charging")]


async def test_with_cors_on_a_body_over_the_limit_is_413_through_cors(settings: Settings) -> None:
    """Behind CORS the body limit is its own layer (evlink.app._edge), so that the 413
    carries CORS's headers as any other answer to an allowed origin does."""
    await _truncate(settings.database_url)
    origin = "https://ha.example"
    async with run_server(replace(settings, cors_origins=origin)) as server:
        _, key = await server.user()
        padding = " " * (server.settings.max_body + 1)
        headers = {**auth(key), "content-type": "application/json", "origin": origin}
        declared = await server.http.post(
            "/graphql", content='{"query": "{ viewer { id } }"}' + padding, headers=headers
        )

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
            yield b'{"query": "{ viewer { id } }"}'
            yield padding.encode()

        streamed = await server.http.post("/graphql", content=chunks(), headers=headers)
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.headers["access-control-allow-origin"] == origin
        assert response.headers["x-content-type-options"] == "nosniff"


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


@pytest.mark.parametrize("path", ["/api/status/{id}/", "/graphql/", "/metrics/", "/healthz/"])
async def test_a_trailing_slash_is_an_unknown_path_not_a_redirect_to_the_host_header(
    server: Server, path: str
) -> None:
    # Starlette redirected to the path without the slash on the Host the client sent.
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    response = await server.http.get(
        path.format(id=vehicle.id), headers={**auth(key), "Host": "evil.example"}
    )
    assert response.status_code == 404
    assert response.json()["code"] == "NOT_FOUND"
    assert "location" not in response.headers


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
        assert "server" not in response.headers  # the software is not named
        assert "date" in response.headers


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
    async with run_server(replace(settings, ws_max_connections_per_user=2)) as server:
        _, key = await server.user()
        first, second = await _connect(server, key), await _connect(server, key)
        for socket in (first, second):
            assert json.loads(await socket.recv())["type"] == "connection_ack"
        third = await _connect(server, key)
        with pytest.raises(websockets.ConnectionClosed) as refused:
            await asyncio.wait_for(third.recv(), TIMEOUT)
        assert refused.value.rcvd is not None
        assert (refused.value.rcvd.code, refused.value.rcvd.reason) == (
            4429,
            "At most 2 websockets per user",
        )
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


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_connection_init_must_come_in_time(settings: Settings, protocol: str) -> None:
    """Strawberry times out graphql-transport-ws only; evlink closes both (schema.view)."""
    await _truncate(settings.database_url)
    async with run_server(replace(settings, ws_init_timeout=0.3)) as server:
        socket = await websockets.connect(
            server.ws_url, subprotocols=[websockets.Subprotocol(protocol)]
        )
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), TIMEOUT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4408


async def _pending(server: Server, protocol: str) -> websockets.ClientConnection:
    """A websocket that has not sent connection_init (yet)."""
    return await websockets.connect(server.ws_url, subprotocols=[websockets.Subprotocol(protocol)])


async def test_websockets_awaiting_connection_init_are_capped_per_address(
    settings: Settings,
) -> None:
    await _truncate(settings.database_url)
    async with run_server(replace(settings, ws_pending_per_address=3)) as server:
        _, key = await server.user()
        waiting = [await _pending(server, PROTOCOLS[n % 2]) for n in range(3)]
        for protocol in PROTOCOLS:
            with pytest.raises(websockets.InvalidStatus) as refused:
                await _pending(server, protocol)
            answer = refused.value.response
            assert answer.status_code == 429
            assert answer.headers["Retry-After"] == str(round(server.settings.ws_init_timeout))
            assert json.loads(answer.body or b"{}")["code"] == "RATE_LIMITED"

        # A socket that sent connection_init no longer counts: another may wait.
        await waiting[0].send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}})
        )
        assert json.loads(await asyncio.wait_for(waiting[0].recv(), TIMEOUT))["type"] == (
            "connection_ack"
        )
        waiting.append(await _pending(server, PROTOCOLS[0]))
        with pytest.raises(websockets.InvalidStatus):
            await _pending(server, PROTOCOLS[1])

        # Nor does one that went away (once the server has seen it close).
        await waiting[1].close()
        for _ in range(50):  # bounded: the server notices the close in a moment
            try:
                waiting.append(await _pending(server, PROTOCOLS[1]))
                break
            except websockets.InvalidStatus:
                continue
        else:
            pytest.fail("a pending socket that closed still counts")
        for socket in waiting:
            await socket.close()


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


def _rss_mib(pid: int) -> float:
    """The resident set size of a process, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


async def _evlink(tmp_path: Path, *args: str, port: int) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVLINK_")}
    env |= {
        "EVLINK_DATABASE_URL": f"sqlite://{tmp_path / 'evlink.sqlite3'}",
        "EVLINK_PORT": str(port),
        "EVLINK_LOG_LEVEL": "INFO",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "evlink.cli", *args, env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _flood(ws_url: str, metrics: httpx.AsyncClient, attempts: int) -> int:
    """Open ``attempts`` websockets that never send connection_init, then close those the
    server took, and return once it has let go of them all. Returns how many it took."""
    taken = []
    for number in range(attempts):
        protocol = websockets.Subprotocol(PROTOCOLS[number % 2])
        with contextlib.suppress(websockets.InvalidStatus):
            taken.append(await websockets.connect(ws_url, subprotocols=[protocol]))
    await asyncio.gather(*(socket.close() for socket in taken))
    for _ in range(2000):  # bounded: the server lets go of a closed socket in a moment
        if "evlink_websocket_connections 0.0" in (await metrics.get("/metrics")).text:
            return len(taken)
    pytest.fail("the server still holds websockets the client closed")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
async def test_memory_returns_after_floods_of_websockets_that_never_initialise(
    tmp_path: Path,
) -> None:
    """2,000 websockets that never send connection_init, opened again and again from one
    address (docs/security.md, API4): a real `evlink serve` in a process of its own ends
    within MEMORY_TOLERANCE_MIB of the memory it had before. Without the per-address cap
    (EVLINK_WS_PENDING_PER_ADDRESS) every one is held up to 10 s, and RSS rose by some
    70 MiB and stayed there."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    port = free_port()
    migrate = await _evlink(tmp_path, "migrate", port=port)
    assert await asyncio.wait_for(migrate.wait(), 60) == 0
    server = await _evlink(tmp_path, "serve", port=port)
    assert server.stderr is not None
    try:
        async with asyncio.timeout(60):
            while b"Uvicorn running on" not in await server.stderr.readline():
                assert not server.stderr.at_eof(), "the server ended before it started"
        # Keep reading its log, so that the server never blocks on a full pipe.
        draining = asyncio.create_task(server.stderr.read())
        ws_url = f"ws://127.0.0.1:{port}/graphql"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) as http:
            await _flood(ws_url, http, 50)  # every path taken once, refusals included
            before = _rss_mib(server.pid)
            taken = [await _flood(ws_url, http, 2000) for _ in range(3)]
            after = _rss_mib(server.pid)
        assert after - before < MEMORY_TOLERANCE_MIB, (before, after, taken)
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), TIMEOUT)
    await draining


# Growth of the server's RSS over three floods that the test accepts (allocator noise).
MEMORY_TOLERANCE_MIB = 20
