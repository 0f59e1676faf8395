"""The Strawberry schema of evlink and the ASGI view that serves it."""

from __future__ import annotations

import strawberry
from graphql import GraphQLError
from strawberry.extensions import ParserCache, ValidationCache
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from evlink.schema.errors import ErrorCodes
from evlink.schema.query import Mutation, Query, Subscription
from evlink.schema.scalars import SCALARS

__all__ = ["build_schema"]


class Schema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Errors are logged where they are formatted (:func:`format_error`): only the
        unexpected ones, with the request id, and never a client's mistake."""


def build_schema() -> strawberry.Schema:
    return Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        config=StrawberryConfig(scalar_map=SCALARS),
        extensions=[
            ErrorCodes,
            # Factories: the caches live at module level, shared by every request.
            lambda: ParserCache(maxsize=256),
            lambda: ValidationCache(maxsize=256),
        ],
    )
