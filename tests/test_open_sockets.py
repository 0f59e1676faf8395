"""A websocket's life in evlink.server: how it is asked to close, and what it follows.

The end-to-end cases (a revoked key, a lost car, a shutdown with 1001) are in
tests/test_revocation.py and tests/test_instances.py; these hold the cases those
cannot reach in time: a socket that arrives while the server stops, and a watch
that ends.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

from evlink.server import OpenSockets, serve_until_closed


class _Recorder:
    """What an ASGI ``send`` was given."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def __call__(self, message: Any) -> None:
        self.sent.append(message)


async def test_a_socket_that_arrives_while_the_server_stops_is_closed_with_1001_at_once() -> None:
    sockets = OpenSockets()
    sockets.stopping.set()
    ws = sockets.open("127.0.0.1", 20)
    assert ws is not None
    handler: asyncio.Future[None] = asyncio.ensure_future(asyncio.Event().wait())  # type: ignore[arg-type]
    send = _Recorder()
    async with sockets.track(ws):
        await asyncio.wait_for(serve_until_closed(handler, ws, send), 5)
    assert handler.cancelled()
    assert send.sent == [{"type": "websocket.close", "code": 1001, "reason": "server going away"}]
    assert len(sockets) == 0


async def test_a_socket_asked_to_close_while_served_closes_with_the_code_asked_for() -> None:
    sockets = OpenSockets()
    ws = sockets.open("127.0.0.1", 20)
    assert ws is not None
    handler: asyncio.Future[None] = asyncio.ensure_future(asyncio.Event().wait())  # type: ignore[arg-type]
    send = _Recorder()
    async with sockets.track(ws):
        serving = asyncio.ensure_future(serve_until_closed(handler, ws, send))
        await asyncio.sleep(0)  # one turn of the loop: it now waits
        assert not serving.done()
        ws.close(4403, "key revoked")
        await asyncio.wait_for(serving, 5)
    assert handler.cancelled()
    assert send.sent == [{"type": "websocket.close", "code": 4403, "reason": "key revoked"}]


async def test_a_handler_that_ends_ends_the_socket_without_a_close_of_ours() -> None:
    sockets = OpenSockets()
    ws = sockets.open(None, 20)
    assert ws is not None
    handler: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    send = _Recorder()
    serving = asyncio.ensure_future(serve_until_closed(handler, ws, send))
    await asyncio.sleep(0)
    handler.set_result(None)
    await asyncio.wait_for(serving, 5)
    assert send.sent == []
    ws.close(4403, "too late")  # nothing is woken any more
    assert send.sent == []


def test_a_watch_follows_the_car_only_while_its_block_runs() -> None:
    sockets = OpenSockets()
    ws = sockets.open(None, 20)
    assert ws is not None
    car, first, second = uuid4(), object(), object()
    with ws.watch(car, first):  # type: ignore[arg-type]
        with ws.watch(car, second):  # type: ignore[arg-type]
            assert ws.watching == {car: {first, second}}
        assert ws.watching == {car: {first}}
    assert ws.watching == {}
