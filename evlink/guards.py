"""HTTP guards for every answer: body size limits (413) and security headers.

Pure ASGI middleware, so that a body too large is refused while it is read,
before any endpoint parses it.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from evlink.compat_rest.errors import error_response
from evlink.errors import PayloadTooLarge

__all__ = ["BodyLimit", "SecurityHeaders"]

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# JSON answers load nothing and may be framed by nobody; HTML pages set their own policy.
JSON_POLICY = "default-src 'none'; frame-ancestors 'none'"


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes (per-path overrides) with 413."""

    def __init__(self, app: ASGIApp, limit: int, overrides: Mapping[str, int]) -> None:
        self.app = app
        self.limit = limit
        self.overrides = dict(overrides)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.overrides.get(scope["path"], self.limit)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(PayloadTooLarge())(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge()
            return message

        await self.app(scope, limited_receive, send)


class SecurityHeaders:
    """Adds the security headers (and a strict policy on JSON) to every HTTP answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if headers.get("content-type", "").startswith("application/json"):
                    headers.setdefault("Content-Security-Policy", JSON_POLICY)
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)
