"""The log as `evlink serve` writes it (evlink/logs.py): no raw control character from a
request in any line, and a client's mistake at most at INFO, without a traceback."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import replace

import pytest

from evlink.logs import configure_logging
from evlink.settings import Settings
from tests.conftest import TIMEOUT, WEBHOOK_SECRET, EnodeWorld, Server, _truncate, run_server
from tests.fakes.enode import enode_signature

# What the text format starts each line with; a line that does not is a forgery or a
# traceback's.
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
FORGED = "2026-11-29 12:00:00,000 ERROR evlink.edge [forged] request 1 /x: unexpected error"
UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture
def evlink_logging(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """``configure_logging`` as ``evlink serve`` calls it, writing to the captured stderr,
    undone at the end so the other tests keep pytest's own handlers."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    loggers = [logging.getLogger(name) for name in UVICORN]
    kept = [(lg.handlers[:], lg.filters[:], lg.propagate, lg.level) for lg in loggers]
    try:
        yield capsys
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for lg, (handlers, filters, propagate, level) in zip(loggers, kept, strict=True):
            lg.handlers[:], lg.filters[:], lg.propagate, lg.level = (
                handlers,
                filters,
                propagate,
                level,
            )


def lines(output: str) -> list[str]:
    """The log's lines as a reader splits them: on every line break, not just ``\\n``."""
    return output.splitlines()


