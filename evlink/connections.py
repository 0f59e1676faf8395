"""HTTP connections: deadlines for the request head and body, a cap on open connections,
and the open-files limit raised at start-up.

uvicorn closes idle keep-alive connections, but a connection that sends its request head
or body a byte at a time (slowloris), or nothing at all, stays open for ever; with enough
of them the cap below is reached (or the process runs out of file descriptors) and every
other client is refused. So:

- a connection whose request head is not complete within ``EVLINK_HEADER_TIMEOUT``
  seconds of its opening (or of the first byte of its next request, pipelined ones
  included) is closed;
- a request head (request line and headers) past :data:`MAX_HEAD_BYTES` is answered
  ``431 HEADERS_TOO_LARGE`` and the connection closed: uvicorn and httptools set no
  limit, and hold a head in memory until it is whole (50 MB headers, sent fast, took
  a connection's memory with them well within the deadline);
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
import functools
import json
import logging
import resource
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from evlink.errors import EvlinkError, HeadersTooLarge, ServerBusy
from evlink.settings import Settings

__all__ = [
    "MAX_HEADER_FIELDS",
    "MAX_HEAD_BYTES",
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


# The largest request head (request line and headers) taken; a browser's cookies for
# this host and a Bearer key are a few KB, and nginx's default for a head is 32 KB.
MAX_HEAD_BYTES = 64 * 1024
# A read is parsed in pieces of at most this many bytes, each counted while a head is
# pending: a head is refused once past MAX_HEAD_BYTES, give or take one piece.
HEAD_PIECE = 16 * 1024
# The most header fields a request head (and a chunked body's trailers, which uvicorn adds
# to the same list) may have; 64 KiB of tiny fields held about 1.2 MB per connection.
MAX_HEADER_FIELDS = 100
# After a 431, how long and how much of what the client still sends is read and dropped.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024


class _TooManyFields(Exception):
    """A request past MAX_HEADER_FIELDS header fields: raised to stop the parser."""


@functools.cache
def _whole_answer(kind: type[EvlinkError], reason: str) -> bytes:
    """The whole HTTP answer with the JSON body of a ``kind`` error, made once, that closes
    the connection: written by the connection itself, before any app sees a request."""
    from evlink.guards import with_security_headers  # guards imports the app's modules

    error = kind()
    body = json.dumps({"detail": error.message, "code": error.code}, separators=(",", ":"))
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if error.retry_after:
        headers.append((b"retry-after", b"%d" % round(error.retry_after)))
    # The security headers of every answer (the app's edge adds them to its own).
    headers = [*with_security_headers(headers), (b"connection", b"close")]
    head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return f"HTTP/1.1 {error.status} {reason}\r\n".encode() + head + b"\r\n" + body.encode()


def _busy() -> bytes:
    return _whole_answer(ServerBusy, "Service Unavailable")


def _head_too_large() -> bytes:
    return _whole_answer(HeadersTooLarge, "Request Header Fields Too Large")


@dataclass
class ConnectionLimits:
    """What :class:`GuardedHttpProtocol` enforces; the app keeps it in ``app.state``."""

    header_timeout: float
    max_connections: int
    body_timeout: float = 10.0
    # The most bytes a request's body may take on the wire, chunks' framing and trailers
    # included: twice the largest body the app takes, and a head's worth (from_settings).
    max_body_bytes: int = 2 * 1_048_576 + MAX_HEAD_BYTES
    # Whether the cap was reached and not yet left: one WARNING, then one INFO.
    capped: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        """The limits of ``settings``, the open-files limit raised first."""
        open_files = raise_open_files_limit()
        cap = connection_cap(settings.max_connections, open_files)
        logger.info("connections: at most %d open (open-files limit %d)", cap, open_files)
        largest = max(settings.max_body, settings.webhook_max_body)
        return cls(
            settings.header_timeout, cap, settings.body_timeout, 2 * largest + MAX_HEAD_BYTES
        )


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
        # Bytes parsed while a head was pending, by pieces of a read (a head that comes
        # whole in one small read is never counted), against MAX_HEAD_BYTES.
        self._head_bytes = 0
        # After a 431: how many more bytes are read and dropped before the connection is
        # closed (None: not refused).
        self._dropping: int | None = None
        # A head refused while a request before it was being answered: 431 after that.
        self._refused_behind = False
        # Past MAX_HEADER_FIELDS (the parser was stopped): answered 431, not 400.
        self._too_many_fields = False
        # Bytes parsed while a body was pending, against limits.max_body_bytes.
        self._body_bytes = 0
        # Requests that came while another was being answered (pipelined), not yet
        # answered: uvicorn tells only the last one parsed that its client left.
        self._pipelined: list[Any] = []
        self._writes: OneWrite | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._writes = OneWrite(transport, self.loop)
        if len(self.connections) > self.limits.max_connections:
            self._note_capped()
            transport.write(_busy())
            transport.close()
            return
        self._await_head()

    def on_message_begin(self) -> None:
        # A request's first bytes: on a kept-alive connection, or behind another
        # request in the same read (pipelined); its head is due within the deadline.
        self._head_pending = True
        super().on_message_begin()

    def data_received(self, data: bytes) -> None:
        if self._dropping is not None:  # after a 431
            self._drop(len(data))
            return
        if len(data) <= HEAD_PIECE:
            self._parse(data)
            return
        # A large read (a body, requests pipelined, a large head) is parsed in pieces, so
        # that a head is measured however its bytes came (a fast client's 200 KB head can
        # come in one read).
        whole = memoryview(data)
        transport = self.transport
        for start in range(0, len(data), HEAD_PIECE):
            if self._dropping is not None:  # a head refused in this read: the rest too
                self._drop(len(data) - start)
                return
            if transport.is_closing() or transport.get_protocol() is not self:
                return  # a malformed request answered 400, or a websocket now
            self._parse(whole[start : start + HEAD_PIECE])

    def _drop(self, size: int) -> None:
        """``size`` bytes read after a 431, dropped; past LINGER_BYTES the connection is
        closed."""
        assert self._dropping is not None
        self._dropping -= size
        if self._dropping < 0 and not self.transport.is_closing():
            self.transport.close()

    def _parse(self, data: bytes | memoryview) -> None:
        super().data_received(data)  # type: ignore[arg-type]  # httptools takes any buffer
        if self._head_pending:
            # Every byte of this piece counts, though the head may have begun inside it.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse_head()
                return
            if self._head_deadline is None:
                self._await_head()
        if self._body_pending:
            # Counted by pieces, framing and trailers included: what bounds a chunked
            # body's trailer (httptools holds a field until it ends) and a refused body's
            # rest, which uvicorn reads on to reach the next request.
            self._body_bytes += len(data)
            if self._body_bytes > self.limits.max_body_bytes:
                logger.info(
                    "a request body past %d bytes on the wire: closed", self.limits.max_body_bytes
                )
                self.transport.close()
                return
            if self._body_deadline is None:
                self._body_deadline = self.loop.call_later(self.limits.body_timeout, self._late)

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= MAX_HEADER_FIELDS:
            # Raised through the parser, which stops here; uvicorn then answers what it
            # takes for a malformed request, which send_400_response makes a 431.
            self._too_many_fields = True
            raise _TooManyFields()
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        if self._too_many_fields:
            self._too_many_fields = False
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete and cycle.more_body:
                # A chunked body's trailers: its request cannot end, so the connection
                # does (the app reads that its client left).
                logger.info("a chunked body past %d trailer fields: closed", MAX_HEADER_FIELDS)
                self.transport.close()
                return
            self._refuse_head(f"a request past {MAX_HEADER_FIELDS} header fields")
            return
        super().send_400_response(msg)

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
        self._body_bytes = 0

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

    def _refuse_head(self, why: str = f"a request head past {MAX_HEAD_BYTES} bytes") -> None:
        """A head past MAX_HEAD_BYTES or MAX_HEADER_FIELDS: from now on what the client
        sends is read and dropped, and it is answered 431 once the requests before it
        (pipelined) are."""
        self._head_arrived()
        logger.info("%s: answered 431", why)
        self._dropping = LINGER_BYTES
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            self._refused_behind = True  # on_response_complete answers it
            return
        self._answer_head_too_large()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The refused head came after the last request parsed (self.cycle), and requests
        # are answered in order: once that one is answered, every one before it is.
        cycle = self.cycle
        if self._refused_behind and (cycle is None or cycle.response_complete):
            self._refused_behind = False
            self._answer_head_too_large()

    def _answer_head_too_large(self) -> None:
        """431, then our end of the stream. What the client still sends is read and
        dropped for a moment (at most LINGER_SECONDS and LINGER_BYTES) before the
        connection is closed: closed at once, the kernel would answer those bytes with
        a reset, and the client could lose the 431."""
        transport = self.transport
        if transport.is_closing() or self._writes is None:
            return
        self._writes.write(_head_too_large())
        self._writes.flush()
        if transport.can_write_eof():
            transport.write_eof()
        self._head_deadline = self.loop.call_later(LINGER_SECONDS, self._late)

    def _head_arrived(self) -> None:
        self._head_pending = False
        self._head_bytes = 0
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
