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
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.types import Send

from evlink.connections import PROTOCOL
from evlink.settings import Settings

__all__ = ["EvlinkServer", "OpenSockets", "proxy_options", "server_options", "tune_gc"]

logger = logging.getLogger(__name__)

GOING_AWAY = 1001
# Allocations between two young-generation collections (CPython's default: 700). With
# the default, a burst of subscription events (each delivery's objects in flight at once)
# keeps promoting objects, and full collections over every open websocket's objects
# stall the whole process: 300-700 ms with 1,000 subscribers (bench/README.md).
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect the young generation less often, so full collections stay rare."""
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)


class OpenSockets:
    """The open websockets of this instance, so that shutdown can close them properly."""

    def __init__(self) -> None:
        self._closing: dict[int, asyncio.Event] = {}
        self._empty = asyncio.Event()
        self._empty.set()
        self.shutting_down = False
        self._per_user: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._closing)

    def acquire_user(self, user_id: int, cap: int) -> bool:
        """Count one more websocket for ``user_id``; False (nothing counted) past ``cap``."""
        held = self._per_user.get(user_id, 0)
        if held >= cap:
            return False
        self._per_user[user_id] = held + 1
        return True

    def release_user(self, user_id: int) -> None:
        held = self._per_user.get(user_id, 0) - 1
        if held > 0:
            self._per_user[user_id] = held
        else:
            self._per_user.pop(user_id, None)

    @contextlib.asynccontextmanager
    async def track(self) -> AsyncIterator[asyncio.Event]:
        """Register one websocket; the event is set when it must close."""
        closing = asyncio.Event()
        if self.shutting_down:
            closing.set()
        key = id(closing)
        self._closing[key] = closing
        self._empty.clear()
        try:
            yield closing
        finally:
            del self._closing[key]
            if not self._closing:
                self._empty.set()

    async def close_all(self, timeout: float = 5.0) -> None:
        """Ask every websocket to close with 1001 and wait (bounded) until they have."""
        self.shutting_down = True
        for closing in self._closing.values():
            closing.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), timeout)


async def serve_until_closed(
    handler: asyncio.Future[None], closing: asyncio.Event, send: Send
) -> None:
    """Run a websocket handler until it ends or ``closing`` is set; then close with 1001."""
    closer: asyncio.Future[Any] = asyncio.ensure_future(closing.wait())
    waiting: set[asyncio.Future[Any]] = {handler, closer}
    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if handler in done:
        closer.cancel()
        handler.result()
        return
    handler.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await handler
    with contextlib.suppress(Exception):
        await send({"type": "websocket.close", "code": GOING_AWAY, "reason": "server going away"})


class EvlinkServer(uvicorn.Server):
    """uvicorn's server, closing websockets with 1001 before its own shutdown."""

    def __init__(self, config: uvicorn.Config, sockets_of_app: OpenSockets | None = None) -> None:
        super().__init__(config)
        self.open_sockets = sockets_of_app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting first
        open_sockets = self.open_sockets or _find_open_sockets(self.config)
        if open_sockets is not None and len(open_sockets):
            logger.info("closing %d websocket(s) with 1001", len(open_sockets))
            await open_sockets.close_all(timeout=self.config.timeout_graceful_shutdown or 5.0)
        await super().shutdown(sockets)


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
    the guarded HTTP protocol (:mod:`evlink.connections`), the websocket limits and
    whom to believe about forwarded addresses."""
    return {
        "http": PROTOCOL,
        "ws_max_size": settings.ws_max_message,
        "ws_per_message_deflate": settings.ws_compression,
        **proxy_options(settings),
    }


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's proxy options from the settings: ``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` are believed only from EVLINK_FORWARDED_ALLOW_IPS. uvicorn's own
    default believes them from 127.0.0.1, so that a local client could pick the address
    the failed-key limit counts (:func:`evlink.ratelimit.client_address`)."""
    if not settings.forwarded_allow_ips:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": settings.forwarded_allow_ips}