async def test_control_characters_in_a_path_are_escaped_in_the_text_log(
    server: Server, evlink_logging: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", "text")  # after the server's uvicorn set up its own loggers
    _, key = await server.user()
    # A line feed, a carriage return, an ANSI escape, NEL and U+2028, each before a line
    # that looks like one of evlink's own.
    breaks = ["%0a", "%0d", "%1b[2K%0d", "%c2%85", "%e2%80%a8"]
    for line_break in breaks:
        forged_path = "/api/status/x" + line_break + FORGED.replace(" ", "%20")
        response = await server.http.get(forged_path, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 404

    output = evlink_logging.readouterr().err
    access = [line for line in lines(output) if " evlink.access " in line]
    assert len(access) >= len(breaks), output
    for line in lines(output):
        assert LINE.match(line), f"a line evlink did not write: {line!r}"
    assert "\\x0a2026-11-29 12:00:00,000 ERROR evlink.edge [forged]" in output
    for escaped in ("\\x0d", "\\x1b[2K", "\\x85", "\\u2028"):
        assert escaped in output, escaped


async def test_clients_mistakes_that_uvicorn_logs_are_info_without_a_traceback(
    server: Server, evlink_logging: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", "text")
    # uvicorn's own level in tests is WARNING; `evlink serve` leaves it at the root's.
    logging.getLogger("uvicorn.error").setLevel(logging.NOTSET)
    host, port = server.base_url.removeprefix("http://").split(":")

    end_of_head = b"\r\n\r\n"
    garbage = await raw_exchange(host, int(port), [(b"NOT HTTP AT ALL\r\n\r\n", end_of_head)])
    upgrade = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    unsupported = await raw_exchange(host, int(port), [(upgrade, end_of_head)])
    closed = b"\x88\x02\x03\xef"  # a close frame: 1007, invalid frame payload data
    not_utf8 = await raw_exchange(
        host, int(port), [(websocket_upgrade(), end_of_head), (text_frame(b"\xff\xfe"), closed)]
    )

    assert garbage.startswith(b"HTTP/1.1 400")
    assert unsupported.startswith(b"HTTP/1.1 200")  # served as a plain request
    assert not_utf8.startswith(b"HTTP/1.1 101")
    output = evlink_logging.readouterr().err
    assert "Invalid HTTP request received." in output
    assert "Invalid UTF-8 sequence received from client." in output
    assert "Unsupported upgrade request." in output
    for line in lines(output):
        assert LINE.match(line), f"a traceback or a line evlink did not write: {line!r}"
        assert not re.match(r"\S+ \S+ (WARNING|ERROR|CRITICAL) ", line), line


async def raw_exchange(host: str, port: int, steps: list[tuple[bytes, bytes]]) -> bytes:
    """On one connection, for each step: send its bytes, then read up to its marker."""
    reader, writer = await asyncio.open_connection(host, port)
    answer = b""
    try:
        for sent, until in steps:
            writer.write(sent)
            await writer.drain()
            answer += await asyncio.wait_for(reader.readuntil(until), TIMEOUT)
    finally:
        writer.close()
    return answer


def websocket_upgrade() -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        "GET /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n"
    ).encode()


def text_frame(payload: bytes) -> bytes:
    """One masked websocket text frame (RFC 6455, 5.2) with ``payload`` as is."""
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


async def test_clients_mistakes_are_logged_at_most_at_info_without_a_traceback(
    enode: EnodeWorld, caplog: pytest.LogCaptureFixture
) -> None:
    """A sweep of mistakes on every surface; the JSON and websocket ones have their own
    tests (tests/test_jsonbody.py, tests/schema/test_socket_messages.py)."""
    caplog.set_level(logging.DEBUG)
    server = enode.server
    owner, _ = await enode.linked_user("user-1")
    _, key = await server.user()
    car = await enode.vehicle(owner)
    keyed = {"Authorization": f"Bearer {key}"}
    json_type = {"content-type": "application/json"}
    signed_junk = b"{not json"
    mistakes = [
        ("POST", "/graphql", {"content": b"{not json", "headers": {**keyed, **json_type}}),
        ("POST", "/graphql", {"json": {"query": "{ viewer { id }"}, "headers": keyed}),
        ("POST", "/graphql", {"json": {"query": "{ nope }"}, "headers": keyed}),
        (
            "POST",
            "/graphql",
            {"json": {"query": "{ viewer { id } }"}, "headers": {"Authorization": "Bearer evl_x"}},
        ),
        ("GET", f"/api/status/{car.id}", {"headers": keyed}),  # another user's vehicle
        ("GET", "/api/status/not-an-id", {"headers": keyed}),
        (
            "POST",
            f"/api/charging/{car.id}",
            {"content": b"a=b", "headers": {**keyed, "content-type": "text/plain"}},
        ),
        (
            "POST",
            f"/api/charging/{car.id}?wait=soon",
            {"json": {"action": "START"}, "headers": keyed},
        ),
        ("POST", "/graphql", {"content": b"x" * 70_000, "headers": {**keyed, **json_type}}),
        ("DELETE", "/api/ha/me", {}),
        ("GET", "/no/such/path", {}),
        ("POST", "/api/webhooks/enode", {"content": b"[]", "headers": json_type}),  # unsigned
        (
            "POST",
            "/api/webhooks/enode",
            {"content": b"[]", "headers": {**json_type, "x-enode-signature": "sha1=" + "0" * 40}},
        ),
        (
            "POST",
            "/api/webhooks/enode",
            {
                "content": signed_junk,
                "headers": {
                    **json_type,
                    "x-enode-signature": enode_signature(WEBHOOK_SECRET, signed_junk),
                },
            },
        ),
    ]
    for method, path, request in mistakes:
        response = await server.http.request(method, path, **request)
        # 4xx, or GraphQL's 200 with errors: never a 500 or an internal error.
        assert response.status_code < 500, (method, path, response.text)
        assert "INTERNAL_ERROR" not in response.text, (method, path)
        assert response.status_code >= 400 or response.json()["errors"], (method, path)

    loud = [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno > logging.INFO or r.exc_info
    ]
    assert loud == []


class _AccessLines(logging.Handler):
    """evlink's access-log lines, as they are written, for a test to wait on."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: asyncio.Queue[str] = asyncio.Queue()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.put_nowait(record.getMessage())


async def test_a_client_leaving_mid_body_is_info_without_a_traceback(
    enode: EnodeWorld, caplog: pytest.LogCaptureFixture
) -> None:
    """A head announcing 100 bytes, 9 of them, then the client hangs up: on every path that
    reads a body, nothing is logged above INFO and the request counts as 499."""
    caplog.set_level(logging.DEBUG)
    server = enode.server
    owner, key = await enode.linked_user("user-1")
    car = await enode.vehicle(owner)
    host, port = server.base_url.removeprefix("http://").split(":")
    access = _AccessLines()
    logging.getLogger("evlink.access").addHandler(access)
    paths = [
        "/graphql",
        "/api/webhooks/enode",
        f"/api/charging/{car.id}",
        f"/api/ha/charging/{car.id}",
    ]
    statuses = {}
    try:
        for path in paths:
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {key}\r\nContent-Length: 100\r\n\r\n".encode()
                + b'{"action"'
            )
            await writer.drain()
            writer.close()
            line = await asyncio.wait_for(access.lines.get(), TIMEOUT)
            statuses[path] = line.split()[2]
    finally:
        logging.getLogger("evlink.access").removeHandler(access)

    loud = [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno > logging.INFO or r.exc_info
    ]
    assert loud == []
    assert statuses == {path: "499" for path in paths}


class _Lines(logging.Handler):
    """The messages of one logger, as they are written, for a test to wait on."""

    def __init__(self) -> None:
        super().__init__()
        self.records: asyncio.Queue[logging.LogRecord] = asyncio.Queue()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.put_nowait(record)


async def test_websocket_handshakes_refused_past_the_pending_cap_log_no_error(
    settings: Settings, evlink_logging: pytest.CaptureFixture[str]
) -> None:
    """uvicorn logs "ASGI callable returned without completing handshake." at ERROR after
    each 429 denial response (evlink.logs): it is INFO, so a flood writes no ERROR line."""
    await _truncate(settings.database_url)
    async with run_server(replace(settings, ws_pending_per_address=1)) as server:
        configure_logging("INFO", "text")
        uvicorn_errors = logging.getLogger("uvicorn.error")
        uvicorn_errors.setLevel(logging.NOTSET)
        written = _Lines()
        uvicorn_errors.addHandler(written)
        host, port = server.base_url.removeprefix("http://").split(":")
        reader, pending = await asyncio.open_connection(host, int(port))
        try:
            pending.write(websocket_upgrade())
            accepted = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            refused = await raw_exchange(host, int(port), [(websocket_upgrade(), b"}")])
            messages = []
            while "without completing handshake" not in "".join(messages):
                record = await asyncio.wait_for(written.records.get(), TIMEOUT)
                messages.append(f"{record.levelname} {record.getMessage()}")
        finally:
            pending.close()
            uvicorn_errors.removeHandler(written)

    assert accepted.startswith(b"HTTP/1.1 101")
    assert refused.startswith(b"HTTP/1.1 429")
    assert b"RATE_LIMITED" in refused
    assert messages[-1] == "INFO ASGI callable returned without completing handshake."
    for line in lines(evlink_logging.readouterr().err):
        assert LINE.match(line), f"a traceback or a line evlink did not write: {line!r}"
        assert not re.match(r"\S+ \S+ (WARNING|ERROR|CRITICAL) ", line), line
