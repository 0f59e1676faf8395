"""Answers of repeated GraphQL queries, from the read cache (:mod:`evlink.cache`).

Clients poll: a dashboard or an automation sends the same query for the same
vehicle every few seconds, and each one costs a whole GraphQL execution, which
is most of the request's time. So a query's answer is kept when

- every field it selects is vehicle data (:data:`CACHEABLE`: no quotas, no
  commands, no introspection) and every operation in the document is a query;
- it ran without errors, over HTTP POST with a JSON body, for a caller with a key;
- nothing it read was invalidated while it ran.

It is kept as the exact bytes of the answer, under the caller's user and the
digest of the request body, tagged with the user and each vehicle it read, for
no longer than the stored charge state of those vehicles may be served (the max
age) nor the cache's ttl. The same body from the same user is then answered
with those bytes: the caller is authenticated as any request is (by the view,
:func:`evlink.resolvers.auth.authenticate_request`), the request is charged to
the rate limits as the query would be, and nothing is parsed or executed.
Anything else (a miss, a refused key, another content type) goes through
Strawberry.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    TypeInfo,
    TypeInfoVisitor,
    Visitor,
    parse,
    visit,
)
from graphql.type import get_named_type
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from evlink.cache import ReadCache, user_tag, vehicle_tag
from evlink.domain import CAPABILITY_NAMES
from evlink.ratelimit import Limiter
from evlink.requestheaders import header, media_type
from evlink.resolvers.auth import Caller

__all__ = ["CACHEABLE", "PendingResult", "ResultCache", "is_cacheable"]

# Per type, the fields whose answers the read cache may hold: each is the vehicle's own
# data or its charge state, which the ``vehicle:<id>`` and ``user:<id>`` tags cover.
# A field not listed (a new one too) makes a query uncacheable.
CACHEABLE: Mapping[str, frozenset[str]] = {
    "Query": frozenset({"vehicle", "vehicles"}),
    "Vehicle": frozenset(
        {
            "id",
            "name",
            "vendor",
            "provider",
            "providerVehicleId",
            "information",
            "location",
            "odometer",
            "smartChargingPolicy",
            "capabilities",
            "lastSeen",
            "isReachable",
            "chargeState",
        }
    ),
    "ChargeState": frozenset(
        {
            "batteryLevel",
            "range",
            "isPluggedIn",
            "isCharging",
            "batteryCapacity",
            "chargeLimit",
            "chargeRate",
            "chargeTimeRemaining",
            "isFullyCharged",
            "lastUpdated",
            "powerDeliveryState",
            "maxCurrent",
        }
    ),
    "VehicleInformation": frozenset({"vin", "brand", "model", "year", "displayName"}),
    "Location": frozenset({"latitude", "longitude", "lastUpdated"}),
    "Odometer": frozenset({"distance", "lastUpdated"}),
    "SmartChargingPolicy": frozenset({"isEnabled", "deadline", "minimumChargeLimit"}),
    "Capabilities": frozenset(CAPABILITY_NAMES),
    "Capability": frozenset({"isCapable", "interventionIds"}),
}
_DOCUMENTS_REMEMBERED = 256


class _Fields(Visitor):
    """Finds whether a document selects anything outside :data:`CACHEABLE`."""

    def __init__(self, type_info: TypeInfo) -> None:
        super().__init__()
        self.type_info = type_info
        self.cacheable = True

    def enter_operation_definition(self, node: OperationDefinitionNode, *_: object) -> None:
        if node.operation is not OperationType.QUERY:
            self.cacheable = False

    def enter_field(self, node: FieldNode, *_: object) -> None:
        name = node.name.value
        if name == "__typename":
            return
        parent = self.type_info.get_parent_type()
        if parent is None or name not in CACHEABLE.get(get_named_type(parent).name, ()):
            self.cacheable = False


def is_cacheable(schema: GraphQLSchema, document: DocumentNode) -> bool:
    """True when every operation of ``document`` is a query of :data:`CACHEABLE` fields."""
    type_info = TypeInfo(schema)
    fields = _Fields(type_info)
    visit(document, TypeInfoVisitor(type_info, fields))
    return fields.cacheable


@dataclass(eq=False)
class PendingResult:
    """A query on its way through Strawberry whose answer may be stored.

    The resolvers note what they read (:meth:`read_vehicle`); the view notes
    whether the document may be cached and ran cleanly (``cacheable``).
    """

    key: tuple[object, ...]
    user_id: int
    began: int
    tags: set[str] = field(default_factory=set)
    fresh_for: float = math.inf
    cacheable: bool = False

    def read_vehicle(self, vehicle_id: object, fresh_for: float) -> None:
        """The answer shows this vehicle, whose stored state may be served ``fresh_for`` s."""
        self.tags.add(vehicle_tag(str(vehicle_id)))
        self.fresh_for = min(self.fresh_for, fresh_for)


class ResultCache:
    """The view's side of the cache: answer from it, or store what Strawberry answered."""

    def __init__(self, schema: GraphQLSchema) -> None:
        self.schema = schema
        self._documents: dict[str, bool] = {}

    def document_cacheable(self, query: str) -> bool:
        """:func:`is_cacheable` of the query text, remembered for the last few documents."""
        known = self._documents.get(query)
        if known is None:
            try:
                known = is_cacheable(self.schema, parse(query))
            except GraphQLError:
                known = False
            if len(self._documents) >= _DOCUMENTS_REMEMBERED:
                del self._documents[next(iter(self._documents))]
            self._documents[query] = known
        return known

    async def answer(
        self,
        scope: Scope,
        body: bytes,
        cache: ReadCache,
        limiter: Limiter | None,
        caller: Caller | None,
    ) -> Response | PendingResult | None:
        """The stored answer to this request of the authenticated ``caller`` (charged to
        its limits); else what to note while Strawberry answers it (None: nothing can be
        stored, or no caller)."""
        if caller is None or not cache.enabled or not _plain_json(scope):
            return None
        user = caller.user
        entry_key = ("graphql", user.id, hashlib.sha256(body).digest())
        stored: bytes | None = cache.get(entry_key)
        if stored is None:
            return PendingResult(entry_key, user.id, cache.begin())
        if limiter is not None:
            await limiter.admit(user, caller.key_id, reads=True)
        return Response(stored, media_type="application/json")

    @staticmethod
    def store(cache: ReadCache, pending: PendingResult, status: int, body: bytes) -> None:
        if pending.cacheable and status == 200:
            cache.put(
                pending.key,
                body,
                tags=[user_tag(pending.user_id), *pending.tags],
                began=pending.began,
                max_age=pending.fresh_for,
                size=len(body),
            )


def _plain_json(scope: Scope) -> bool:
    """A JSON body asking for a JSON answer (not multipart or event-stream delivery)."""
    content_type = media_type(scope)
    accept = (header(scope, b"accept") or "").lower()
    return content_type == "application/json" and not (
        "multipart" in accept or "event-stream" in accept
    )


async def read_body(receive: Receive) -> tuple[bytes, Receive]:
    """The request's whole body, and a ``receive`` that hands it on as if unread."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            # The client left before its body was in: what came is not the body (the
            # edge counts it 499, as Starlette's Request raises the same).
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


def capturing(send: Send) -> tuple[Send, list[bytes], list[int]]:
    """A ``send`` that also keeps the answer's status and body."""
    chunks: list[bytes] = []
    status: list[int] = []

    async def capture(message: Message) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
        await send(message)

    return capture, chunks, status
