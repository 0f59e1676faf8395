"""HTTP connections: deadlines for the request head and body, a cap on open connections,
and the open-files limit raised at start-up.

uvicorn closes idle keep-alive connections, but a connection that sends its request head
or body a byte at a time (slowloris), or nothing at all, stays open for ever; with enough
of them the cap below is reached (or the process runs out of file descriptors) and every
other client is refused. So:

- a connection whose request head is not complete within ``EVLINK_HEADER_TIMEOUT``
  seconds of its opening (or of the first byte of its next request, pipelined ones
  included) is closed;
- a connection whose request body is not complete within ``EVLINK_BODY_TIMEOUT`` seconds
  of its head is closed (the app's ``receive`` then says ``http.disconnect``); a
  websocket upgrade has no body, so its deadline ends with its head;
- past ``EVLINK_MAX_CONNECTIONS`` open connections (websockets included), a new one is
  answered ``503 SERVER_BUSY`` with ``Retry-After`` and closed at once, rather than held
  while the process runs out of descriptors;
- ``evlink serve`` raises the soft limit of open files to the hard limit, since the
  common default of 1,024 is reached by an ordinary number of subscribers.

And an answer's head and body go out in one write (:class:`OneWrite`): uvicorn writes
them apart, two system calls and two TCP segments for every answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from evlink.errors import ServerBusy
from evlink.settings import Settings

__all__ = [
    "PROTOCOL",
    "ConnectionLimits",
    "GuardedHttpProtocol",
    "connection_cap",
    "raise_open_files_limit",
]

logger = logging.getLogger(__name__)

# Descriptors kept for what is not a client connection: the database pool, Redis, the
# provider's HTTP client, log files, the listening socket.
RESERVED_FILES = 256


def raise_open_files_limit() -> int:
    """Raise the soft limit of open files to the hard limit; the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # a sandbox may refuse it: serve within the limit
            logger.warning("could not raise the open-files limit from %d: %s", soft, exc)
    return soft


def connection_cap(configured: int, open_files: int) -> int:
    """``EVLINK_MAX_CONNECTIONS``, or (0) what the open-files limit leaves for clients."""
    if configured > 0:
        return configured
    return max(64, open_files - RESERVED_FILES)


