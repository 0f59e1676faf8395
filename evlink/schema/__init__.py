"""The Strawberry schema of evlink and the ASGI view that serves it."""

from __future__ import annotations

from collections.abc import Callable

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    DisableIntrospection,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from evlink.schema.errors import ErrorCodes
from evlink.schema.fanout import SharedEventExecutor
from evlink.schema.limits import cost_rule, one_command_rule
from evlink.schema.query import Mutation, Query, Subscription
from evlink.schema.quotas import OperationQuotas
from evlink.schema.recheck import SocketRecheck
from evlink.schema.scalars import SCALARS
from evlink.settings import Settings

__all__ = ["build_schema"]


class Schema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Errors are logged where they are formatted (:func:`format_error`): only the
        unexpected ones, with the request id, and never a client's mistake."""

    @staticmethod
    def remove_field_suggestion(error: GraphQLError) -> None:
        """Production mode: no error suggests a name (field, argument, enum value), since
        suggestions would show the schema that disabled introspection hides."""
        if "Did you mean" in error.message:
            error.message = error.message.split("Did you mean")[0].strip()


def build_schema(settings: Settings | None = None) -> strawberry.Schema:
    """The schema with the limits of ``settings`` (defaults when None)."""
    settings = settings or Settings()
    # The rule classes are made once: ValidationCache is keyed by them, and classes made
    # afresh per request would miss it, so that every request validated again (bench/).
    rules = [
        *QueryDepthLimiter(max_depth=settings.graphql_max_depth).validation_rules,
        *MaxAliasesLimiter(max_alias_count=settings.graphql_max_aliases).validation_rules,
        cost_rule(settings.graphql_max_cost),
        one_command_rule(),
    ]
    extensions: list[type[SchemaExtension] | Callable[[], SchemaExtension]] = [
        ErrorCodes,
        lambda: MaxTokensLimiter(max_token_count=settings.graphql_max_tokens),
        # Factories: the caches live at module level, shared by every request.
        lambda: ParserCache(maxsize=256),
        lambda: AddValidationRules(rules),
        lambda: ValidationCache(maxsize=256),
        SocketRecheck,  # a websocket's key and tier, again for each operation
        OperationQuotas,  # charges each valid operation before it executes
    ]
    if not settings.graphql_introspection:
        extensions.append(DisableIntrospection)
    return Schema(
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
