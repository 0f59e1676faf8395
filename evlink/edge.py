"""The HTTP edge: what every answer passes through, in one pure ASGI layer.

For each HTTP request, in this order around the app:

- a body over its limit refused with 413 (:class:`evlink.guards.BodyLimits`: at once
  for a declared ``Content-Length`` over it, else while the body is read), unless
  CORS sits between the edge and the app (then :class:`evlink.guards.BodyLimit`
  does it behind CORS);
- a request id (the client's ``X-Request-ID`` when it is short and plain, else a
  new one), set for the logs and echoed in ``X-Request-ID``;
- the rate limits charged while it is handled, told in ``RateLimit-Policy`` and
  ``RateLimit`` (:mod:`evlink.ratelimit` reports them here);
- the security headers (:func:`evlink.guards.with_security_headers`);
- an exception that escaped the app (a body over its limit, a bug) answered with
  the error table's JSON: the masked 500 for anything unexpected, logged with the
  request id; a client that left before its body was in (``ClientDisconnect``,
  wherever the body is read) is nobody's error: logged at INFO, answered to no one,
  counted as 499 (nginx's "client closed request");
- the request counted and timed in the metrics, and one access-log line.

One layer rather than six: each layer of pure ASGI middleware wraps ``send`` once
more, and on a cached status read the wrappers cost as much as the endpoint
(bench/README.md). A websocket only gets its request id.

:class:`EdgeApp` is Starlette with this edge where Starlette's two layers of its own
were: ``ServerErrorMiddleware`` outside every middleware (the edge answers what
escapes the app, as that layer did) and ``ExceptionMiddleware`` inside them, whose
work :class:`Handlers` does without a ``send`` wrapper of its own.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from evlink.compat_rest.errors import error_answer
from evlink.errors import EvlinkError, InternalError, PayloadTooLarge
from evlink.guards import BodyLimits, with_security_headers
from evlink.metrics import Metrics
from evlink.ratelimit import LimitState, limit_field, policy_field, reported_limits
from evlink.requestid import given_request_id, new_request_id, request_id_var
from evlink.server import SERVER_SEND

__all__ = ["DirectEndpoint", "EdgeApp", "Handlers", "HttpEdge", "direct_routes"]

logger = logging.getLogger(__name__)
CLIENT_CLOSED = 499  # the status counted for a request whose client left before its answer
access_log = logging.getLogger("evlink.access")
# Set in an HTTP request's scope by the edge once its answer has begun (Handlers reads it).
RESPONSE_STARTED = "evlink.response_started"


class HttpEdge:
    def __init__(
        self, app: ASGIApp, metrics: Metrics, body_limits: BodyLimits | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.body_limits = body_limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            scope[SERVER_SEND] = send  # the server's own: forwarded events write to it
            token = request_id_var.set(given_request_id(scope) or new_request_id())
            try:
                await self.app(scope, receive, send)
            finally:
                request_id_var.reset(token)
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        request_id = given_request_id(scope) or new_request_id()
        id_header = (b"x-request-id", request_id.encode("latin-1"))
        limits: list[LimitState] = []
        status = 0

        async def edge_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                scope[RESPONSE_STARTED] = True
                headers = with_security_headers(message.get("headers", ()))
                headers.append(id_header)
                if limits:
                    headers.append((b"ratelimit-policy", policy_field(limits)))
                    headers.append((b"ratelimit", limit_field(limits)))
                message["headers"] = headers
            await send(message)

        id_token = request_id_var.set(request_id)
        limits_token = reported_limits.set(limits)
        try:
            body_limits = self.body_limits
            if body_limits is not None:
                limit = body_limits.of(scope)
                if limit is None:
                    raise PayloadTooLarge()
                receive = BodyLimits.counting(receive, limit)
            await self.app(scope, receive, edge_send)
        except ClientDisconnect:
            logger.info(
                "request %s %s: the client left before its body was in", request_id, scope["path"]
            )
            status = status or CLIENT_CLOSED
        except EvlinkError as exc:  # raised outside an endpoint (a body over its limit)
            if status:
                raise
            if "route" not in scope:  # refused before routing: counted under its route
                _note_route(scope)
            await error_answer(scope, exc)(scope, receive, edge_send)
        except Exception:
            logger.exception("request %s %s: unexpected error", request_id, scope["path"])
            if status:
                raise
            await error_answer(scope, InternalError())(scope, receive, edge_send)
        finally:
            elapsed = time.perf_counter() - started
            method, answered = scope["method"], status or 500
            self.metrics.observe_request(scope, method, answered, elapsed)
            access_log.info("%s %s %d %.1f ms", method, scope["path"], answered, elapsed * 1000)
            reported_limits.reset(limits_token)
            request_id_var.reset(id_token)


def _note_route(scope: Scope) -> None:
    """Note in ``scope`` the route the app's router would take for it (as the router
    itself does), for the metrics of a request refused before it got there."""
    router = getattr(scope.get("app"), "router", None)
    for route in getattr(router, "routes", ()):
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            scope["route"] = route
            return


class DirectEndpoint:
    """An ``async def endpoint(request) -> Response`` as a plain ASGI app.

    Starlette wraps a function endpoint in a second exception handler of its own per
    route (another ``send`` wrapper and two closures per request); an ASGI endpoint it
    calls as it is. What that handler did is done the same one layer out, by
    :class:`Handlers` with the same handlers and the same scope, so the answers are the
    same (tests/test_edge.py)."""

    def __init__(self, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self.endpoint = endpoint
        self.__doc__ = endpoint.__doc__

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.endpoint(Request(scope, receive, send))
        await response(scope, receive, send)


def direct_routes(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """``routes``, each ``Route`` of a coroutine function served through a
    :class:`DirectEndpoint` (same path, methods and name); the others as they are."""
    direct: list[BaseRoute] = []
    for route in routes:
        if type(route) is Route and inspect.iscoroutinefunction(route.endpoint):
            methods = None if route.methods is None else sorted(route.methods - {"HEAD"})
            route = Route(
                route.path,
                DirectEndpoint(route.endpoint),
                methods=methods,
                name=route.name,
                include_in_schema=route.include_in_schema,
            )
        direct.append(route)
    return direct


class Handlers(ExceptionMiddleware):
    """Starlette's ``ExceptionMiddleware`` (the same handler tables, filled the same way)
    without its per-request ``Request``, closures and ``send`` wrapper: an exception
    that reaches it is answered by its handler unless the answer has begun, which the
    edge notes in the scope (:data:`RESPONSE_STARTED`); then it goes on to the edge.

    A route's own wrapper (``Route`` of a function endpoint, ``WebSocketRoute``) finds
    no handlers in the scope and lets the exception come here, where the same handler
    answers it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            kind = scope["type"]
            if kind not in ("http", "websocket"):
                raise
            handler = self._handler(exc)
            if handler is None:
                raise
            if scope.get(RESPONSE_STARTED):
                raise RuntimeError(
                    "Caught handled exception, but response already started."
                ) from exc
            conn = (
                Request(scope, receive, send) if kind == "http" else WebSocket(scope, receive, send)
            )
            if inspect.iscoroutinefunction(handler):
                response = await handler(conn, exc)
            else:
                response = await run_in_threadpool(handler, conn, exc)
            if response is not None:
                await response(scope, receive, send)
            exc.__traceback__ = None  # a reused exception would keep every traceback

    def _handler(self, exc: Exception) -> Callable[..., Any] | None:
        for cls in type(exc).__mro__:
            handler = self._exception_handlers.get(cls)
            if handler is not None:
                return handler
        return None


def _is_handled_class(key: object) -> bool:
    return isinstance(key, type) and issubclass(key, Exception) and key is not Exception


class EdgeApp(Starlette):
    """Starlette whose middleware stack is its own middleware (the edge outermost, see
    ``evlink.app``) around :class:`Handlers` around the router: no
    ``ServerErrorMiddleware``, whose work the edge does. Refused: a handler for
    ``Exception`` (that layer's), a handler by status code (evlink's handlers are by
    exception class) and Starlette's ``max_body_size`` (the edge's body limits)."""

    def build_middleware_stack(self) -> ASGIApp:
        refused = [key for key in self.exception_handlers if not _is_handled_class(key)]
        if refused or getattr(self, "max_body_size", None) is not None:
            raise TypeError(f"EdgeApp: handlers by exception class only, no body limit ({refused})")
        app: ASGIApp = Handlers(self.router, handlers=self.exception_handlers, debug=self.debug)
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app
