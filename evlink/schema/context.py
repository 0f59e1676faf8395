"""The GraphQL context: services, and the caller, authenticated once per request or socket.

Over HTTP a request with ``Authorization`` is authenticated up front (so that it
can be charged to its rate limits before it runs); one without stays lazy, so
introspection and the playground need no key and fields answer UNAUTHENTICATED.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from strawberry.types import Info as StrawberryInfo

from evlink import ratelimit
from evlink.errors import RateLimited, Unauthenticated
from evlink.models import User, Vehicle
from evlink.resolvers import vehicles
from evlink.schema.results import PendingResult
from evlink.services import Services

__all__ = ["Context", "Info"]


@dataclass(eq=False)
class Context:
    services: Services
    authorization: str | None
    # The websocket's connection_init payload (strawberry sets it).
    connection_params: dict[str, Any] | None = None
    # For a websocket: who holds it, counted against the per-user cap (schema.view).
    socket_owner: object | None = None
    # The client's address: failed authentication is limited per address.
    client: str | None = None
    websocket: bool = False
    # The caller's key in the rate-limit counters (ratelimit.key_id), once authenticated.
    key_id: str | None = None
    # HTTP: the request was charged to its rate limits (once; a socket's operations each are).
    charged: bool = False
    # HTTP: the operation was refused before it ran; the view answers 429 with this.
    refusal: RateLimited | None = None
    # HTTP: the query's answer may go to the read cache; the resolvers note what it shows.
    pending: PendingResult | None = None
    _user: User | None = field(default=None, repr=False)
    _refused: bool = field(default=False, repr=False)

    async def user(self) -> User:
        """The authenticated caller; UNAUTHENTICATED when the key is missing or bad.

        A refusal is remembered: each field asking again costs no lookup and no
        second count against the address's failure limit.
        """
        if self._user is None:
            if self._refused:
                raise Unauthenticated()
            try:
                self._user, self.key_id = await ratelimit.authenticate(
                    self.services.limiter, self.bearer(), self.client, self.services.cache
                )
            except Unauthenticated:
                self._refused = True
                raise
        return self._user

    @property
    def authenticated(self) -> bool:
        return self._user is not None

    async def authenticate_now(self) -> None:
        """Check a given key before the operation runs; a bad one is raised lazily by
        :meth:`user`, only an address past its failure limit raises here (429)."""
        with contextlib.suppress(Unauthenticated):
            await self.user()

    async def charge(self, *, reads: bool) -> None:
        """Charge one operation of the authenticated caller (429 RATE_LIMITED past a limit)."""
        limiter = self.services.limiter
        if limiter is None or self._user is None or self.key_id is None:
            return
        self.charged = True
        await limiter.admit(self._user, self.key_id, reads=reads)

    def showing(self, vehicle: Vehicle) -> None:
        """The answer shows ``vehicle``: a cached answer goes stale with it."""
        if self.pending is not None:
            self.pending.read_vehicle(vehicle.id, vehicles.fresh_for(self.services, vehicle))

    def bearer(self) -> str | None:
        params = self.connection_params or {}
        for name in ("Authorization", "authorization"):
            value = params.get(name)
            if isinstance(value, str):
                return value
        return self.authorization


Info = StrawberryInfo[Context, None]
