"""The shape of a GraphQL websocket message, checked before Strawberry reads it.

Strawberry's protocol handlers index a message as the protocol describes it, so
a message of another shape (an array, an ``id`` that is not a string, a payload
that is not an object, a ``query`` that is a number) raised inside them: the
socket was dropped without a close frame and a traceback was logged. The view
closes such a socket with 4400 and the reason from :func:`message_problem`, on
both protocols, as graphql-transport-ws does for the messages it checks itself.
"""

from __future__ import annotations

__all__ = ["message_problem"]

# Message types that name an operation: graphql-transport-ws, then legacy graphql-ws.
_WITH_ID = frozenset({"subscribe", "complete", "start", "stop"})
_STARTS = frozenset({"subscribe", "start"})


def message_problem(message: object) -> str | None:
    """What is wrong with the shape of ``message``, or None when Strawberry can read it."""
    if not isinstance(message, dict):
        return "WebSocket message must be a JSON object"
    kind = message.get("type")
    if not isinstance(kind, str):
        return "WebSocket message must have a string type"
    if ("id" in message or kind in _WITH_ID) and not isinstance(message.get("id"), str):
        return f"A {kind} message needs a string id"
    if kind in _STARTS:
        return _payload_problem(kind, message.get("payload"))
    return None


def _payload_problem(kind: str, payload: object) -> str | None:
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        return f"A {kind} message needs a payload with a query string"
    for name in ("variables", "extensions"):
        if payload.get(name) is not None and not isinstance(payload[name], dict):
            return f"The {name} of a {kind} message must be an object"
    operation = payload.get("operationName")
    if operation is not None and not isinstance(operation, str):
        return f"The operationName of a {kind} message must be a string"
    return None
