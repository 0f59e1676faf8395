"""Rate limits per GraphQL operation (the policies are :mod:`evlink.ratelimit`'s).

Each operation of an authenticated caller is charged before it executes:
``burst`` for its key, and ``reads`` unless it is a mutation (a charging command
pays the ``commands`` quota in the use case, once it is sent). Over HTTP a
refusal becomes a 429 answer (:class:`evlink.schema.view.GraphQLView`); on a
websocket it is the operation's error, with ``extensions.code = RATE_LIMITED``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import strawberry
from strawberry.extensions import SchemaExtension
from strawberry.types.graphql import OperationType

from evlink.ratelimit import LimitState, QuotaExceeded
from evlink.schema.context import Context

__all__ = ["OperationQuotas", "Quota"]


class OperationQuotas(SchemaExtension):
    """Charges the operation once it is known valid (its type decides the quota)."""

    async def on_execute(self) -> AsyncIterator[None]:
        context = self.execution_context.context
        # An HTTP request is charged once; a socket's operations each are.
        if (
            isinstance(context, Context)
            and context.authenticated
            and (context.websocket or not context.charged)
        ):
            reads = self.execution_context.operation_type is not OperationType.MUTATION
            try:
                await context.charge(reads=reads)
            except QuotaExceeded as refused:
                if not context.websocket:
                    context.refusal = refused  # the view answers 429 with it
                raise
        yield


@strawberry.type(description="One of the caller's rate limits and what is left of it.")
class Quota:
    name: str = strawberry.field(
        description="burst (per API key), reads or commands (per user, by tier)."
    )
    limit: int = strawberry.field(description="Requests allowed per window.")
    window: int = strawberry.field(description="The window's length, seconds.")
    remaining: int
    reset_at: datetime | None = strawberry.field(
        description="When the open window closes; null while none is open (nothing spent)."
    )

    @classmethod
    def from_state(cls, state: LimitState) -> Quota:
        return cls(
            name=state.policy.name,
            limit=state.policy.limit,
            window=state.policy.window,
            remaining=state.remaining,
            reset_at=state.reset_datetime,
        )
