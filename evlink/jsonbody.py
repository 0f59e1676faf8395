"""JSON sent by clients: parsed with a nesting limit.

A body nested deeper than :data:`MAX_DEPTH` arrays and objects is refused with
:class:`NestedTooDeep`, whether Python's parser gives up on it (a
``RecursionError`` some 900 levels down, depending on the stack) or parses it
(what is parsed is then handed to code that recurses too). Every JSON body and
websocket message evlink reads from a client goes through :func:`loads`: the
GraphQL view (HTTP bodies, ``variables`` in a query string, websocket
messages), the REST charging body and the webhook body.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_DEPTH", "NestedTooDeep", "NumberTooLong", "Refused", "loads"]

# Levels of arrays and objects. evlink's deepest documents (Enode's webhook events)
# are six levels deep.
MAX_DEPTH = 32


class Refused(json.JSONDecodeError):
    """JSON that Python could parse but evlink refuses, with a message that says why. A
    ``JSONDecodeError``, so every caller that refuses malformed JSON refuses this too."""


class NestedTooDeep(Refused):
    """JSON nested deeper than :data:`MAX_DEPTH`."""

    def __init__(self) -> None:
        super().__init__(f"JSON nested deeper than {MAX_DEPTH} levels", "", 0)


class NumberTooLong(Refused):
    """An integer of more than 4,300 digits, which Python refuses to convert."""

    def __init__(self) -> None:
        super().__init__("A number in the JSON is too long", "", 0)


def loads(document: str | bytes) -> Any:
    """``json.loads``, refusing a document nested deeper than :data:`MAX_DEPTH`. Bytes
    that are not text (UTF-8, -16 or -32) raise ``JSONDecodeError`` like any other
    document that is not JSON."""
    try:
        value = json.loads(document)
    except RecursionError:
        raise NestedTooDeep() from None
    except UnicodeDecodeError:
        raise json.JSONDecodeError("The JSON is not UTF-8, UTF-16 or UTF-32 text", "", 0) from None
    except json.JSONDecodeError:
        raise
    except ValueError:  # Python refuses to convert an integer of more than 4,300 digits
        raise NumberTooLong() from None
    if _deeper_than(value, MAX_DEPTH):
        raise NestedTooDeep()
    return value


def _deeper_than(value: object, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` levels, walked a level at a time
    (no recursion; the walk stops at the first level past the limit)."""
    level: list[Any] = [value] if type(value) in _CONTAINERS else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        inner: list[Any] = []
        for container in level:
            items = container.values() if type(container) is dict else container
            inner += [item for item in items if type(item) in _CONTAINERS]
        level = inner
    return False


_CONTAINERS = (dict, list)  # what json.loads makes of arrays and objects, exactly
