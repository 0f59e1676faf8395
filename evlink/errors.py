"""The one error table of evlink.

Every failure a client may see is an :class:`EvlinkError` subclass carrying its
code, HTTP status and a message safe to show. REST answers
``{"detail": message, "code": code}``; GraphQL puts ``code`` into the error's
``extensions``. Anything else that escapes is a bug: logged with the request id
and answered as "Unexpected error" without internals. An error of status 500 or
more is logged with the request id, except where ``log_each`` is false: a
database outage is logged once where it starts and ends, not per request.

    EvlinkError
    ├── Unauthenticated          401 UNAUTHENTICATED
    ├── ForbiddenTier            403 FORBIDDEN_TIER
    ├── ForbiddenOwner           403 FORBIDDEN_OWNER
    ├── NotFound                 404 NOT_FOUND
    ├── BadRequest               400 BAD_REQUEST
    ├── PayloadTooLarge          413 PAYLOAD_TOO_LARGE
    ├── HeadersTooLarge          431 HEADERS_TOO_LARGE (a head past 64 KiB or 100 fields)
    ├── UnsupportedMediaType     415 UNSUPPORTED_MEDIA_TYPE
    ├── InvalidVehicleState      400 INVALID_VEHICLE_STATE
    ├── SmartChargingActive      422 SMART_CHARGING_ACTIVE
    ├── IdempotencyKeyReused     422 IDEMPOTENCY_KEY_REUSED
    ├── RateLimited              429 RATE_LIMITED
    ├── ProviderLinkMissing      500 PROVIDER_LINK_MISSING
    ├── InternalError            500 INTERNAL_ERROR
    ├── StreamInterrupted        503 STREAM_INTERRUPTED (a subscription lost its events)
    ├── ServerBusy               503 SERVER_BUSY (past the cap on open connections)
    ├── DatabaseUnavailable      503 DATABASE_UNAVAILABLE (down or hung; with Retry-After)
    └── ProviderUnavailable      502 / 503 / 504 PROVIDER_UNAVAILABLE
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BadRequest",
    "DatabaseUnavailable",
    "EvlinkError",
    "ForbiddenOwner",
    "ForbiddenTier",
    "HeadersTooLarge",
    "IdempotencyKeyReused",
    "InternalError",
    "InvalidVehicleState",
    "NotFound",
    "PayloadTooLarge",
    "ProviderLinkMissing",
    "ProviderUnavailable",
    "RateLimited",
    "ServerBusy",
    "SmartChargingActive",
    "StreamInterrupted",
    "Unauthenticated",
    "UnsupportedMediaType",
    "code_for_status",
]


class EvlinkError(Exception):
    """A failure with a code, an HTTP status and a message a client may read."""

    code: ClassVar[str] = "INTERNAL_ERROR"
    status: int = 500
    default_message: ClassVar[str] = "Unexpected error"
    # Log each answer of status 500 or more with its request id (see DatabaseUnavailable).
    log_each: ClassVar[bool] = True

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        self.message = message or self.default_message
        self.retry_after = retry_after
        super().__init__(self.message)

    def headers(self) -> dict[str, str]:
        """HTTP headers this error adds to a REST answer."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class Unauthenticated(EvlinkError):
    code = "UNAUTHENTICATED"
    status = 401
    default_message = "Missing or invalid API key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="evlink"'}


class ForbiddenTier(EvlinkError):
    code = "FORBIDDEN_TIER"
    status = 403
    default_message = "Charging control needs the Pro tier"


class ForbiddenOwner(EvlinkError):
    code = "FORBIDDEN_OWNER"
    status = 403
    default_message = "This vehicle belongs to another user"


class NotFound(EvlinkError):
    code = "NOT_FOUND"
    status = 404
    default_message = "Vehicle not found"


class BadRequest(EvlinkError):
    code = "BAD_REQUEST"
    status = 400
    default_message = "Bad request"


class PayloadTooLarge(EvlinkError):
    code = "PAYLOAD_TOO_LARGE"
    status = 413
    default_message = "The body is too large"


class HeadersTooLarge(EvlinkError):
    """Answered by the connection itself (evlink.connections), before the request reaches
    the app: its head (request line and headers) is past its size or its fields."""

    code = "HEADERS_TOO_LARGE"
    status = 431
    default_message = "The request's headers are too large"


class UnsupportedMediaType(EvlinkError):
    code = "UNSUPPORTED_MEDIA_TYPE"
    status = 415
    default_message = "Send the body as application/json"


class InvalidVehicleState(EvlinkError):
    code = "INVALID_VEHICLE_STATE"
    status = 400
    default_message = "The vehicle is not in a state that allows this action"


class SmartChargingActive(EvlinkError):
    code = "SMART_CHARGING_ACTIVE"
    status = 422
    default_message = "The vehicle is under schedule or smart-charging control"


class IdempotencyKeyReused(EvlinkError):
    code = "IDEMPOTENCY_KEY_REUSED"
    status = 422
    default_message = "This idempotency key was used with different arguments"


class RateLimited(EvlinkError):
    code = "RATE_LIMITED"
    status = 429
    default_message = "Rate limit exceeded"


class ProviderLinkMissing(EvlinkError):
    code = "PROVIDER_LINK_MISSING"
    status = 500
    default_message = "The vehicle has no provider id"
    log_each = False  # a WARNING once per vehicle (evlink.resolvers.vehicles), not per poll


class StreamInterrupted(EvlinkError):
    code = "STREAM_INTERRUPTED"
    status = 503
    default_message = "The event stream was interrupted; subscribe again"
    log_each = False  # expected in an outage, which the event bus logs once


class ServerBusy(EvlinkError):
    """Answered by the connection itself (evlink.connections), before any request is read."""

    code = "SERVER_BUSY"
    status = 503
    default_message = "Too many open connections; try again shortly"

    def __init__(self, message: str | None = None, *, retry_after: float | None = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)


class DatabaseUnavailable(EvlinkError):
    """The database could not be reached or did not answer within EVLINK_DATABASE_TIMEOUT.

    Raised only by :mod:`evlink.models.backends`, which logs the outage once when it
    starts and once when it ends; the answers themselves are not logged.
    """

    code = "DATABASE_UNAVAILABLE"
    status = 503
    default_message = "The database is unavailable; try again shortly"
    log_each = False
    retry_seconds: ClassVar[float] = 5.0

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, retry_after=self.retry_seconds)


class InternalError(EvlinkError):
    """An unexpected failure, as clients see it."""


class ProviderUnavailable(EvlinkError):
    """The provider failed (502), is shut off by the circuit breaker (503) or timed out (504)."""

    code = "PROVIDER_UNAVAILABLE"
    default_message = "The vehicle provider is unavailable"

    def __init__(
        self, message: str | None = None, *, status: int = 502, retry_after: float | None = None
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status


# The codes of answers given before any of evlink's code runs (Starlette's no route and
# wrong method, Strawberry's refusals, a body over its limit); any other status is a
# client's malformed request.
_STATUS_CODES = {
    404: NotFound.code,
    405: "METHOD_NOT_ALLOWED",
    413: PayloadTooLarge.code,
}


def code_for_status(status: int) -> str:
    """The table's code for an HTTP error answered by Starlette or Strawberry itself."""
    return _STATUS_CODES.get(status, BadRequest.code)
