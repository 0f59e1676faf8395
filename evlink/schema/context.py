"""The GraphQL context: services, and the caller, authenticated once per operation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from strawberry.types import Info as StrawberryInfo

from evlink.models import User
from evlink.resolvers.auth import authenticate, key_from_authorization
from evlink.services import Services

__all__ = ["Context", "Info"]


@dataclass(eq=False)
class Context:
    services: Services
    authorization: str | None
    # The websocket's connection_init payload (strawberry sets it).
    connection_params: dict[str, Any] | None = None
    _user: User | None = field(default=None, repr=False)

    async def user(self) -> User:
        """The authenticated caller; UNAUTHENTICATED when the key is missing or bad."""
        if self._user is None:
            self._user = await authenticate(key_from_authorization(self.bearer()))
        return self._user

    def bearer(self) -> str | None:
        params = self.connection_params or {}
        for name in ("Authorization", "authorization"):
            value = params.get(name)
            if isinstance(value, str):
                return value
        return self.authorization


Info = StrawberryInfo[Context, None]
