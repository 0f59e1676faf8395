"""Slow and numerous clients (evlink.connections): request heads and bodies have a
deadline, open connections a cap, and the open-files limit is raised at start-up.

Each test runs ``evlink serve`` in a process of its own and talks to it over raw sockets
on 127.0.0.1, as a slowloris client would.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
import uvloop
from starlette.types import Receive, Scope, Send
from uvicorn.server import ServerState

from evlink.connections import (
    MAX_HEAD_BYTES,
    MAX_HEADER_FIELDS,
    GuardedHttpProtocol,
    OneWrite,
)
from evlink.playground import page as playground
from tests.conftest import TIMEOUT, Server, ServerLog, serve_process
from tests.test_logs import websocket_upgrade

PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def body_announced(path: str, length: int = 60_000) -> bytes:
    """A complete request head announcing a body of ``length`` bytes (none of it sent)."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> bytes:
    """What the server sent before closing the connection (fails if it stays open)."""
    return await asyncio.wait_for(reader.read(), within)


@contextlib.asynccontextmanager
async def slow_clients(
    base_url: str, count: int, sent: bytes = PARTIAL_HEAD
) -> AsyncIterator[list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]:
    """``count`` connections that each sent ``sent`` (by default a request head that never
    ends) and nothing more."""
    port = int(base_url.rsplit(":", 1)[1])
    clients: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(count):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(sent)
            clients.append((reader, writer))
        await asyncio.gather(*(writer.drain() for _, writer in clients))
        yield clients
    finally:
        for _, writer in clients:
            writer.close()


async def test_a_request_head_not_complete_in_time_is_closed(server: Server) -> None:
    async with serve_process(server.settings.database_url, EVLINK_HEADER_TIMEOUT="0.5") as url:
        port = int(url.rsplit(":", 1)[1])
        slow_reader, slow = await asyncio.open_connection("127.0.0.1", port)
        slow.write(PARTIAL_HEAD)
        silent_reader, silent = await asyncio.open_connection("127.0.0.1", port)
        async with httpx.AsyncClient(base_url=url) as http:
            answered = await http.get("/healthz")

        assert await _closed_by_server(slow_reader, TIMEOUT) == b""
        assert await _closed_by_server(silent_reader, TIMEOUT) == b""
        slow.close()
        silent.close()
    assert answered.status_code == 200


async def test_the_next_request_on_a_kept_alive_connection_has_the_deadline_too(
    server: Server,
) -> None:
    """uvicorn stops its keep-alive timer at the first byte of the next request: without a
    deadline of its own, a head sent a byte at a time would hold the connection for ever."""
    async with serve_process(server.settings.database_url, EVLINK_HEADER_TIMEOUT="0.5") as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), TIMEOUT)
        writer.write(PARTIAL_HEAD)

        rest = await _closed_by_server(reader, 3.0)  # well before the 5 s keep-alive
        writer.close()
    assert first.startswith(b"HTTP/1.1 200")
    assert rest == b""


async def test_a_request_head_pipelined_behind_another_has_the_deadline_too(
    server: Server,
) -> None:
    """The head of a second request begun in the same read as a whole first one: the
    first is answered, and the connection is closed once the second's deadline passes
    (it was held until the keep-alive ran out; seen by the attacker trial)."""
    async with serve_process(server.settings.database_url, EVLINK_HEADER_TIMEOUT="0.5") as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + PARTIAL_HEAD)
        first = await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), TIMEOUT)

        rest = await _closed_by_server(reader, 3.0)  # well before the 5 s keep-alive
        writer.close()
    assert first.startswith(b"HTTP/1.1 200")
    assert rest == b""


@pytest.mark.parametrize(
    "body", ["Content-Length: 5\r\n\r\nhello", "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"]
)
async def test_a_websocket_upgrade_with_a_body_is_refused_at_once(
    server: Server, body: str
) -> None:
    """websockets refuses an upgrade request with a body and waits for nothing more:
    uvicorn's protocol answered nothing and held the socket for ever (no deadline runs
    once the head is in), so a few such sockets filled the connection cap."""
    upgrade = websocket_upgrade().removesuffix(b"\r\n") + body.encode()
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", int(server.base_url.rsplit(":", 1)[1])
    )
    writer.write(upgrade)
    answer = await _closed_by_server(reader, TIMEOUT)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"Failed to open a WebSocket connection" in answer


