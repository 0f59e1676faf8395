"""HTTP guards for every answer: body size limits (413) and security headers.

Checked by the HTTP edge (:class:`evlink.edge.HttpEdge`) around ``receive``, so that a
body too large is refused while it is read, before any endpoint parses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from evlink.compat_rest.errors import error_answer
from evlink.errors import PayloadTooLarge
from evlink.requestheaders import raw_header

__all__ = ["BodyLimit", "BodyLimits", "with_security_headers"]

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# JSON answers load nothing and may be framed by nobody; HTML pages set their own policy.
JSON_POLICY = "default-src 'none'; frame-ancestors 'none'"


class BodyLimits:
    """Request bodies over ``limit`` bytes (per-path ``overrides``) are refused with 413:
    at once when the declared ``Content-Length`` is over, else while the body is read.
    Applied by :class:`evlink.edge.HttpEdge` (or, behind CORS, by :class:`BodyLimit`)."""

    def __init__(self, limit: int, overrides: Mapping[str, int]) -> None:
        self.limit = limit
        self.overrides = dict(overrides)

    def of(self, scope: Scope) -> int | None:
        """The limit of this request's body; None when its declared length is over."""
        limit = self.overrides.get(scope["path"], self.limit)
        declared = raw_header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return None
        return limit

    @staticmethod
    def counting(receive: Receive, limit: int) -> Receive:
        """``receive`` that raises :class:`PayloadTooLarge` once the body passes ``limit``."""
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge()
            return message

        return limited_receive


class BodyLimit:
    """:class:`BodyLimits` as its own ASGI layer: used only when CORS sits between the
    edge and the app, so that a 413 passes through CORS as every other answer does."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.of(scope)
        if limit is None:
            await error_answer(scope, PayloadTooLarge())(scope, receive, send)
            return
        await self.app(scope, BodyLimits.counting(receive, limit), send)


_RAW_HEADERS = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]
_RAW_JSON_HEADERS = [
    (b"content-security-policy", JSON_POLICY.encode()),
    (b"cache-control", b"no-store"),
]
_ALL_RAW_HEADERS = _RAW_HEADERS + _RAW_JSON_HEADERS
_OWN_NAMES = frozenset(name for name, _ in _ALL_RAW_HEADERS)


def with_security_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` and each security header the answer does not set itself."""
    answer = list(headers)
    is_json = False
    set_here: list[bytes] = []  # security headers the answer sets itself: rare
    for name, value in answer:
        name = name.lower()
        if name == b"content-type":
            is_json = value.startswith(b"application/json")
        elif name in _OWN_NAMES:
            set_here.append(name)
    wanted = _ALL_RAW_HEADERS if is_json else _RAW_HEADERS
    if set_here:
        wanted = [header for header in wanted if header[0] not in set_here]
    answer += wanted
    return answer
