"""uvicorn's websockets-sansio protocol, holding less for each open websocket.

An idle subscriber's socket is mostly what the server holds for it (bench/README.md,
memory per idle subscription). uvicorn's protocol keeps, for the socket's life:

- an ``asyncio.Queue`` of the messages the app has not received yet: four deques (its
  getters, its putters, its items, and its ``join`` event's waiters), 3 KB;
- an ``asyncio.Event`` that says whether the transport takes writes: one deque more;
- the handshake's request and response, with their headers, 3 to 4 KB, which it never
  reads again once the handshake is done (the ``websockets`` parser keeps the request
  too, in its suspended frame).

:class:`LeanWebSocketProtocol` is that protocol with a :class:`_Mailbox` for the queue
(a list, and one future while the app waits: evlink.mailbox, as under evlink's event
bus), a :class:`_Flag` for the event, and the handshake let go once it is answered (the
request's headers emptied in place: the scope has its own copy). It is what
:func:`evlink.server.server_options` serves websockets with, when uvicorn has that
protocol and it reads what this replaces (else uvicorn's choice stands).
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

from websockets.datastructures import Headers

from evlink.mailbox import Mailbox

try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # a uvicorn without it: uvicorn's own choice of protocol
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]

__all__ = ["LeanWebSocketProtocol", "websocket_protocol"]


class _Mailbox(Mailbox[Any]):
    """What the protocol's ``queue`` is used as: ``put_nowait``, ``get``, ``empty``. One
    reader (the app's ``receive``); a message stays until it is taken, so a ``get``
    cancelled after it came loses nothing."""

    __slots__ = ()

    put_nowait = Mailbox.put
    get = Mailbox.take

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class _Flag:
    """What the protocol's ``writable`` event is used as: ``set``, ``clear``, ``is_set``,
    ``wait``; a future only while someone waits."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True  # uvicorn sets it at once
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


# What this replaces or lets go of, set by uvicorn's protocol in its __init__ and on the
# handshake: a uvicorn whose protocol has not all of them is served as uvicorn chooses.
_REPLACED = ("queue", "writable")
_HANDSHAKE = ("request", "response")

if WebSocketsSansIOProtocol is not None:

    class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
        """uvicorn's websockets-sansio protocol with a lighter queue and writable flag,
        that lets go of the handshake once it is answered (see the module)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.queue = _Mailbox()  # type: ignore[assignment]
            self.writable = _Flag()  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            conn = self.conn
            if conn.handshake_exc is not None and not self.handshake_complete:
                # websockets refused the upgrade request (one with a body, say) and waits
                # for nothing more; uvicorn's protocol would hold the socket for ever.
                self._refuse_handshake(conn.handshake_exc)

        def _refuse_handshake(self, error: Exception) -> None:
            if self.transport.is_closing():
                return
            reason = f"Failed to open a WebSocket connection: {error}.\n"
            response = self.conn.reject(HTTPStatus.BAD_REQUEST, reason)
            self.transport.write(response.serialize())
            self.transport.close()

        async def send(self, message: Any) -> None:
            await super().send(message)
            if self.handshake_complete and getattr(self, "response", None) is not None:
                # The websockets parser's frame keeps the request for the connection's
                # life: its headers (the scope has its own copy) are emptied in place.
                headers = getattr(self.request, "headers", None)
                if isinstance(headers, Headers):
                    headers.clear()
                for name in _HANDSHAKE:  # never read again once answered
                    setattr(self, name, None)

else:  # pragma: no cover (uvicorn has had the protocol since 0.35)
    LeanWebSocketProtocol = None  # type: ignore[assignment,misc]


def websocket_protocol() -> type[asyncio.Protocol] | str:
    """uvicorn's ``ws`` option: :class:`LeanWebSocketProtocol` when uvicorn's protocol
    is what it expects, else ``"auto"`` (uvicorn's choice)."""
    if LeanWebSocketProtocol is None:
        return "auto"
    made = WebSocketsSansIOProtocol.__init__.__code__.co_names
    handshake = WebSocketsSansIOProtocol.handle_connect.__code__.co_names
    if not all(name in made for name in _REPLACED) or not all(
        name in handshake for name in _HANDSHAKE
    ):
        return "auto"
    return LeanWebSocketProtocol
