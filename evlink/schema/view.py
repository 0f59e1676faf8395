"""The GraphQL endpoint: HTTP and both websocket protocols, context from the request.

A browser's ``GET /graphql`` gets the self-hosted playground (:mod:`evlink.playground`)."""

from __future__ import annotations

import asyncio
from typing import Any

import strawberry
from cross_web import AsyncHTTPRequestAdapter, HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLRequestData
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import ConnectionInitMessage
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    ConnectionInitMessage as LegacyConnectionInitMessage,
)
from strawberry.types import ExecutionResult, SubscriptionExecutionResult
from strawberry.types.unset import UnsetType

from evlink.errors import DatabaseUnavailable, EvlinkError
from evlink.metrics import Metrics
from evlink.playground.page import playground_response
from evlink.ratelimit import client_address
from evlink.schema.context import Context
from evlink.schema.results import ResultCache, capturing, read_body
from evlink.server import OpenSockets, serve_until_closed
from evlink.services import Services

__all__ = ["GraphQLView"]

# A websocket whose key cannot be checked because the database is unavailable closes with
# 1011 (internal error) and a reason, on both protocols, rather than failing in ASGI.
_UNAVAILABLE = 1011


class _TransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        try:
            await super().handle_connection_init(message)
        except DatabaseUnavailable as unavailable:
            await self.websocket.close(_UNAVAILABLE, unavailable.message)


class _LegacyWSHandler(BaseGraphQLWSHandler[Context, None]):
    async def handle_connection_init(self, message: LegacyConnectionInitMessage) -> None:
        try:
            await super().handle_connection_init(message)
        except DatabaseUnavailable as unavailable:
            await self.websocket.close(_UNAVAILABLE, unavailable.message)


class GraphQLView(GraphQL[Context, None]):
    graphql_transport_ws_handler_class = _TransportWSHandler
    graphql_ws_handler_class = _LegacyWSHandler

    def __init__(self, schema: strawberry.Schema, **kwargs: Any) -> None:
        super().__init__(schema, **kwargs)
        self.results = ResultCache(schema._schema)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            await self._post(scope, receive, send)
            return
        if scope["type"] == "http":
            await self._http(scope, receive, send)
            return
        if scope["type"] != "websocket":
            await super().__call__(scope, receive, send)
            return
        app = scope["app"]
        open_sockets: OpenSockets = app.state.open_sockets
        metrics: Metrics = app.state.metrics
        metrics.websockets.inc()
        # The connection's user, once authenticated: counted against the per-user cap.
        scope[_OWNER] = owner = _SocketOwner()
        try:
            async with open_sockets.track() as closing:
                handler = asyncio.ensure_future(super().__call__(scope, receive, send))
                await serve_until_closed(handler, closing, send)
        finally:
            metrics.websockets.dec()
            if owner.user_id is not None:
                open_sockets.release_user(owner.user_id)

    async def _post(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A POST: answered from the read cache when it holds the answer (schema.results)."""
        services: Services = scope["app"].state.services
        if not services.cache.enabled:
            await self._http(scope, receive, send)
            return
        body, receive = await read_body(receive)
        found = await self.results.answer(scope, body, services.cache, services.limiter)
        if isinstance(found, Response):
            await found(scope, receive, send)
            return
        if found is None:
            await self._http(scope, receive, send)
            return
        scope[_PENDING] = found
        send, chunks, status = capturing(send)
        await self._http(scope, receive, send)
        if status:
            self.results.store(services.cache, found, status[0], b"".join(chunks))

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Strawberry's HTTP handling, with its refusals of a malformed request (no query,
        a body that is not JSON, a batch, an unsupported content type) answered as JSON
        in the GraphQL error shape rather than Strawberry's plain text."""
        try:
            response = await self.run(Request(scope=scope, receive=receive))
        except HTTPException as refused:
            response = request_error(refused.status_code, refused.reason)
        except DatabaseUnavailable as unavailable:  # 503 with Retry-After, in GraphQL's shape
            response = request_error(
                unavailable.status,
                unavailable.message,
                code=unavailable.code,
                headers=unavailable.headers(),
            )
        await response(scope, receive, send)

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        services: Services = request.app.state.services
        context = Context(
            services=services,
            authorization=request.headers.get("authorization"),
            socket_owner=request.scope.get(_OWNER),
            client=client_address(request),
            websocket=isinstance(request, WebSocket),
            pending=request.scope.get(_PENDING),
        )
        if not context.websocket and context.authorization:
            # Up front, so the operation can be charged (429) before it runs.
            await context.authenticate_now()
        return context

    async def execute_operation(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        request_data: GraphQLRequestData | list[GraphQLRequestData],
        context: Context,
        root_value: None,
        sub_response: Response,
    ) -> ExecutionResult | list[ExecutionResult] | SubscriptionExecutionResult:
        """Run the operation; answer 429 when :class:`~evlink.schema.quotas.OperationQuotas`
        refused it before it executed."""
        result = await super().execute_operation(
            request, request_adapter, request_data, context, root_value, sub_response
        )
        if context.refusal is not None:
            raise context.refusal  # the exception handlers answer 429 with Retry-After
        if isinstance(result, ExecutionResult) and _failed_on_database(result):
            raise DatabaseUnavailable()  # the whole answer is 503, not data with holes
        if context.authenticated and not context.charged:
            await context.charge(reads=False)  # it never executed (invalid): burst only
        pending = context.pending
        if (
            pending is not None
            and isinstance(result, ExecutionResult)
            and not result.errors
            and isinstance(request_data, GraphQLRequestData)
            and request_data.query is not None
            and context.authenticated
        ):
            pending.cacheable = self.results.document_cacheable(request_data.query)
        return result

    async def render_graphql_ide(self, request: Request) -> Response:
        """Strawberry's IDE page loads GraphiQL from a CDN: serve evlink's own instead."""
        return playground_response(request)

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, Any] | None:
        """Refuse a bad key before any operation runs (4403 / connection_error)."""
        try:
            user = await context.user()
        except DatabaseUnavailable:
            raise  # not the client's fault: the socket closes with 1011 (_UNAVAILABLE)
        except EvlinkError as exc:
            raise ConnectionRejectionError({"message": exc.message, "code": exc.code}) from None
        owner = context.socket_owner
        if isinstance(owner, _SocketOwner) and owner.user_id is None:
            services = context.services
            cap = services.settings.ws_max_connections_per_key
            if not services.open_sockets.acquire_user(user.id, cap):
                raise ConnectionRejectionError(
                    {"message": f"At most {cap} websockets per user", "code": "RATE_LIMITED"}
                )
            owner.user_id = user.id
        return None


def request_error(
    status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """``{"errors": [{"message", "extensions": {"code"}}]}`` for a request GraphQL refused
    before any operation ran, or that failed on the database (GraphQL over HTTP: a
    request error has no ``data``)."""
    code = code or _REQUEST_ERROR_CODES.get(status, "BAD_REQUEST")
    return JSONResponse(
        {"errors": [{"message": message, "extensions": {"code": code}}]},
        status_code=status,
        headers=headers,
    )


def _failed_on_database(result: ExecutionResult) -> bool:
    return any(
        (error.extensions or {}).get("code") == DatabaseUnavailable.code
        for error in result.errors or ()
    )


_REQUEST_ERROR_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}
_OWNER = "evlink.socket_owner"
_PENDING = "evlink.pending_result"


class _SocketOwner:
    """Whose websocket this is, set once its key is accepted."""

    user_id: int | None = None
