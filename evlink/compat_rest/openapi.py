"""The OpenAPI 3.1 document of the REST API, served at ``GET /api/openapi.json``.

Written by hand beside the routes it describes: the bodies are the shapes of
:mod:`evlink.compat_rest.bodies`, and the error answers come from the one error
table (:mod:`evlink.errors`), so a code's status is stated once. Tests check
every documented path against the running app and validate live answers
against these schemas.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from evlink import __version__, errors
from evlink.compat_rest.routes import MAX_WAIT
from evlink.domain import ChargingAction
from evlink.errors import EvlinkError
from evlink.models import Tier
from evlink.models.commands import CommandState
from evlink.resolvers.rules import MAX_IDEMPOTENCY_KEY

__all__ = ["ERROR_CODES", "openapi_document", "openapi_json"]

Schema = dict[str, Any]

# What each code of the error table means for a REST client.
ERROR_CODES: dict[str, str] = {
    "UNAUTHENTICATED": (
        "The API key is missing, not a Bearer key, malformed, or unknown or revoked (the "
        "same answer in every case, with `WWW-Authenticate`); for the webhook, a bad signature."
    ),
    "FORBIDDEN_TIER": "Charging control without the PRO tier.",
    "FORBIDDEN_OWNER": "The vehicle belongs to another user.",
    "NOT_FOUND": "No such vehicle (any id that is not a UUID included).",
    "BAD_REQUEST": (
        "The body is not a JSON object or nests more than 32 levels of arrays and objects, "
        "the action is not START or STOP, `wait` is out of range, or the idempotency key is "
        "not 1 to 255 printable characters."
    ),
    "PAYLOAD_TOO_LARGE": "The request body is larger than the server accepts.",
    "UNSUPPORTED_MEDIA_TYPE": "The body is sent with a content type other than JSON.",
    "INVALID_VEHICLE_STATE": (
        "START when unplugged or already charging, STOP when not charging, or the vehicle "
        "cannot start or stop charging."
    ),
    "SMART_CHARGING_ACTIVE": "The vehicle is under schedule or smart-charging control.",
    "IDEMPOTENCY_KEY_REUSED": "The idempotency key was used before with another vehicle or action.",
    "RATE_LIMITED": "A rate limit or quota is spent; `Retry-After` says when to try again.",
    "PROVIDER_LINK_MISSING": "The vehicle has no provider id.",
    "INTERNAL_ERROR": "An unexpected error, logged with the request id; no details are given.",
    "STREAM_INTERRUPTED": "A subscription lost its events (GraphQL only).",
    "DATABASE_UNAVAILABLE": (
        "The database is down or did not answer within the server's database timeout; "
        "`Retry-After` says when to try again."
    ),
    "PROVIDER_UNAVAILABLE": (
        "The provider failed (502), is busy or switched off by the circuit breaker "
        "(503, with `Retry-After`), or timed out (504), with no stored state to serve."
    ),
    "METHOD_NOT_ALLOWED": "The path does not take this HTTP method.",
    "SERVER_BUSY": (
        "The server has its most open connections (`EVLINK_MAX_CONNECTIONS`); the connection "
        "is answered at once, with `Retry-After`, and closed."
    ),
    "HEADERS_TOO_LARGE": (
        "The request line and headers together are larger than 64 KiB; answered before any "
        "route, and the connection is closed."
    ),
}

# ProviderUnavailable's status is chosen per failure; every other error has one.
_STATUSES: dict[type[EvlinkError], tuple[int, ...]] = {errors.ProviderUnavailable: (502, 503, 504)}

_STATUS_TEXT = {
    400: "Bad request",
    401: "Unauthenticated",
    403: "Forbidden",
    404: "Not found",
    413: "Payload too large",
    431: "Request header fields too large",
    415: "Unsupported media type",
    422: "Unprocessable",
    429: "Too many requests",
    500: "Internal error",
    502: "Provider failed",
    503: "Unavailable",
    504: "Provider timed out",
}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    if "$ref" in schema:
        return {"oneOf": [schema, {"type": "null"}]}
    return {**schema, "type": [schema["type"], "null"]}


def _object(
    properties: dict[str, Schema], *, optional: tuple[str, ...] = (), **extra: Any
) -> Schema:
    """An object whose properties are all present except ``optional``."""
    return {
        "type": "object",
        "required": [name for name in properties if name not in optional],
        "properties": properties,
        **extra,
    }


TIMESTAMP: Schema = {
    "type": "string",
    "format": "date-time",
    "description": "ISO 8601 in UTC with milliseconds and `Z`, e.g. 2025-05-20T15:48:12.933Z.",
}
POWER_DELIVERY_STATE: Schema = {
    "type": "string",
    "description": (
        "An open enum: UNPLUGGED, PLUGGED_IN:CHARGING, PLUGGED_IN:STOPPED, "
        "PLUGGED_IN:COMPLETE, PLUGGED_IN:INITIALIZING, PLUGGED_IN:FAULT, UNKNOWN, and any "
        "value the provider reports."
    ),
    "examples": ["PLUGGED_IN:CHARGING"],
}
# The provider's blocks pass through as it reports them: the listed keys, and maybe more.
_PASS_THROUGH = {"additionalProperties": True}

SCHEMAS: dict[str, Schema] = {
    "ChargeState": _object(
        {
            "batteryLevel": _nullable({"type": "integer", "description": "Battery, percent."}),
            "range": _nullable({"type": "number", "description": "Estimated range, km."}),
            "isPluggedIn": _nullable({"type": "boolean"}),
            "isCharging": _nullable({"type": "boolean"}),
            "batteryCapacity": _nullable({"type": "number", "description": "kWh."}),
            "chargeLimit": _nullable({"type": "integer", "description": "Percent."}),
            "chargeRate": _nullable({"type": "number", "description": "kW."}),
            "chargeTimeRemaining": _nullable({"type": "integer", "description": "Minutes."}),
            "isFullyCharged": _nullable({"type": "boolean"}),
            "lastUpdated": _nullable(TIMESTAMP),
            "powerDeliveryState": POWER_DELIVERY_STATE,
            "maxCurrent": _nullable({"type": "number", "description": "Amps."}),
        },
        description="A vehicle's charge state as last reported; most values may be null.",
    ),
    "Status": _object(
        {
            "batteryLevel": _nullable({"type": "integer", "description": "Legacy key."}),
            "range": _nullable({"type": "number", "description": "Legacy key."}),
            "isCharging": _nullable({"type": "boolean", "description": "Legacy key."}),
            "isPluggedIn": _nullable({"type": "boolean", "description": "Legacy key."}),
            "chargingState": {**POWER_DELIVERY_STATE, "description": "Legacy key."},
            "vehicleName": _nullable({"type": "string"}),
            "lastSeen": _nullable(TIMESTAMP),
            "isReachable": _nullable({"type": "boolean"}),
            "chargeState": _ref("ChargeState"),
            "latitude": {"type": "number", "description": "Only when the location is known."},
            "longitude": {"type": "number", "description": "Only when the location is known."},
        },
        optional=("latitude", "longitude"),
        description=(
            "The original service's status body. The top-level keys before `chargeState` "
            "are legacy: read the values inside `chargeState`."
        ),
    ),
    "Vehicle": _object(
        {
            "id": {"type": "string", "format": "uuid", "description": "evlink's vehicle id."},
            "enode_vehicle_id": _nullable({"type": "string", "description": "The provider's id."}),
            "provider": {"type": "string", "examples": ["simulator", "enode"]},
            "name": _nullable({"type": "string"}),
            "vendor": _nullable({"type": "string"}),
            "lastSeen": _nullable(TIMESTAMP),
            "isReachable": _nullable({"type": "boolean"}),
            "information": _nullable(
                {
                    "type": "object",
                    "properties": {
                        "vin": {"type": "string"},
                        "brand": {"type": "string"},
                        "model": {"type": "string"},
                        "year": {"type": "integer"},
                        "displayName": {"type": "string"},
                    },
                    **_PASS_THROUGH,
                }
            ),
            "chargeState": _nullable(_ref("ChargeState")),
            "smartChargingPolicy": _nullable(
                {
                    "type": "object",
                    "properties": {
                        "isEnabled": {"type": "boolean"},
                        "deadline": {"type": ["string", "null"]},
                        "minimumChargeLimit": {"type": ["integer", "null"]},
                    },
                    **_PASS_THROUGH,
                }
            ),
            "location": _nullable(
                {
                    "type": "object",
                    "properties": {
                        "latitude": {"type": ["number", "null"]},
                        "longitude": {"type": ["number", "null"]},
                        "lastUpdated": _nullable(TIMESTAMP),
                    },
                    **_PASS_THROUGH,
                }
            ),
            "odometer": _nullable(
                {
                    "type": "object",
                    "properties": {
                        "distance": {"type": ["number", "null"], "description": "km."},
                        "lastUpdated": _nullable(TIMESTAMP),
                    },
                    **_PASS_THROUGH,
                }
            ),
            "capabilities": _nullable(
                {
                    "type": "object",
                    "description": "Per capability (startCharging, stopCharging, …).",
                    "additionalProperties": _ref("Capability"),
                }
            ),
        },
        description="A whole vehicle, as `/api/ha/vehicles` and `/api/ha/status/{id}` show it.",
    ),
    "Capability": _object(
        {
            "isCapable": {"type": "boolean"},
            "interventionIds": {"type": "array", "items": {"type": "string"}},
        },
        additionalProperties=True,
    ),
    "Me": _object(
        {
            "id": {"type": "integer"},
            "email": {"type": "string", "format": "email"},
            "tier": {"type": "string", "enum": [tier.value for tier in Tier]},
            "vehicleCount": {"type": "integer", "minimum": 0},
        },
        description="The caller.",
    ),
    "ChargingRequest": _object(
        {
            "action": {
                "type": "string",
                "enum": [action.value for action in ChargingAction],
                "description": "Any case is accepted.",
            }
        },
        examples=[{"action": "START"}],
    ),
    "ChargingResult": _object(
        {
            "status": {"const": "success"},
            "vehicle_id": {"type": "string", "format": "uuid"},
            "enode_vehicle_id": _nullable({"type": "string", "description": "The provider's id."}),
            "action": {"type": "string", "enum": [action.value for action in ChargingAction]},
            "enode_response": _nullable(_ref("ProviderAction")),
            "command_id": {"type": "string", "format": "uuid"},
            "state": {
                "type": "string",
                "enum": [state.value for state in CommandState],
                "description": "With `?wait` only. The status stays 200 whatever the outcome.",
            },
            "failure_reason": {"type": ["string", "null"], "description": "With `?wait` only."},
        },
        optional=("state", "failure_reason"),
        description=(
            "The documented body plus `command_id`. evlink then follows the command until the "
            "car's powerDeliveryState matches (PLUGGED_IN:CHARGING for START, anything else for "
            "STOP), re-sending as needed; it ends CONFIRMED, FAILED, TIMED_OUT or CANCELLED."
        ),
    ),
    "ProviderAction": _object(
        {
            "id": {"type": "string"},
            "userId": {"type": ["string", "null"]},
            "createdAt": _nullable(TIMESTAMP),
            "updatedAt": _nullable(TIMESTAMP),
            "completedAt": _nullable(TIMESTAMP),
            "state": {"type": "string", "examples": ["PENDING", "CONFIRMED", "FAILED"]},
            "targetId": {"type": "string"},
            "targetType": {"const": "vehicle"},
            "kind": {"type": "string", "examples": ["START", "STOP"]},
            "failureReason": {"type": ["object", "null"], **_PASS_THROUGH},
        },
        description="The provider's charge action in Enode's shape; null if it was not reached.",
    ),
    "Error": _object(
        {
            "detail": {"type": "string", "description": "A message safe to show."},
            "code": {"type": "string", "enum": sorted(ERROR_CODES)},
        },
        description="Every error answer.",
    ),
    "WebhookAnswer": {
        "oneOf": [
            _object({"status": {"const": "accepted"}, "events": {"type": "integer"}}),
            _object({"status": {"const": "duplicate"}}),
        ]
    },
    "Health": _object({"status": {"const": "ok"}}),
    "Readiness": _object(
        {
            "status": {"type": "string", "enum": ["ready", "unavailable"]},
            "database": {"type": "string", "enum": ["ok", "unavailable"]},
            "redis": {"type": "string", "enum": ["ok", "degraded"]},
        },
        optional=("redis",),
        description=(
            "`redis` only when EVLINK_REDIS_URL is set. A Redis that does not answer is "
            "`degraded`: the instance still serves (200); only a database that does not "
            "answer makes it unavailable (503)."
        ),
    ),
}

HEADERS: dict[str, Schema] = {
    "X-Request-ID": {
        "description": "Your own id if you sent a short plain one, otherwise a new one.",
        "schema": {"type": "string"},
    },
    "WWW-Authenticate": {"schema": {"type": "string", "examples": ['Bearer realm="evlink"']}},
    "Retry-After": {"description": "Seconds.", "schema": {"type": "integer", "minimum": 1}},
    "RateLimit": {
        "description": "Remaining requests (r) and seconds to reset (t) of each policy.",
        "schema": {"type": "string", "examples": ['"burst";r=59;t=60, "reads";r=299;t=2592000']},
    },
    "RateLimit-Policy": {
        "description": "The quota (q) and window in seconds (w) of each policy.",
        "schema": {"type": "string", "examples": ['"burst";q=60;w=60, "reads";q=300;w=2592000']},
    },
}
_HEADER_REFS = {name: {"$ref": f"#/components/headers/{name}"} for name in HEADERS}


def _headers(*names: str) -> dict[str, Schema]:
    return {name: _HEADER_REFS[name] for name in ("X-Request-ID", *names)}


def _json(schema: Schema) -> dict[str, Schema]:
    return {"application/json": {"schema": schema}}


def _ok(description: str, schema: Schema, *, limited: bool = True) -> Schema:
    rate = ("RateLimit", "RateLimit-Policy") if limited else ()
    return {"description": description, "headers": _headers(*rate), "content": _json(schema)}


def _error_responses(*raised: type[EvlinkError]) -> Schema:
    """One answer per status that ``raised`` (or an unexpected error) can give, with its codes."""
    by_status: dict[int, list[str]] = {}
    # Any path may meet an unexpected error, a server past its cap on connections, or a
    # request head past its limit.
    candidates: list[type[EvlinkError]] = [
        *raised,
        errors.InternalError,
        errors.ServerBusy,
        errors.HeadersTooLarge,
    ]
    for error in candidates:
        for status in _STATUSES.get(error, (error.status,)):
            codes = by_status.setdefault(status, [])
            if error.code not in codes:
                codes.append(error.code)
    responses: Schema = {}
    for status in sorted(by_status):
        codes = by_status[status]
        headers: tuple[str, ...] = ()
        if status == 401:
            headers = ("WWW-Authenticate",)
        elif status in (429, 503):
            headers = ("Retry-After",)
        responses[str(status)] = {
            "description": _STATUS_TEXT.get(status, "Error")
            + ": "
            + " ".join(f"`{code}`: {ERROR_CODES[code]}" for code in codes),
            "headers": _headers(*headers),
            "content": _json({"allOf": [_ref("Error"), {"properties": {"code": {"enum": codes}}}]}),
        }
    return responses


VEHICLE_ID = {
    "name": "vehicle_id",
    "in": "path",
    "required": True,
    "description": "evlink's vehicle id, as `/api/ha/vehicles` and the CLI show it.",
    "schema": {"type": "string", "format": "uuid"},
}
WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "description": (
        "Seconds to hold the answer until the command ends; the body then also has `state` "
        "and `failure_reason` (`state` may still be PENDING when the time runs out)."
    ),
    "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT},
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "A repeat with the same key, vehicle and action returns the first command, in "
        "whatever state it is now, without calling the provider again. Keys are per user."
    ),
    # Printable (str.isprintable) as the server reads a header's value: latin-1.
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_IDEMPOTENCY_KEY,
        "pattern": "^[ -~\u00a1-\u00ac\u00ae-\u00ff]+$",
    },
}

_READ_ERRORS = (errors.Unauthenticated, errors.RateLimited, errors.DatabaseUnavailable)
_VEHICLE_ERRORS = (
    *_READ_ERRORS,
    errors.ForbiddenOwner,
    errors.NotFound,
    errors.ProviderLinkMissing,
    errors.ProviderUnavailable,
)
_CHARGING_ERRORS = (
    errors.BadRequest,
    errors.PayloadTooLarge,
    errors.UnsupportedMediaType,
    errors.InvalidVehicleState,
    errors.Unauthenticated,
    errors.ForbiddenTier,
    errors.ForbiddenOwner,
    errors.NotFound,
    errors.SmartChargingActive,
    errors.IdempotencyKeyReused,
    errors.RateLimited,
    errors.ProviderLinkMissing,
    errors.ProviderUnavailable,
    errors.DatabaseUnavailable,
)


def _charging(alias: str) -> Schema:
    return {
        "post": {
            "operationId": alias,
            "tags": ["Charging"],
            "summary": "Start or stop charging (PRO tier)",
            "description": (
                "Records a charging command (PENDING), sends the action to the provider and "
                "answers at once; evlink follows the command until the vehicle's state "
                "matches. A request for the action a PENDING command already wants returns "
                "that command; the other action supersedes it (the old one ends CANCELLED)."
            ),
            "parameters": [VEHICLE_ID, WAIT, IDEMPOTENCY_KEY],
            "requestBody": {"required": True, "content": _json(_ref("ChargingRequest"))},
            "responses": {
                "200": _ok(
                    "The command, as recorded (or as it ended, with `?wait`).",
                    _ref("ChargingResult"),
                ),
                **_error_responses(*_CHARGING_ERRORS),
            },
        }
    }


NO_KEY: list[Schema] = []  # an operation's security: anyone may call it


_NUMBER_OR_NULL: Schema = {"type": ["number", "null"]}
_SESSION_SCHEMAS: dict[str, Schema] = {
    "ChargingSession": _object(
        {
            "id": {"type": "string", "format": "uuid"},
            "vehicleId": {"type": "string", "format": "uuid"},
            "active": {"type": "boolean", "description": "Open: the car is charging."},
            "startedAt": TIMESTAMP,
            "endedAt": _nullable(TIMESTAMP),
            "endReason": {
                "type": ["string", "null"],
                "enum": ["STOPPED", "COMPLETE", "UNPLUGGED", "UNREACHABLE", None],
            },
            "startedBy": {"type": "string", "enum": ["EVLINK", "OTHER"]},
            "commandId": {"type": ["string", "null"], "format": "uuid"},
            "batteryStart": {"type": ["integer", "null"]},
            "batteryEnd": {"type": ["integer", "null"], "description": "Latest while open."},
            "rangeStart": _NUMBER_OR_NULL,
            "rangeEnd": _NUMBER_OR_NULL,
            "batteryCapacity": _NUMBER_OR_NULL,
            "energyKwh": {**_NUMBER_OR_NULL, "description": "By energyMethod."},
            "energyMethod": {"type": "string", "enum": ["POWER", "BATTERY"]},
            "energyFromPower": {"type": "number"},
            "energyFromBattery": _NUMBER_OR_NULL,
            "sampleCount": {"type": "integer"},
            "peakPower": _NUMBER_OR_NULL,
            "averagePower": _NUMBER_OR_NULL,
            "durationSeconds": {"type": "number"},
            "cost": {**_NUMBER_OR_NULL, "description": "Null without a tariff."},
            "currency": {"type": ["string", "null"]},
        },
        additionalProperties=False,
    ),
    "ChargingSessions": _object(
        {
            "vehicleId": {"type": "string", "format": "uuid"},
            "sessions": {"type": "array", "items": _ref("ChargingSession")},
            "total": _object(
                {
                    "count": {"type": "integer"},
                    "energyKwh": {"type": "number"},
                    "cost": {**_NUMBER_OR_NULL, "description": "Null when currencies differ."},
                    "currency": {"type": ["string", "null"]},
                    "durationSeconds": {"type": "number"},
                },
                additionalProperties=False,
            ),
        },
        additionalProperties=False,
    ),
    "NoChargingSession": _object({"active": {"const": False}}, additionalProperties=False),
}
SCHEMAS.update(_SESSION_SCHEMAS)
_SESSION_ERRORS = (*_READ_ERRORS, errors.ForbiddenOwner, errors.NotFound)


def _session_paths() -> Schema:
    query = [
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
        },
        {
            "name": "since",
            "in": "query",
            "required": False,
            "description": "Only sessions started at or after this time (ISO 8601).",
            "schema": {"type": "string", "format": "date-time"},
        },
        {
            "name": "format",
            "in": "query",
            "required": False,
            "description": "csv: the same as `Accept: text/csv`.",
            "schema": {"type": "string", "enum": ["json", "csv"]},
        },
    ]
    listed = _ok("Newest first, with their totals.", _ref("ChargingSessions"))
    listed["content"]["text/csv"] = {
        "schema": {
            "type": "string",
            "description": "A header row (the JSON keys), one row per session.",
        }
    }
    return {
        "/api/ha/sessions/{vehicle_id}": {
            "get": {
                "operationId": "haSessions",
                "tags": ["Home Assistant"],
                "summary": "The vehicle's charging sessions (JSON or CSV)",
                "parameters": [VEHICLE_ID, *query],
                "responses": {
                    "200": listed,
                    **_error_responses(errors.BadRequest, *_SESSION_ERRORS),
                },
            }
        },
        "/api/ha/sessions/{vehicle_id}/current": {
            "get": {
                "operationId": "haCurrentSession",
                "tags": ["Home Assistant"],
                "summary": 'The session in progress, or `{"active": false}`',
                "parameters": [VEHICLE_ID],
                "responses": {
                    "200": _ok(
                        "The open session, or none.",
                        {"oneOf": [_ref("ChargingSession"), _ref("NoChargingSession")]},
                    ),
                    **_error_responses(*_SESSION_ERRORS),
                },
            }
        },
    }


def _paths() -> Schema:
    return {
        "/api/status/{vehicle_id}": {
            "get": {
                "operationId": "status",
                "tags": ["Home Assistant"],
                "summary": "A vehicle's status (the documented body)",
                "description": (
                    "The stored state while it is younger than EVLINK_STATUS_MAX_AGE, else "
                    "refreshed from the provider first. If the provider fails, the stored "
                    "state is served with its own `lastUpdated`."
                ),
                "parameters": [VEHICLE_ID],
                "responses": {
                    "200": _ok("The status.", _ref("Status")),
                    **_error_responses(*_VEHICLE_ERRORS),
                },
            }
        },
        "/api/ha/me": {
            "get": {
                "operationId": "haMe",
                "tags": ["Home Assistant"],
                "summary": "The caller",
                "responses": {
                    "200": _ok("The caller.", _ref("Me")),
                    **_error_responses(*_READ_ERRORS),
                },
            }
        },
        "/api/ha/vehicles": {
            "get": {
                "operationId": "haVehicles",
                "tags": ["Home Assistant"],
                "summary": "The caller's vehicles",
                "description": (
                    "The stored state; a car is read from its provider only the first time "
                    "it is listed."
                ),
                "responses": {
                    "200": _ok("The vehicles.", {"type": "array", "items": _ref("Vehicle")}),
                    **_error_responses(*_READ_ERRORS, errors.ProviderUnavailable),
                },
            }
        },
        "/api/ha/status/{vehicle_id}": {
            "get": {
                "operationId": "haStatus",
                "tags": ["Home Assistant"],
                "summary": "One whole vehicle, its charge state kept fresh",
                "parameters": [VEHICLE_ID],
                "responses": {
                    "200": _ok("The vehicle.", _ref("Vehicle")),
                    **_error_responses(*_VEHICLE_ERRORS),
                },
            }
        },
        **_session_paths(),
        "/api/charging/{vehicle_id}": _charging("setCharging"),
        "/api/ha/charging/{vehicle_id}": _charging("haSetCharging"),
        "/api/webhooks/enode": {
            "post": {
                "operationId": "enodeWebhook",
                "tags": ["Provider"],
                "summary": "Enode's webhook deliveries",
                "description": (
                    "Signed by Enode (`x-enode-signature: sha1=<HMAC-SHA1 of the body>` with "
                    "EVLINK_ENODE_WEBHOOK_SECRET). Stored, answered at once and worked off "
                    "after the answer; a delivery id seen before is acknowledged and ignored."
                ),
                "security": NO_KEY,
                "parameters": [
                    {
                        "name": "x-enode-signature",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^sha1=[0-9a-f]{40}$"},
                    },
                    {
                        "name": "x-enode-delivery",
                        "in": "header",
                        "required": False,
                        "description": "The delivery id; the body's SHA-256 when absent.",
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": _json(
                        {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {"event": {"type": "string"}},
                                **_PASS_THROUGH,
                            },
                        }
                    ),
                },
                "responses": {
                    "200": _ok("Accepted, or a duplicate.", _ref("WebhookAnswer"), limited=False),
                    **_error_responses(
                        errors.BadRequest,
                        errors.Unauthenticated,
                        errors.NotFound,
                        errors.PayloadTooLarge,
                        errors.DatabaseUnavailable,
                    ),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "tags": ["Operations"],
                "summary": "The process is up",
                "security": NO_KEY,
                "responses": {"200": _ok("Up.", _ref("Health"), limited=False)},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "tags": ["Operations"],
                "summary": "Ready to serve: the database answers (Redis is reported, when set)",
                "security": NO_KEY,
                "responses": {
                    "200": _ok("Ready.", _ref("Readiness"), limited=False),
                    "503": _ok(
                        "Not ready: the database does not answer (within 2 s).",
                        _ref("Readiness"),
                        limited=False,
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["Operations"],
                "summary": "Prometheus metrics",
                "security": NO_KEY,
                "responses": {
                    "200": {
                        "description": "The Prometheus text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/api/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["Documents"],
                "summary": "This document",
                "security": NO_KEY,
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1.",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["openapi", "info", "paths"],
                                "additionalProperties": True,
                            }
                        ),
                    }
                },
            }
        },
        "/api/docs": {
            "get": {
                "operationId": "docs",
                "tags": ["Documents"],
                "summary": "This document as a web page",
                "security": NO_KEY,
                "responses": {
                    "200": {
                        "description": "HTML, with no scripts.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }


@cache
def openapi_document() -> dict[str, Any]:
    """The whole document (built once; treat it as read-only)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "evlink REST API",
            "version": __version__,
            "summary": "EV charge state and charging control, compatible with Home Assistant.",
            "description": (
                "The REST paths of the original Home Assistant API, with the same bodies and "
                'error codes. Every error answers `{"detail": message, "code": CODE}`; '
                "the table below each path names the codes it can give. A wrong HTTP "
                "method gets 405 `METHOD_NOT_ALLOWED`. The GraphQL API is at `/graphql` "
                "(open it in a browser for the playground)."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "tags": [
            {"name": "Home Assistant", "description": "Read paths of the original service."},
            {"name": "Charging", "description": "Charging control (PRO tier)."},
            {"name": "Provider", "description": "What the provider calls."},
            {"name": "Operations", "description": "For load balancers and monitoring."},
            {"name": "Documents", "description": "This description of the API."},
        ],
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
            "headers": HEADERS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "evl_<random>_<checksum>",
                    "description": "An API key: `Authorization: Bearer evl_…`.",
                }
            },
        },
    }


async def openapi_json(request: Request) -> JSONResponse:
    """GET /api/openapi.json."""
    return JSONResponse(openapi_document())
