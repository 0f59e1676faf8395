"""The GraphQL endpoint: HTTP and both websocket protocols, context from the request."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.types.unset import UnsetType

from evlink.errors import EvlinkError
from evlink.metrics import Metrics
from evlink.schema.context import Context
from evlink.server import OpenSockets, serve_until_closed
from evlink.services import Services

__all__ = ["GraphQLView"]


class GraphQLView(GraphQL[Context, None]):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await super().__call__(scope, receive, send)
            return
        app = scope["app"]
        open_sockets: OpenSockets = app.state.open_sockets
        metrics: Metrics = app.state.metrics
        metrics.websockets.inc()
        try:
            async with open_sockets.track() as closing:
                handler = asyncio.ensure_future(super().__call__(scope, receive, send))
                await serve_until_closed(handler, closing, send)
        finally:
            metrics.websockets.dec()

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        services: Services = request.app.state.services
        return Context(services=services, authorization=request.headers.get("authorization"))

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, Any] | None:
        """Refuse a bad key before any operation runs (4403 / connection_error)."""
        try:
            await context.user()
        except EvlinkError as exc:
            raise ConnectionRejectionError({"message": exc.message, "code": exc.code}) from None
        return None
