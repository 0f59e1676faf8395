"""A request id for every HTTP request and websocket: logged, and echoed in ``X-Request-ID``
(by :class:`evlink.edge.HttpEdge`, which sets :data:`request_id_var`)."""

from __future__ import annotations

import contextvars
import os
import random
import re

from starlette.types import Scope

from evlink.requestheaders import header

__all__ = ["current_request_id", "given_request_id", "new_request_id", "request_id_var"]

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# A client's own id is kept only when it is short and plain, so it cannot forge log lines.
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Ids need to be unique, not secret: 128 bits of a PRNG seeded from the OS, reseeded in a
# forked child (uuid4 would read the OS's random source on every request).
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_request_id() -> str:
    """32 hexadecimal digits, as a UUID's."""
    return f"{_ids.getrandbits(128):032x}"


def given_request_id(scope: Scope) -> str | None:
    """The client's ``X-Request-ID``, when it is short and plain."""
    given = header(scope, b"x-request-id")
    return given if given is not None and _SAFE_ID.fullmatch(given) else None


def current_request_id() -> str:
    return request_id_var.get()
