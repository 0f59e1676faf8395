"""Serving evlink: uvicorn with a graceful shutdown that closes websockets with 1001.

On SIGTERM the server stops accepting, tells every open GraphQL websocket
"going away" (close code 1001, so clients reconnect elsewhere), lets in-flight
requests finish, then runs the app's lifespan shutdown (which releases the
command leases of this instance).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import uvicorn
from starlette.types import Send

from evlink.connections import PROTOCOL
from evlink.logs import configure_logging
from evlink.settings import Settings
from evlink.wsprotocol import websocket_protocol

__all__ = [
    "SERVER_SEND",
    "Admission",
    "EvlinkConfig",
    "EvlinkServer",
    "OpenSocket",
    "OpenSockets",
    "Watcher",
    "proxy_options",
    "server_options",
    "stop_waits",
    "tune_gc",
]

logger = logging.getLogger(__name__)

GOING_AWAY = 1001
# Scope key: a websocket's ASGI send as the server handed it to the app, before any
# middleware wrapped it (set by evlink.edge; evlink.schema.fanout writes through it).
SERVER_SEND = "evlink.server_send"
# Allocations between two young-generation collections (CPython's default: 700). With
# the default, a burst of subscription events (each delivery's objects in flight at once)
# keeps promoting objects, and full collections over every open websocket's objects
# stall the whole process: 300-700 ms with 1,000 subscribers (bench/README.md).
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect the young generation less often, so full collections stay rare."""
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)


@dataclass(frozen=True, slots=True)
class Admission:
    """Whom a websocket was admitted for: checked again while it is open
    (:mod:`evlink.revocation`)."""

    user_id: int
    key_hash: str  # the SHA-256 of its key, as stored
    tier: str  # the tier it runs under for its life


class OpenSocket:
    """One websocket of this instance: where it comes from, whom it was admitted for,
    and how it must close.

    ``pending`` until its ``connection_init`` arrives; then, once the key is accepted,
    :meth:`OpenSockets.admit` records its :class:`Admission`. Slotted, and without an
    event or a task of its own: an idle socket holds only what it needs (bench/README.md,
    memory per subscription).
    """

    __slots__ = (
        "_wake",
        "address",
        "admission",
        "close_code",
        "close_reason",
        "must_close",
        "pending",
        "watching",
    )

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.pending = True
        self.must_close = False
        self._wake: Callable[[], None] | None = None  # set by serve_until_closed
        self.close_code = GOING_AWAY
        self.close_reason = "server going away"
        self.admission: Admission | None = None
        # The subscriptions that follow a vehicle: ended when the user no longer owns it.
        self.watching: dict[UUID, set[Watcher]] = {}

    def close(self, code: int, reason: str) -> None:
        """Ask for the socket to close with ``code``."""
        self.close_code, self.close_reason = code, reason
        self._must_close()

    def _must_close(self) -> None:
        self.must_close = True
        if self._wake is not None:
            self._wake()

    def watch(self, vehicle_id: UUID, watcher: Watcher) -> _Watching:
        """While the ``with`` block runs, ``watcher`` is told if the user loses
        ``vehicle_id``."""
        return _Watching(self.watching, vehicle_id, watcher)


class _Watching:
    """:meth:`OpenSocket.watch`'s context manager, plain or async (a class: a
    generator-based one holds a suspended frame for each subscription's life)."""

    __slots__ = ("_vehicle_id", "_watcher", "_watching")

    def __init__(
        self, watching: dict[UUID, set[Watcher]], vehicle_id: UUID, watcher: Watcher
    ) -> None:
        self._watching, self._vehicle_id, self._watcher = watching, vehicle_id, watcher

    def __enter__(self) -> None:
        self._watching.setdefault(self._vehicle_id, set()).add(self._watcher)

    def __exit__(self, *exc: object) -> None:
        watchers = self._watching.get(self._vehicle_id)
        if watchers is not None:
            watchers.discard(self._watcher)
            if not watchers:
                del self._watching[self._vehicle_id]

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()


