"""HTTP guards for every answer: body size limits (413) and security headers.

Pure ASGI middleware, so that a body too large is refused while it is read,
before any endpoint parses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from evlink.compat_rest.errors import error_answer
from evlink.errors import PayloadTooLarge
from evlink.requestheaders import raw_header

__all__ = ["BodyLimit", "with_security_headers"]

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
        declared = raw_header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_answer(scope, PayloadTooLarge())(scope, receive, send)
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


_RAW_HEADERS = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]
_RAW_JSON_HEADERS = [
    (b"content-security-policy", JSON_POLICY.encode()),
    (b"cache-control", b"no-store"),
]


def with_security_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` and each security header the answer does not set itself."""
    answer = list(headers)
    present = set()
    is_json = False
    for name, value in answer:
        name = name.lower()
        present.add(name)
        if name == b"content-type":
            is_json = value.startswith(b"application/json")
    wanted = _RAW_HEADERS + _RAW_JSON_HEADERS if is_json else _RAW_HEADERS
    answer.extend(header for header in wanted if header[0] not in present)
    return answer
