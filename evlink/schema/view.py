"""The GraphQL endpoint: HTTP and both websocket protocols, context from the request."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.types.unset import UnsetType

from evlink.errors import EvlinkError
from evlink.schema.context import Context
from evlink.services import Services

__all__ = ["GraphQLView"]


class GraphQLView(GraphQL[Context, None]):
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
