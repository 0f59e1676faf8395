"""The Strawberry schema of evlink and the ASGI view that serves it."""

from __future__ import annotations

from collections.abc import Callable

import strawberry
from graphql import GraphQLError
from graphql.validation import ASTValidationRule
from strawberry.extensions import (
    AddValidationRules,
    DisableIntrospection,
    MaxTokensLimiter,
    SchemaExtension,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from evlink.schema.errors import ErrorCodes, without_schema_names
from evlink.schema.fanout import SharedEventExecutor
from evlink.schema.limits import Limits, ValidDocuments, document_limits, one_command_rule
from evlink.schema.query import Mutation, Query, Subscription
from evlink.schema.quotas import OperationQuotas
from evlink.schema.recheck import SocketRecheck
from evlink.schema.scalars import SCALARS
from evlink.settings import Settings

__all__ = ["build_schema"]


class Schema(strawberry.Schema):
    # The valid documents kept parsed (schema.limits), shown in /metrics.
    documents: ValidDocuments

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Errors are logged where they are formatted (:func:`format_error`): only the
        unexpected ones, with the request id, and never a client's mistake."""

    @staticmethod
    def remove_field_suggestion(error: GraphQLError) -> None:
        """Production mode: no error suggests a name (field, argument, enum value) or names
        an argument or type the client did not write (:func:`without_schema_names`), since
        either would show the schema that disabled introspection hides."""
        error.message = without_schema_names(error.message)


def build_schema(settings: Settings | None = None) -> Schema:
    """The schema with the limits of ``settings`` (defaults when None)."""
    settings = settings or Settings()
    # The rule classes are made once: validation results are cached by them, and classes
    # made afresh per request would miss the cache, so that every request validated again.
    rules: list[type[ASTValidationRule]] = [one_command_rule()]
    limits = Limits(
        max_depth=settings.graphql_max_depth,
        max_aliases=settings.graphql_max_aliases,
        max_cost=settings.graphql_max_cost,
        max_spreads=settings.graphql_max_spreads,
    )
    documents = ValidDocuments()
    extensions: list[type[SchemaExtension] | Callable[[], SchemaExtension]] = [
        ErrorCodes,
        lambda: MaxTokensLimiter(max_token_count=settings.graphql_max_tokens),
        lambda: AddValidationRules(rules),
        # Parsing and validation: the document's limits in linear time, then GraphQL's
        # rules; valid documents kept by their text (bounded), invalid ones never.
        document_limits(limits, documents),
        SocketRecheck,  # a websocket's key and tier, again for each operation
        OperationQuotas,  # charges each valid operation before it executes
    ]
    if not settings.introspection:
        extensions.append(DisableIntrospection)
    schema = Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        config=StrawberryConfig(
            scalar_map=SCALARS,
            disable_field_suggestions=settings.environment == "production",
        ),
        extensions=extensions,
        execution_context_class=SharedEventExecutor,
    )
    schema.documents = documents
    return schema
