"""A redis-server of a test's own that the test stops, starts, freezes and thaws.

Never the machine's shared Redis: each :class:`RedisServer` listens on a free port
of 127.0.0.1, keeps nothing on disk and is killed when its block ends. While it is
stopped, :class:`ClosingPort` may stand on its port: it takes each connection and
closes it at once, as a Redis that is going away does, and records when each came,
so that a test can wait for a client's reconnection attempts instead of sleeping.
:class:`SlowLink` sits between one client and Redis and delays what the client
sends, as a distant network does.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

from tests.conftest import TIMEOUT, Program, free_port

__all__ = ["ClosingPort", "RedisServer", "SlowLink", "redis_server"]


class RedisServer(Program):
    """One redis-server process on 127.0.0.1:``port``."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"

    async def start(self) -> None:
        """Start it and return once it accepts connections."""
        assert self.process is None, "already running"
        process = await asyncio.create_subprocess_exec(
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self.process = process
        assert process.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            async for line in process.stdout:
                if b"Ready to accept connections" in line:
                    break
            else:
                raise AssertionError(f"redis-server on port {self.port} did not start")
        # Keep reading its output: a full pipe would stall the server.
        self._drain = asyncio.create_task(_drain(process.stdout))

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, as on a dead link."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


async def _drain(stream: asyncio.StreamReader) -> None:
    async for _ in stream:
        pass


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[RedisServer]:
    """A started :class:`RedisServer` on a free port, killed when the block ends."""
    server = RedisServer(free_port())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class ClosingPort:
    """Listens on a stopped Redis's port; takes and closes every connection at once."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.arrivals: list[float] = []  # loop time of each connection
        self._arrived = asyncio.Condition()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ClosingPort:
        self._server = await asyncio.start_server(self._close, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _close(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()
        async with self._arrived:
            self.arrivals.append(asyncio.get_running_loop().time())
            self._arrived.notify_all()

    async def connections(self, count: int) -> list[float]:
        """Wait until ``count`` connections have come; their arrival times."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.arrivals) >= count)
        return self.arrivals[:count]


class SlowLink:
    """A proxy on a free port of 127.0.0.1 to Redis at ``port``: what a client sends
    reaches Redis ``delay`` seconds later, in order; answers come back at once."""

    def __init__(self, port: int, delay: float) -> None:
        self.target = port
        self.delay = delay
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> SlowLink:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    async def _connect(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        redis, to_redis = await asyncio.open_connection("127.0.0.1", self.target)
        for pipe in (self._delayed(client, to_redis), _forward(redis, to_client)):
            task = asyncio.create_task(pipe)
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _delayed(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send_when_due() -> None:
            while True:
                due, chunk = await chunks.get()
                await asyncio.sleep(max(0.0, due - loop.time()))  # the link's delay itself
                sink.write(chunk)
                await sink.drain()

        sender = asyncio.create_task(send_when_due())
        try:
            while chunk := await source.read(65536):
                chunks.put_nowait((loop.time() + self.delay, chunk))
        finally:
            sender.cancel()
            sink.close()


async def _forward(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    finally:
        sink.close()