class Watcher(Protocol):
    """What follows a vehicle on a socket: an event subscription (evlink.events)."""

    def interrupt(self, reason: str, error: Exception | None = None) -> None: ...


class OpenSockets:
    """The open websockets of this instance: closed properly on shutdown, capped per user
    and, while they await ``connection_init``, per client address."""

    def __init__(self) -> None:
        self._open: set[OpenSocket] = set()
        self._empty = asyncio.Event()
        self._empty.set()
        # Set when the server starts shutting down: REST ``?wait`` answers at once
        # (evlink.resolvers.follow.wait_for_command), before uvicorn's graceful timeout.
        self.stopping = asyncio.Event()
        self._per_user: dict[int, set[OpenSocket]] = {}
        self._pending: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._open)

    @property
    def shutting_down(self) -> bool:
        return self.stopping.is_set()

    def __iter__(self) -> Iterator[OpenSocket]:
        return iter(tuple(self._open))

    def open(self, address: str | None, pending_cap: int) -> OpenSocket | None:
        """A new websocket awaiting ``connection_init``; None when ``address`` already has
        ``pending_cap`` of those (nothing counted)."""
        if address is not None:
            held = self._pending.get(address, 0)
            if held >= pending_cap:
                return None
            self._pending[address] = held + 1
        return OpenSocket(address)

    def initialised(self, ws: OpenSocket) -> None:
        """Its ``connection_init`` arrived: it no longer counts against its address."""
        if not ws.pending:
            return
        ws.pending = False
        if ws.address is not None:
            held = self._pending.get(ws.address, 0) - 1
            if held > 0:
                self._pending[ws.address] = held
            else:
                self._pending.pop(ws.address, None)

    def admit(self, ws: OpenSocket, admission: Admission, cap: int) -> bool:
        """Record whom ``ws`` is for; False (nothing recorded) when the user holds
        ``cap`` websockets already."""
        held = self._per_user.setdefault(admission.user_id, set())
        if len(held) >= cap:  # caps are 1 or more: ``held`` is not an empty leftover
            return False
        held.add(ws)
        ws.admission = admission
        return True

    def of_user(self, user_id: int) -> tuple[OpenSocket, ...]:
        return tuple(self._per_user.get(user_id, ()))

    @contextlib.asynccontextmanager
    async def track(self, ws: OpenSocket) -> AsyncIterator[OpenSocket]:
        """Hold ``ws`` open (it closes with 1001 on shutdown) until the block ends."""
        if self.shutting_down:
            ws._must_close()
        self._open.add(ws)
        self._empty.clear()
        try:
            yield ws
        finally:
            self._forget(ws)

    def _forget(self, ws: OpenSocket) -> None:
        self.initialised(ws)
        self._open.discard(ws)
        if ws.admission is not None:
            user_id = ws.admission.user_id
            held = self._per_user.get(user_id, set())
            held.discard(ws)
            if not held:
                self._per_user.pop(user_id, None)
        if not self._open:
            self._empty.set()

    async def close_all(self, timeout: float = 5.0) -> None:
        """Ask every websocket to close with 1001 and wait (bounded) until they have."""
        self.stopping.set()
        for ws in tuple(self._open):
            ws.close(GOING_AWAY, "server going away")
        await self.until_closed(timeout)

    async def until_closed(self, timeout: float) -> bool:
        """Wait until no websocket is open (each one's handler has ended, its
        subscriptions with it), for at most ``timeout`` seconds: whether none is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), timeout)
        return self._empty.is_set()


async def serve_until_closed(handler: asyncio.Future[None], ws: OpenSocket, send: Send) -> None:
    """Run a websocket handler until it ends or ``ws`` must close; then close it
    with the code asked for (1001 on shutdown). Waits on one future, woken by either."""
    woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake(_: object = None) -> None:
        if not woken.done():
            woken.set_result(None)

    handler.add_done_callback(wake)
    ws._wake = wake
    if ws.must_close:
        wake()
    try:
        await woken
    finally:
        ws._wake = None
        handler.remove_done_callback(wake)
    if handler.done():
        handler.result()
        return
    handler.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await handler
    with contextlib.suppress(Exception):
        await send({"type": "websocket.close", "code": ws.close_code, "reason": ws.close_reason})


class EvlinkServer(uvicorn.Server):
    """uvicorn's server, closing websockets with 1001 before its own shutdown."""

    def __init__(self, config: uvicorn.Config, sockets_of_app: OpenSockets | None = None) -> None:
        super().__init__(config)
        self.open_sockets = sockets_of_app

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # uvicorn says "Uvicorn running on …" only for sockets it bound itself; evlink
        # serve binds its own (to report a port in use in one line), and says it too.
        if sockets is not None and self.started:
            self._log_started_message(sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting first
        open_sockets = self.open_sockets or _find_open_sockets(self.config)
        if open_sockets is not None:
            open_sockets.stopping.set()  # ``?wait`` requests answer now
        if open_sockets is not None and len(open_sockets):
            logger.info("closing %d websocket(s) with 1001", len(open_sockets))
            await open_sockets.close_all(timeout=self.config.timeout_graceful_shutdown or 5.0)
        await super().shutdown(sockets)


class EvlinkConfig(uvicorn.Config):
    """uvicorn's config with evlink's logging (:mod:`evlink.logs`: format, level, request
    id, escaping, clients' mistakes at INFO) in place of uvicorn's own. uvicorn configures
    the logging of each ``--workers`` process from its config as the process starts: a
    worker logs as the single process does."""

    def __init__(self, app: Any, *, log_level: str, log_format: str, **options: Any) -> None:
        self.evlink_logging = (log_level, log_format)
        super().__init__(app, log_config=None, **options)

    def configure_logging(self) -> None:
        super().configure_logging()
        configure_logging(*self.evlink_logging)


def stop_waits(config: uvicorn.Config) -> None:
    """The server of ``config`` shuts down: end REST ``?wait`` waits at once, so that
    their answers go out within the graceful period (:attr:`OpenSockets.stopping`)."""
    open_sockets = _find_open_sockets(config)
    if open_sockets is not None:
        open_sockets.stopping.set()


def _find_open_sockets(config: uvicorn.Config) -> OpenSockets | None:
    app = getattr(config, "loaded_app", None)
    # uvicorn wraps the app in its own middleware; the Starlette app is inside.
    for _ in range(5):
        state = getattr(app, "state", None)
        found = getattr(state, "open_sockets", None) if state is not None else None
        if isinstance(found, OpenSockets):
            return found
        app = getattr(app, "app", None)
    return None


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options from the settings (``evlink serve``, the tests, the benchmarks):
    the guarded HTTP protocol (:mod:`evlink.connections`), the lighter websocket protocol
    (:mod:`evlink.wsprotocol`), the keep-alive, the websocket limits and whom to believe
    about forwarded addresses. No ``Server: uvicorn`` header: the answers do not name
    the software that serves them (one header less to write on every answer, too)."""
    return {
        "http": PROTOCOL,
        "server_header": False,
        "ws": websocket_protocol(),  # lighter per socket (evlink.wsprotocol)
        "timeout_keep_alive": settings.keepalive,
        "ws_max_size": settings.ws_max_message,
        "ws_per_message_deflate": settings.ws_compression,
        **proxy_options(settings),
    }


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's proxy options from the settings: ``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` are believed only from EVLINK_FORWARDED_ALLOW_IPS. uvicorn's own
    default believes them from 127.0.0.1, so that a local client could pick the address
    the failed-key limit counts (:func:`evlink.requestheaders.client_address`)."""
    if not settings.forwarded_allow_ips:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": settings.forwarded_allow_ips}
