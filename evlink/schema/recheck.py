"""Each operation on a websocket checks its key and tier again, as an HTTP request would.

The socket was admitted once, on ``connection_init``; a key revoked or a tier
changed since then refuses the operation (UNAUTHENTICATED, FORBIDDEN_TIER) before
it is charged or runs (:meth:`evlink.schema.context.Context.recheck`). The socket
itself is closed by :mod:`evlink.revocation`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from strawberry.extensions import SchemaExtension

from evlink.schema.context import Context

__all__ = ["SocketRecheck"]


class SocketRecheck(SchemaExtension):
    """Refuses a socket's operation whose key or tier no longer holds."""

    async def on_execute(self) -> AsyncIterator[None]:
        context = self.execution_context.context
        if isinstance(context, Context) and context.websocket:
            await context.recheck()
        yield
