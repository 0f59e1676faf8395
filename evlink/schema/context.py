"""The GraphQL context: services, and the caller, authenticated per request or operation.

Every authentication is :func:`evlink.resolvers.auth.authenticate_request`.
Over HTTP a request with ``Authorization`` is authenticated up front (so that it
can be charged to its rate limits before it runs), once: by the view when the
answer cache is asked first (its outcome handed on, :meth:`Context.adopt`), else
here; one without stays lazy, so introspection and the playground need no key
and fields answer UNAUTHENTICATED. A websocket is authenticated on
``connection_init``, and each of its operations again (:meth:`Context.recheck`),
as an HTTP request would be.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from strawberry.types import Info as StrawberryInfo

from evlink.errors import EvlinkError, ForbiddenTier, RateLimited, Unauthenticated
from evlink.models import User
from evlink.models.vehicles import AnyVehicle
from evlink.resolvers import vehicles
from evlink.resolvers.auth import Caller, authenticate_request
from evlink.schema.results import PendingResult
from evlink.server import OpenSocket, Watcher
from evlink.services import Services

__all__ = ["Context", "Info"]


@dataclass(eq=False)
class Context:
    services: Services
    authorization: str | None
    # The websocket's connection_init payload (strawberry sets it).
    connection_params: dict[str, Any] | None = None
    # For a websocket: the socket, whom it was admitted for (schema.view, evlink.revocation).
    open_socket: OpenSocket | None = None
    # The client's address: failed authentication is limited per address.
    client: str | None = None
    websocket: bool = False
    # The caller and its key, once authenticated.
    caller: Caller | None = None
    # HTTP: the request was charged to its rate limits (once; a socket's operations each are).
    charged: bool = False
    # HTTP: the operation was refused before it ran; the view answers 429 with this.
    refusal: RateLimited | None = None
    # HTTP: the query's answer may go to the read cache; the resolvers note what it shows.
    pending: PendingResult | None = None
    # HTTP: the key's lookup, when it read the asked vehicle too (a known query's
    # ``vehicle(id:)``: schema.view); the resolver takes the row (vehicles.StatusRead).
    along: vehicles.StatusRead | None = None
    _refused: bool = field(default=False, repr=False)
    # The Authorization the caller was accepted with: a socket's operations are checked
    # against it, whatever a later connection_init says.
    _accepted: str | None = field(default=None, repr=False)

    async def user(self) -> User:
        """The authenticated caller's user; UNAUTHENTICATED when the key is missing or bad."""
        return (await self.identify()).user

    async def identify(self) -> Caller:
        """The authenticated caller; UNAUTHENTICATED when the key is missing or bad.

        A refusal is remembered: each field asking again costs no lookup and no
        second count against the address's failure limit.
        """
        if self.caller is None:
            if self._refused:
                raise Unauthenticated()
            bearer = self.bearer()
            try:
                self.caller = await authenticate_request(self.services, bearer, self.client)
            except Unauthenticated:
                self._refused = True
                raise
            self._accepted = bearer
        return self.caller

    def adopt(self, outcome: Caller | EvlinkError) -> None:
        """Take the outcome of this request's authentication, done before the context
        was made (the answer cache's path): a refusal is raised as :meth:`user` would
        raise it, without a second lookup or a second count against the address."""
        if isinstance(outcome, Caller):
            self.caller, self._accepted = outcome, self.authorization
        elif isinstance(outcome, Unauthenticated):
            self._refused = True
        else:
            raise outcome

    async def recheck(self) -> None:
        """Check a websocket's key and its user's tier again before an operation, as an
        HTTP request's are (through the read cache, so: at once after an invalidation,
        within ``EVLINK_CACHE_TTL`` otherwise).

        UNAUTHENTICATED when the key no longer works; FORBIDDEN_TIER when the tier is
        not the one the socket was admitted with (evlink.revocation closes such a
        socket with 4403). The key is the one the socket was admitted with, whatever a
        later ``connection_init`` says.
        """
        admission = self.open_socket.admission if self.open_socket is not None else None
        if admission is None:
            return
        caller = await authenticate_request(self.services, self._accepted, self.client)
        if caller.user.tier != admission.tier:
            raise ForbiddenTier(f"Your tier changed to {caller.user.tier.value}: reconnect")

    @property
    def key_id(self) -> str | None:
        """The caller's key in the rate-limit counters, once authenticated."""
        return self.caller.key_id if self.caller is not None else None

    def watching(
        self, vehicle_id: UUID | str, watcher: Watcher
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """A subscription follows ``vehicle_id``: on a websocket, ``watcher`` is ended
        with an error if the user no longer owns it (evlink.revocation). A slotted
        context manager, not a generator's: a subscription holds it for its life."""
        if self.open_socket is None:
            return contextlib.nullcontext()
        return self.open_socket.watch(UUID(str(vehicle_id)), watcher)

    @property
    def authenticated(self) -> bool:
        return self.caller is not None

    async def authenticate_now(self) -> None:
        """Check a given key before the operation runs; a bad one is raised lazily by
        :meth:`user`, only an address past its failure limit raises here (429)."""
        with contextlib.suppress(Unauthenticated):
            await self.user()

    async def charge(self, *, reads: bool) -> None:
        """Charge one operation of the authenticated caller (429 RATE_LIMITED past a limit)."""
        limiter = self.services.limiter
        if limiter is None or self.caller is None:
            return
        self.charged = True
        await limiter.admit(self.caller.user, self.caller.key_id, reads=reads)

    def showing(self, vehicle: AnyVehicle) -> None:
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
