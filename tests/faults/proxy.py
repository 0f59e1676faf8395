"""A TCP proxy on 127.0.0.1 that a test turns against the connections it carries.

Put it between evlink and a real server (PostgreSQL) and it forwards bytes both
ways until the test says otherwise:

- :meth:`TcpProxy.freeze`: nothing passes any more, either way, on open connections
  and on new ones, and nothing is refused or reset: a link whose packets are dropped.
  :meth:`TcpProxy.holding` returns once something is held (a query in flight, a new
  connection). :meth:`TcpProxy.thaw` lets what was held through, as TCP would once
  the link heals.
- :meth:`TcpProxy.refuse`: the port stops listening; a new connection is refused.
  :meth:`TcpProxy.accept` listens on the same port again.
- :meth:`TcpProxy.reset`: every open connection is reset (RST to the client, and the
  server side closed), as when the server restarts.
- :meth:`TcpProxy.starting_up`: PostgreSQL only. A new connection is answered as
  PostgreSQL answers while it starts (or recovers): FATAL 57P03 "the database system
  is starting up". :meth:`TcpProxy.started` forwards new connections again.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["TcpProxy"]

_CHUNK = 65_536
# PostgreSQL's requests to encrypt before the startup message; a server without answers "N".
_ENCRYPTION_REQUESTS = (80877103, 80877104)  # SSLRequest, GSSENCRequest
_STARTING_UP = b"SFATAL\0VFATAL\0C57P03\0Mthe database system is starting up\0\0"


class _Link:
    """One client connection and its connection to the server."""

    def __init__(self, client: asyncio.StreamWriter, handler: asyncio.Task[Any] | None) -> None:
        self.client = client
        self.handler = handler  # the task serving this connection
        self.server: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def reset(self) -> None:
        sock = self.client.get_extra_info("socket")
        if sock is not None:
            # Linger 0: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.client.transport.abort()
        if self.server is not None:
            self.server.transport.abort()
        for task in self.tasks:
            task.cancel()


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._held = asyncio.Event()  # set once a frozen link holds something
        self._starting_up = False

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[TcpProxy]:
        """Listen on a free port of 127.0.0.1 until the block ends; then close everything."""
        await self.accept()
        try:
            yield self
        finally:
            await self.refuse()
            handlers = [link.handler for link in self._links if link.handler is not None]
            for link in tuple(self._links):
                link.reset()
            for handler in handlers:
                handler.cancel()
            if handlers:
                await asyncio.wait(handlers)  # no task is left for the loop to cancel

    async def accept(self) -> None:
        """Listen (again, on the same port once one was chosen)."""
        if self._server is None:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        """Stop listening: new connections are refused; open ones go on."""
        if self._server is not None:
            self._server.close()
            self._server = None

    def freeze(self) -> None:
        self._held.clear()
        self._flowing.clear()

    async def holding(self) -> None:
        """Return once the frozen link holds bytes or a connection."""
        await self._held.wait()

    def thaw(self) -> None:
        self._flowing.set()

    def starting_up(self) -> None:
        self._starting_up = True

    def started(self) -> None:
        self._starting_up = False

    def reset(self) -> None:
        """Reset every open connection."""
        for link in tuple(self._links):
            link.reset()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer, asyncio.current_task())
        self._links.add(link)
        try:
            if self._starting_up:
                await _tell_starting_up(reader, writer)
                return
            await self._wait_for_the_link()  # a frozen link answers nothing, not even a connect
            upstream_reader, link.server = await asyncio.open_connection(*self.upstream)
            link.tasks = [
                asyncio.create_task(self._pump(reader, link.server)),
                asyncio.create_task(self._pump(upstream_reader, writer)),
            ]
            # Either way ending ends both: a closed side closes the other.
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the server refused or went away: the client's side closes below
        except asyncio.CancelledError:
            # The proxy closes. Ended, not cancelled: asyncio's stream server reports a
            # cancelled handler as an error.
            pass
        finally:
            for task in link.tasks:
                task.cancel()
            for side in (writer, link.server):
                if side is not None:
                    side.close()
            self._links.discard(link)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(_CHUNK):
                await self._wait_for_the_link()  # held, not lost, while frozen
                writer.write(data)
                await writer.drain()
            await self._wait_for_the_link()  # even the close waits for the link

    async def _wait_for_the_link(self) -> None:
        if not self._flowing.is_set():
            self._held.set()
            await self._flowing.wait()


async def _tell_starting_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer a PostgreSQL client's startup as a server that is starting up does."""
    length, code = struct.unpack("!ii", await reader.readexactly(8))
    while code in _ENCRYPTION_REQUESTS:
        writer.write(b"N")  # no encryption here; the client sends its startup message
        length, code = struct.unpack("!ii", await reader.readexactly(8))
    await reader.readexactly(length - 8)  # the rest of the startup message
    writer.write(b"E" + struct.pack("!i", len(_STARTING_UP) + 4) + _STARTING_UP)
    await writer.drain()