def _busy_answer() -> bytes:
    """The whole HTTP answer to a connection past the cap, made once."""
    error = ServerBusy()
    body = json.dumps({"detail": error.message, "code": error.code}).encode()
    head = (
        f"HTTP/1.1 {error.status} Service Unavailable\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"retry-after: {round(error.retry_after or 1)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


_BUSY = _busy_answer()


@dataclass
class ConnectionLimits:
    """What :class:`GuardedHttpProtocol` enforces; the app keeps it in ``app.state``."""

    header_timeout: float
    max_connections: int
    body_timeout: float = 10.0
    # Whether the cap was reached and not yet left: one WARNING, then one INFO.
    capped: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        """The limits of ``settings``, the open-files limit raised first."""
        open_files = raise_open_files_limit()
        cap = connection_cap(settings.max_connections, open_files)
        logger.info("connections: at most %d open (open-files limit %d)", cap, open_files)
        return cls(settings.header_timeout, cap, settings.body_timeout)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request head and body, a
    cap on the open connections, and each answer's writes joined (:class:`OneWrite`).
    uvicorn makes it by its import path (:data:`PROTOCOL`), in worker processes too; the
    limits are those of the app it serves."""

    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.limits = _limits_of(config)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._body_deadline: asyncio.TimerHandle | None = None
        # A head or a body begun and not yet in. Its deadline is armed once the bytes
        # that came are parsed and it is still not in (counted from then, the same
        # turn of the loop as the first byte): a request that comes whole in one read,
        # as a poll does, costs no timer (two timers a request were measured at 2 to
        # 4 µs each on uvloop, against a cached status read's 35 µs in the app).
        self._head_pending = False
        self._body_pending = False
        # Requests that came while another was being answered (pipelined), not yet
        # answered: uvicorn tells only the last one parsed that its client left.
        self._pipelined: list[Any] = []
        self._writes: OneWrite | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._writes = OneWrite(transport, self.loop)
        if len(self.connections) > self.limits.max_connections:
            self._note_capped()
            transport.write(_BUSY)
            transport.close()
            return
        self._await_head()

    def on_message_begin(self) -> None:
        # A request's first bytes: on a kept-alive connection, or behind another
        # request in the same read (pipelined); its head is due within the deadline.
        self._head_pending = True
        super().on_message_begin()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_pending and self._head_deadline is None:
            self._await_head()
        if self._body_pending and self._body_deadline is None:
            self._body_deadline = self.loop.call_later(self.limits.body_timeout, self._late)

    def on_headers_complete(self) -> None:
        self._head_arrived()
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not previous and cycle is not None and self._writes is not None:
            cycle.transport = self._writes  # type: ignore[assignment]
        if previous is not None and not previous.response_complete and self.cycle is not previous:
            # Pipelined behind ``previous``: remembered, so that its answer is dropped if
            # the client leaves first (written to the closed socket, it was an ERROR).
            self._pipelined = [c for c in self._pipelined if not c.response_complete]
            self._pipelined.append(self.cycle)
        # Done when the message ends: at once for a request without a body (a
        # websocket upgrade among them), before any deadline is armed.
        self._body_pending = True

    def on_message_complete(self) -> None:
        self._body_arrived()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        self._body_arrived()
        super().connection_lost(exc)
        for cycle in self._pipelined:  # uvicorn told only the last one parsed
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        self._pipelined = []
        limits = self.limits
        if limits.capped and len(self.connections) < limits.max_connections * 0.9:
            limits.capped = False
            logger.info("%d open connections: under the cap again", len(self.connections))

    def shutdown(self) -> None:
        """The server shuts down (``evlink serve``, each ``--workers`` process): REST
        ``?wait`` requests answer now (:func:`evlink.server.stop_waits`)."""
        from evlink.server import stop_waits  # evlink.server imports this module

        stop_waits(self.config)
        super().shutdown()

    def _note_capped(self) -> None:
        if not self.limits.capped:
            self.limits.capped = True
            logger.warning(
                "%d open connections, past the cap (EVLINK_MAX_CONNECTIONS=%d): "
                "new ones are answered 503 until some close",
                len(self.connections) - 1,
                self.limits.max_connections,
            )

    def _await_head(self) -> None:
        self._head_deadline = self.loop.call_later(self.limits.header_timeout, self._late)

    def _head_arrived(self) -> None:
        self._head_pending = False
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _body_arrived(self) -> None:
        self._body_pending = False
        if self._body_deadline is not None:
            self._body_deadline.cancel()
            self._body_deadline = None

    def _late(self) -> None:
        """A head or a body not in by its deadline: the connection is closed."""
        self._head_deadline = self._body_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


# Bytes up to which a write is joined to the held one by copying (an answer's body, a
# chunk of a stream); a larger one goes out with it as a vector.
JOIN_LIMIT = 64 * 1024


class OneWrite:
    """A connection's transport as its response cycles see it: a write is held until the
    next one or the end of the loop's turn, and goes out with it in one ``write``.

    uvicorn writes an answer's head as ``http.response.start`` comes and its body as
    ``http.response.body`` comes: two system calls and two TCP segments for every
    answer, when the app sends both in the same turn (as every ``Response`` does). Held
    and joined, they are one of each. A write that nothing follows in its turn (the head
    of a stream or of a HEAD answer, a ``100 Continue``) goes out on the loop's next
    turn, and before the connection is closed (tests/test_connections.py).
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._held = data
            self._loop.call_soon(self.flush)
            return
        self._held = None
        if len(data) > JOIN_LIMIT:  # not copied: written from both buffers
            self._transport.writelines((held, data))
        else:
            self._transport.write(held + data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            # The client may have left meanwhile: uvloop raises on a closed transport.
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


PROTOCOL = f"{__name__}:{GuardedHttpProtocol.__name__}"

_DEFAULT_LIMITS = ConnectionLimits(header_timeout=10.0, max_connections=1_000_000)


def _limits_of(config: Config) -> ConnectionLimits:
    """The limits kept by the app that ``config`` serves (uvicorn wraps it in layers)."""
    app: Any = getattr(config, "loaded_app", None)
    for _ in range(6):
        limits = getattr(getattr(app, "state", None), "connection_limits", None)
        if isinstance(limits, ConnectionLimits):
            return limits
        app = getattr(app, "app", None)
    return _DEFAULT_LIMITS
