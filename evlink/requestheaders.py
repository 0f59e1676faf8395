"""Reading a request's headers straight from its ASGI scope, and the client's address.

Starlette's ``Headers`` copies the whole list on each use; the paths that run on
every request (the edge, authentication, the body limit, the GraphQL result cache)
look up one header by its lower-case name instead. (The headers evlink writes are
elsewhere: security headers in :mod:`evlink.guards`, RateLimit headers in
:mod:`evlink.ratelimit`.)
"""

from __future__ import annotations

from starlette.requests import HTTPConnection
from starlette.types import Scope

__all__ = ["client_address", "header", "media_type", "raw_header"]


def raw_header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case, as ASGI servers give names)."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def header(scope: Scope, name: bytes) -> str | None:
    """:func:`raw_header`, decoded as HTTP header values are (latin-1)."""
    value = raw_header(scope, name)
    return None if value is None else value.decode("latin-1")


def media_type(scope: Scope) -> str:
    """The request's ``Content-Type`` without its parameters, lower-case ("" for none)."""
    return (header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()


def client_address(connection: HTTPConnection) -> str | None:
    """The client's address as the server sees it: the connection's peer, or the address a
    proxy in EVLINK_FORWARDED_ALLOW_IPS forwarded in ``X-Forwarded-For`` (uvicorn applies
    it; :func:`evlink.server.proxy_options`)."""
    client = connection.scope.get("client")
    return str(client[0]) if client else None