async def test_a_connection_idle_between_requests_outlives_the_header_deadline(
    server: Server,
) -> None:
    """The deadline covers the head only: a kept-alive connection that waits longer than
    it between two requests is still served (uvicorn's keep-alive decides when it ends)."""
    async with serve_process(server.settings.database_url, EVLINK_HEADER_TIMEOUT="0.3") as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        writer.write(request)
        first = await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), TIMEOUT)
        with pytest.raises(TimeoutError):  # idle for three deadlines: nothing happens
            await asyncio.wait_for(reader.read(1), 1.0)
        writer.write(request)
        second = await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), TIMEOUT)
        writer.close()
    assert first.startswith(b"HTTP/1.1 200")
    assert second.startswith(b"HTTP/1.1 200")


async def test_past_the_connection_cap_a_new_client_gets_503_at_once(server: Server) -> None:
    env = {"EVLINK_MAX_CONNECTIONS": "20", "EVLINK_HEADER_TIMEOUT": "1"}
    async with (
        serve_process(server.settings.database_url, **env) as url,
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http,
        slow_clients(url, 20) as slow,
    ):
        refused = await http.get("/healthz")
        # The server closes the slow ones at their deadline: the cap has room again.
        for reader, _ in slow:
            assert await _closed_by_server(reader, TIMEOUT) == b""
        served = await http.get("/healthz")

    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["x-content-type-options"] == "nosniff"  # as every answer
    assert refused.json() == {
        "detail": "Too many open connections; try again shortly",
        "code": "SERVER_BUSY",
    }
    assert served.status_code == 200


