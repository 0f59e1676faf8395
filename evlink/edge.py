"""The HTTP edge: what every answer passes through, in one pure ASGI layer.

For each HTTP request, in this order around the app:

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

One layer rather than five: each layer of pure ASGI middleware wraps ``send`` once
more, and on a cached status read the wrappers cost as much as the endpoint
(bench/README.md). A websocket only gets its request id.
"""

from __future__ import annotations

import logging
import time

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from evlink.compat_rest.errors import error_answer
from evlink.errors import EvlinkError, InternalError
from evlink.guards import with_security_headers
from evlink.metrics import Metrics
from evlink.ratelimit import LimitState, limit_field, policy_field, reported_limits
from evlink.requestid import given_request_id, new_request_id, request_id_var
from evlink.server import SERVER_SEND

__all__ = ["HttpEdge"]

logger = logging.getLogger(__name__)
CLIENT_CLOSED = 499  # the status counted for a request whose client left before its answer
access_log = logging.getLogger("evlink.access")


class HttpEdge:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

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
                headers = with_security_headers(message.get("headers", ()))
                headers.append(id_header)
                if limits:
                    headers.append((b"ratelimit-policy", policy_field(limits).encode()))
                    headers.append((b"ratelimit", limit_field(limits).encode()))
                message["headers"] = headers
            await send(message)

        id_token = request_id_var.set(request_id)
        limits_token = reported_limits.set(limits)
        try:
            await self.app(scope, receive, edge_send)
        except ClientDisconnect:
            logger.info(
                "request %s %s: the client left before its body was in", request_id, scope["path"]
            )
            status = status or CLIENT_CLOSED
        except EvlinkError as exc:  # raised outside an endpoint (a body over its limit)
            if status:
                raise
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
