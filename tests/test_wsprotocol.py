"""evlink's websocket protocol (evlink/wsprotocol.py): uvicorn's websockets-sansio
protocol with a lighter receive queue and writable flag; what it holds less of is
measured in bench/ (python -m bench.subscriptions). Here: the replacements keep the
semantics uvicorn relies on, and evlink serves websockets with it."""

from __future__ import annotations

import asyncio
import json

import websockets

from evlink.server import server_options
from evlink.settings import Settings
from evlink.wsprotocol import LeanWebSocketProtocol, _Flag, _Mailbox
from tests.conftest import TIMEOUT, Server


async def test_the_mailbox_hands_messages_in_order_and_a_cancelled_get_loses_none() -> None:
    mailbox = _Mailbox()
    assert mailbox.empty()
    waiting = asyncio.ensure_future(mailbox.get())
    await asyncio.sleep(0)  # it waits for a message
    mailbox.put_nowait(1)
    waiting.cancel()  # cancelled after its message came: the message stays
    mailbox.put_nowait(2)
    assert (mailbox.qsize(), mailbox.empty()) == (2, False)
    assert [await asyncio.wait_for(mailbox.get(), TIMEOUT) for _ in range(2)] == [1, 2]
    assert mailbox.empty()


async def test_the_writable_flag_holds_writers_while_cleared_and_releases_them_on_set() -> None:
    flag = _Flag()
    assert flag.is_set()
    await asyncio.wait_for(flag.wait(), TIMEOUT)  # set: no wait
    flag.clear()
    writers = [asyncio.ensure_future(flag.wait()) for _ in range(2)]
    await asyncio.sleep(0)
    assert not any(writer.done() for writer in writers)
    flag.set()
    await asyncio.wait_for(asyncio.gather(*writers), TIMEOUT)
    flag.clear()
    cancelled = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    flag.set()  # a waiter that went away is skipped
    assert flag.is_set()


def test_evlink_serves_websockets_with_it() -> None:
    assert server_options(Settings())["ws"] is LeanWebSocketProtocol


async def test_messages_both_ways_over_a_served_websocket(server: Server) -> None:
    """Several messages sent at once reach the app in order (its queue), and its answers
    come back (its writable flag)."""
    _, key = await server.user()
    async with websockets.connect(
        server.ws_url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")]
    ) as ws:
        init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}}
        await ws.send(json.dumps(init))
        for _ in range(3):
            await ws.send(json.dumps({"type": "ping"}))
        answers = [json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) for _ in range(4)]
    assert [answer["type"] for answer in answers] == ["connection_ack", "pong", "pong", "pong"]
