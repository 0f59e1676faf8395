"""Scalars: ``DateTime`` as ISO 8601 UTC with ``Z``, the same text the REST API shows."""

from __future__ import annotations

from datetime import datetime

import strawberry
from graphql import GraphQLError
from strawberry.types.scalar import ScalarDefinition

from evlink.domain import format_timestamp, parse_timestamp

__all__ = ["SCALARS"]


def _parse(value: object) -> datetime:
    """A client's DateTime (a literal or a variable); anything else is the client's
    mistake (a GraphQLError: BAD_REQUEST), never an internal error."""
    parsed = parse_timestamp(value)
    if parsed is None:
        raise GraphQLError(
            f"DateTime cannot represent {str(value)[:40]!r}: expected an ISO 8601 timestamp"
            " in years 1 to 9999, such as 2025-05-20T15:48:12.933Z"
        )
    return parsed


SCALARS: dict[object, ScalarDefinition] = {
    datetime: strawberry.scalar(
        name="DateTime",
        serialize=format_timestamp,
        parse_value=_parse,
        description="An ISO 8601 timestamp in UTC, e.g. 2025-05-20T15:48:12.933Z",
    )
}
