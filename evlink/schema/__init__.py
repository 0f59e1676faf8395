"""The Strawberry schema of evlink and the ASGI view that serves it."""

from __future__ import annotations

from datetime import datetime
from typing import cast

import strawberry
from strawberry.extensions import ParserCache, ValidationCache
from strawberry.types.scalar import ScalarWrapper

from evlink.schema.errors import ErrorCodes
from evlink.schema.query import Mutation, Query, Subscription
from evlink.schema.scalars import DateTime

__all__ = ["build_schema"]


def build_schema() -> strawberry.Schema:
    return strawberry.Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        scalar_overrides={datetime: cast(ScalarWrapper, DateTime)},
        extensions=[
            ErrorCodes,
            # Factories: the caches live at module level, shared by every request.
            lambda: ParserCache(maxsize=256),
            lambda: ValidationCache(maxsize=256),
        ],
    )