async def _sent_in_pieces(base_url: str, data: bytes, piece: int = 16 * 1024) -> bytes:
    """``data`` written in pieces of ``piece`` bytes (as many reads for the server, the
    way a fast client's large head comes), then all the server sends until it closes."""
    port = int(base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for start in range(0, len(data), piece):
            if writer.is_closing() or reader.at_eof():
                break
            writer.write(data[start : start + piece])
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        return await _closed_by_server(reader, TIMEOUT)
    finally:
        writer.close()


def _head(path: str = "/healthz", **fields: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


_TOO_LARGE = b'{"detail":"The request\'s headers are too large","code":"HEADERS_TOO_LARGE"}'


async def test_a_request_head_past_64_kib_is_answered_431_and_closed(server: Server) -> None:
    # uvicorn and httptools keep a head in memory until it is whole: 50 MB of one header,
    # sent fast, was taken within the header deadline.
    big_header = _head(**{"X-Big": "a" * (2 * MAX_HEAD_BYTES)})
    big_url = _head("/healthz?" + "q=1&" * MAX_HEAD_BYTES)
    many = _head(**{f"X-Field-{n}": "b" * 100 for n in range(1000)})
    for head in (big_header, big_url, many):
        answer = await _sent_in_pieces(server.base_url, head)
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer
        assert b"\r\nconnection: close\r\n" in answer
        assert b"\r\nx-content-type-options: nosniff\r\n" in answer  # as every answer
        assert b"\r\ncache-control: no-store\r\n" in answer
        assert answer.endswith(b"\r\n\r\n" + _TOO_LARGE)


async def test_a_large_head_read_whole_at_once_is_answered_431_only() -> None:
    # A read may hold more than the limit (a head and what follows it): parsing stops at
    # the limit, so the request is not served behind its 431. Loopback's reads are
    # 64 KiB, so the protocol is handed the read directly, over a real socket.
    served: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        served.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    config.load()
    ours, theirs = socket.socketpair()
    protocol = GuardedHttpProtocol(config, ServerState(), {})
    loop = asyncio.get_running_loop()
    await loop.connect_accepted_socket(lambda: protocol, ours)
    reader, writer = await asyncio.open_connection(sock=theirs)
    try:
        head = _head("/big", **{"X-Big": "a" * 200_000}) + _head("/next")
        protocol.data_received(head)
        answer = await _closed_by_server(reader, TIMEOUT)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert answer.endswith(_TOO_LARGE)
    assert served == []


async def test_after_a_431_the_connection_is_closed_soon_whatever_the_client_does(
    server: Server,
) -> None:
    # What comes after a refused head is read and dropped for a moment only: a client
    # that goes on sending is cut off past a megabyte, one that stays silent and open
    # is closed within two seconds (LINGER_SECONDS).
    port = int(server.base_url.rsplit(":", 1)[1])
    head = _head(**{"X-Big": "a" * (2 * MAX_HEAD_BYTES)})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def flood() -> None:
        writer.write(head)
        for _ in range(64):  # 64 MB at most, sent far faster than two seconds
            writer.write(b"x" * (1024 * 1024))
            await asyncio.wait_for(writer.drain(), TIMEOUT)

    with pytest.raises(ConnectionError):
        await flood()
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        answer = await _closed_by_server(reader, TIMEOUT)  # the 431, then our end
        assert answer.endswith(_TOO_LARGE)
        # A byte to a socket the server has closed is answered with a reset, which ends
        # this side's connection: a byte every 0.2 s until then (4 s at most).
        lost = asyncio.ensure_future(writer.wait_closed())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 4.0
        while not lost.done() and loop.time() < deadline:
            if not writer.is_closing():
                writer.write(b"x")
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(asyncio.shield(lost), 0.2)
        assert lost.done(), "still open 4 s after the 431"
    finally:
        writer.close()


async def test_a_head_past_100_fields_is_answered_431_however_small(server: Server) -> None:
    # 64 KiB of tiny fields held about 1.2 MB per connection.
    fields = {f"X-F{n}": "v" for n in range(MAX_HEADER_FIELDS)}  # with Host: one too many
    answer = await _sent_in_pieces(server.base_url, _head("/healthz", **fields))
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert answer.endswith(_TOO_LARGE)
    # At the limit it is served: Host and Connection, and 98 more.
    fields = {f"X-F{n}": "v" for n in range(MAX_HEADER_FIELDS - 2)}
    answer = await _sent_in_pieces(server.base_url, _head("/healthz", **fields))
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


async def test_a_chunked_body_with_too_many_trailers_ends_its_connection(server: Server) -> None:
    # uvicorn adds a chunked body's trailer fields to the request's headers: four
    # megabytes of them grew the server by a hundred. Past the limit the request cannot
    # end, and the connection is closed at once (not at the body deadline).
    body = b'{"query": "{ __typename }"}'
    head = (
        b"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunked = b"%x\r\n%s\r\n0\r\n" % (len(body), body) + b"a: b\r\n" * 5_000 + b"\r\n"
    loop = asyncio.get_running_loop()
    began = loop.time()
    answer = await _sent_in_pieces(server.base_url, head + chunked)
    assert b"HTTP/1.1 200 " not in answer, answer[:200]
    assert loop.time() - began < server.settings.body_timeout / 2


async def test_a_chunked_body_with_a_huge_trailer_ends_its_connection(server: Server) -> None:
    # One trailer field is held by httptools until it ends: past twice the largest body
    # the app takes (and a head's worth), the connection is closed.
    head = (
        b"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    body = b'{"query": "{ __typename }"}'
    largest = max(server.settings.max_body, server.settings.webhook_max_body)
    trailer = b"X-T: " + b"a" * (3 * largest)
    chunked = b"%x\r\n%s\r\n0\r\n" % (len(body), body) + trailer + b"\r\n\r\n"
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        answer = await _sent_in_pieces(server.base_url, head + chunked, piece=64 * 1024)
    except ConnectionError:  # closed with bytes unread: a reset
        answer = b""
    assert b"HTTP/1.1 200 " not in answer, answer[:200]
    assert loop.time() - began < server.settings.body_timeout / 2


async def test_a_request_head_under_the_limit_is_answered_though_it_came_in_pieces(
    server: Server,
) -> None:
    head = _head(**{"X-Big": "a" * (MAX_HEAD_BYTES // 2)})
    answer = await _sent_in_pieces(server.base_url, head, piece=4096)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


async def test_a_large_head_pipelined_behind_a_request_ends_the_connection_after_it(
    server: Server,
) -> None:
    # The five requests before it are answered whole and in order, then the one whose
    # head passes the limit (the 431 was written while the second was answered).
    first = _head().replace(b"Connection: close\r\n", b"")
    sent = first * 5 + _head(**{"X-Big": "a" * 100_000})
    answer = await _sent_in_pieces(server.base_url, sent, piece=len(sent))
    *answered, refused = answer.split(b'{"status":"ok"}')
    assert len(answered) == 5, answer
    assert all(one.startswith(b"HTTP/1.1 200 ") for one in answered), answer
    assert refused.startswith(b"HTTP/1.1 431 "), answer
    assert refused.endswith(_TOO_LARGE)


async def test_a_request_body_not_complete_in_time_is_closed(server: Server) -> None:
    """A complete head announcing a body, then part of it or nothing, on the paths that
    read a body without a key: each connection is closed at EVLINK_BODY_TIMEOUT, and the
    cap, full of them meanwhile, has room again."""
    _, key = await server.user()
    env = {"EVLINK_MAX_CONNECTIONS": "20", "EVLINK_BODY_TIMEOUT": "0.5"}
    paths = ["/graphql", "/api/charging/1", "/api/webhooks/enode", "/api/ha/charging/1"]
    async with (
        serve_process(server.settings.database_url, **env) as url,
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http,
        slow_clients(url, 15, body_announced("/graphql")) as silent,
        slow_clients(url, 5, body_announced("/api/charging/1") + b'{"act') as partial,
    ):
        refused = await http.get("/healthz")
        # Closed (fails on a timeout if not); a keyless request may get its 401 first.
        answers = [await _closed_by_server(reader, TIMEOUT) for reader, _ in silent + partial]
        served = await http.get("/healthz")
        for path in paths:
            async with slow_clients(url, 1, body_announced(path) + b"{") as ((reader, _),):
                answers.append(await _closed_by_server(reader, TIMEOUT))
        # A body that arrives in time is served, and its connection kept past the deadline.
        posted = await http.post(
            "/graphql",
            json={"query": "{ viewer { email } }"},
            headers={"Authorization": f"Bearer {key}"},
        )
        kept = await _kept_alive_after_a_post(url)

    assert refused.status_code == 503
    assert served.status_code == 200
    assert answers[:15] == [b""] * 15  # /graphql reads the body before anything else
    assert not [answer for answer in answers if answer.startswith(b"HTTP/1.1 2")]
    assert posted.status_code == 200, posted.text
    assert posted.json()["data"]["viewer"]["email"].endswith("@example.com")
    assert kept == [b"HTTP/1.1 200", b"HTTP/1.1 200"]


async def _kept_alive_after_a_post(url: str) -> list[bytes]:
    """Two POSTs on one connection, idle 1 s between them: the status line of each."""
    reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
    body = b'{"query": "{ __typename }"}'
    request = body_announced("/graphql", len(body)) + body
    statuses = []
    try:
        for attempt in range(2):
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
            assert length is not None, head
            await asyncio.wait_for(reader.readexactly(int(length[1])), TIMEOUT)
            statuses.append(head[:12])
            if attempt == 0:
                with pytest.raises(TimeoutError):  # idle for two body deadlines: still open
                    await asyncio.wait_for(reader.read(1), 1.0)
    finally:
        writer.close()
    return statuses


async def test_a_websocket_outlives_the_body_deadline(server: Server) -> None:
    """An upgrade has no body: its connection is not closed at EVLINK_BODY_TIMEOUT."""
    env = {"EVLINK_BODY_TIMEOUT": "0.3", "EVLINK_HEADER_TIMEOUT": "0.3"}
    async with serve_process(server.settings.database_url, **env) as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        writer.write(websocket_upgrade())
        accepted = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        with pytest.raises(TimeoutError):  # three deadlines: the socket stays open
            await asyncio.wait_for(reader.read(1), 1.0)
        writer.close()
    assert accepted.startswith(b"HTTP/1.1 101")


def _low_open_files_limit() -> None:
    """In the server's process before it starts: the common default of 1,024 open files."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))


@pytest.fixture
def many_open_files() -> None:
    """Room in the test's own process for the slow clients' sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard limit of open files is {hard}: too low for 1,100 clients")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))


@pytest.mark.usefixtures("many_open_files")
async def test_1100_slowloris_sockets_do_not_keep_a_status_read_waiting(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    async with (
        serve_process(server.settings.database_url, preexec=_low_open_files_limit) as url,
        slow_clients(url, 1100),
        httpx.AsyncClient(base_url=url) as http,
    ):
        status = await http.get(
            f"/api/status/{vehicle.id}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=1.0,
        )

    assert status.status_code == 200
    assert status.json()["vehicleName"] == "Test plugged"
    assert status.json()["isPluggedIn"] is True


async def _poll(http: httpx.AsyncClient, path: str, key: str, every: float, until: float) -> int:
    """GET ``path`` every ``every`` seconds (a sensor's scan interval) until ``until`` (loop
    time); every answer must be 200. Returns how many were made."""
    loop = asyncio.get_running_loop()
    polls = 0
    while loop.time() < until:
        answer = await http.get(path, headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200, answer.text
        polls += 1
        await asyncio.sleep(every)  # the polling schedule itself, not a wait for state
    return polls


async def test_polling_every_5_s_or_at_the_keep_alive_never_meets_a_closed_connection(
    server: Server,
) -> None:
    """Home Assistant's REST sensor (httpx, which keeps an idle connection 5 s) polling
    every 5 s lost its sensor when uvicorn closed idle connections at 5 s: the server
    closed the connection just as the client reused it. For a minute: a client polling
    every 5 s against the default keep-alive, and one polling at exactly the server's
    keep-alive; no request may fail. Also: a connection idle past uvicorn's 5 s is kept."""
    if "postgres" in server.settings.database_url:
        pytest.skip("keep-alive does not depend on the database: run once, on SQLite")
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    path = f"/api/status/{vehicle.id}"
    database = server.settings.database_url
    async with (
        serve_process(database) as default_url,
        serve_process(database, EVLINK_KEEPALIVE="7") as short_url,
        httpx.AsyncClient(base_url=default_url) as sensor,
        httpx.AsyncClient(base_url=short_url) as at_keepalive,
    ):
        until = asyncio.get_running_loop().time() + 60
        polls = await asyncio.gather(
            _poll(sensor, path, key, 5.0, until),
            _poll(at_keepalive, path, key, 7.0, until),
        )
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", int(default_url.rsplit(":", 1)[1])
        )
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), TIMEOUT)
        with pytest.raises(TimeoutError):  # idle past uvicorn's default of 5 s: still open
            await asyncio.wait_for(reader.read(1), 6.0)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        again = await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), TIMEOUT)
        writer.close()

    assert polls[0] >= 12
    assert polls[1] >= 8
    assert first.startswith(b"HTTP/1.1 200")
    assert again.startswith(b"HTTP/1.1 200")


async def test_a_client_gone_with_pipelined_requests_in_flight_logs_no_error(
    server: Server,
) -> None:
    # Three requests in one write: a status read, a charging command that waits for its
    # outcome (in flight when the client leaves), another read (the last one parsed,
    # the only one uvicorn tells that its client left). The waiting answer was written
    # to the closed socket: on uvloop (a served process) two ERRORs with tracebacks.
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    auth = f"Host: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
    read = f"GET /api/status/{vehicle.id} HTTP/1.1\r\n{auth}\r\n".encode()
    body = b'{"action": "START"}'
    command = (
        f"POST /api/charging/{vehicle.id}?wait=0.5 HTTP/1.1\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    log = ServerLog()
    async with serve_process(
        server.settings.database_url, log=log, EVLINK_SIMULATOR_ACTION_DELAY="60"
    ) as base_url:
        port = int(base_url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(read + command + read)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 200 "), head
        writer.close()  # the command's and the second read's answers never read
        await writer.wait_closed()
        # evlink's access line, at the command's end: its answer was tried by then
        # (uvicorn's own access line comes before the write).
        await log.line_with(b"evlink.access", f"POST /api/charging/{vehicle.id}".encode())
        answer = await asyncio.wait_for(_any_request(base_url), TIMEOUT)
        assert answer.status_code == 200
    assert [line for line in log.lines if b"ERROR" in line or b"Traceback" in line] == []


async def _any_request(base_url: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as http:
        return await http.get("/healthz")


# -- an answer's head and body in one write (evlink.connections.OneWrite) --------------

# Linux's struct tcp_info: tcpi_data_segs_in, the data segments a socket has received.
_DATA_SEGS_IN = 152


def _data_segments_in(writer: asyncio.StreamWriter) -> int:
    sock = writer.get_extra_info("socket")
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    if len(info) < _DATA_SEGS_IN + 4:
        pytest.skip("this kernel's TCP_INFO does not count data segments")
    count: int = struct.unpack_from("I", info, _DATA_SEGS_IN)[0]
    return count


async def _whole_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One answer with a ``Content-Length``: its head and its body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    assert length is not None, head
    body = await asyncio.wait_for(reader.readexactly(int(length[1])), TIMEOUT)
    return head, body


async def _segments_per_answer(base_url: str, requests: list[bytes]) -> list[int]:
    """Each request in turn on one kept-alive connection; the TCP data segments each
    whole answer came in (measured by this client's own socket)."""
    port = int(base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    counts = []
    try:
        for request in requests:
            before = _data_segments_in(writer)
            writer.write(request)
            await writer.drain()
            head, _ = await _whole_answer(reader)
            assert head.startswith(b"HTTP/1.1 200 "), head
            counts.append(_data_segments_in(writer) - before)
    finally:
        writer.close()
    return counts


def test_a_held_write_whose_connection_closed_meanwhile_is_dropped() -> None:
    # A write held for the loop's next turn (a stream's head, a HEAD answer) on a
    # connection closed in the same turn (the client left): on uvloop, a served
    # process's loop, writing it out would raise in the loop's callback, an ERROR with
    # a traceback in the log.
    loop = uvloop.new_event_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))

    class Client(asyncio.Protocol):
        lost = asyncio.Event()

        def connection_lost(self, exc: Exception | None) -> None:
            self.lost.set()

    async def scenario() -> None:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(Client, "127.0.0.1", port)
        writes = OneWrite(transport, loop)  # type: ignore[arg-type]
        transport.abort()  # the connection is lost at once
        writes.write(b"HTTP/1.1 200 OK\r\n")  # held until the next turn
        await asyncio.wait_for(client.lost.wait(), TIMEOUT)
        flushed = asyncio.Event()
        loop.call_soon(flushed.set)
        await asyncio.wait_for(flushed.wait(), TIMEOUT)
        server.close()
        await server.wait_closed()

    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert reported == []


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="TCP_INFO is Linux's")
async def test_an_answer_comes_in_one_tcp_segment(server: Server) -> None:
    # uvicorn writes the head and the body apart: two segments for every answer. On the
    # test's own loop (asyncio's) and in a served process (uvloop's) alike.
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    health = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    status = (
        f"GET /api/status/{vehicle.id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\n\r\n"
    ).encode()
    requests = [health, status, status, health]
    assert await _segments_per_answer(server.base_url, requests) == [1, 1, 1, 1]
    async with serve_process(server.settings.database_url) as url:
        assert await _segments_per_answer(url, requests) == [1, 1, 1, 1]


async def test_answers_whose_body_comes_later_or_never_come_whole_and_in_order(
    server: Server,
) -> None:
    # A HEAD answer (a head, no body write), the playground's script (3.5 MB, streamed
    # in chunks read from disk between writes), a 100-continue POST (the interim answer
    # written while the app waits for the body), then a plain read: each whole, in order,
    # on one connection, and a HEAD answer that ends the connection; in a served process
    # (uvloop's loop).
    script = Path(playground.__file__).parent / "static" / "vendor" / "graphiql.min.js"
    expected = script.read_bytes()
    assert len(expected) > 1_000_000
    body = b'{"query": "{ __typename }"}'
    async with serve_process(server.settings.database_url) as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert head.startswith(b"HTTP/1.1 200 "), head
            writer.write(
                f"GET {playground.STATIC_PATH}/vendor/graphiql.min.js HTTP/1.1\r\n"
                "Host: 127.0.0.1\r\n\r\n".encode()
            )
            head, streamed = await _whole_answer(reader)
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert streamed == expected
            writer.write(
                b"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Expect: 100-continue\r\n" + f"Content-Length: {len(body)}\r\n\r\n".encode()
            )
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(body)
            head, answer = await _whole_answer(reader)
            assert head.startswith(b"HTTP/1.1 "), head
            assert b"__typename" in answer or b"errors" in answer
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head, answer = await _whole_answer(reader)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert answer == b'{"status":"ok"}'
            # The last answer of a connection that closes after it: a head, then the end.
            writer.write(b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            head = await asyncio.wait_for(reader.read(), TIMEOUT)
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert head.endswith(b"\r\n\r\n"), head
        finally:
            writer.close()
