"""REST paths of charging sessions, for Home Assistant's REST sensors and spreadsheets.

``GET /api/ha/sessions/{vehicle_id}``: newest first (``?limit=`` 1-100, default 20;
``?since=`` an ISO 8601 time), as JSON with the totals of the sessions listed, or as
CSV (``Accept: text/csv`` or ``?format=csv``: a header row, one row per session, ISO
timestamps, dot decimals). ``GET /api/ha/sessions/{vehicle_id}/current``: the open
session, or ``{"active": false}``. Authenticated, charged and owned as the status is.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from evlink.compat_rest.routes import authenticated, services_of
from evlink.domain import format_timestamp, parse_timestamp
from evlink.errors import BadRequest
from evlink.requestheaders import header
from evlink.resolvers import sessions, vehicles
from evlink.resolvers.sessions import Summary, totals

__all__ = ["SESSION_FIELDS", "routes", "session_body", "sessions_body"]

DEFAULT_LIMIT = 20

# The keys of a session body, in order: also the CSV's columns.
SESSION_FIELDS = (
    "id",
    "vehicleId",
    "active",
    "startedAt",
    "endedAt",
    "endReason",
    "startedBy",
    "commandId",
    "batteryStart",
    "batteryEnd",
    "rangeStart",
    "rangeEnd",
    "batteryCapacity",
    "energyKwh",
    "energyMethod",
    "energyFromPower",
    "energyFromBattery",
    "sampleCount",
    "peakPower",
    "averagePower",
    "durationSeconds",
    "cost",
    "currency",
)


def session_body(found: Summary) -> dict[str, Any]:
    """One session, keys as :data:`SESSION_FIELDS` (GraphQL's names, the REST casing)."""
    session = found.session
    values = (
        str(session.id),
        str(session.vehicle_id),  # type: ignore[attr-defined]
        found.active,
        format_timestamp(session.started_at),
        format_timestamp(session.ended_at),
        None if session.end_reason is None else session.end_reason.value,
        session.started_by.value,
        None if session.command_id is None else str(session.command_id),
        session.battery_start,
        session.battery_end,
        session.range_start,
        session.range_end,
        session.battery_capacity,
        found.energy_kwh,
        found.energy_method.value,
        found.energy_from_power,
        found.energy_from_battery,
        session.sample_count,
        session.peak_power,
        found.average_power,
        found.duration_seconds,
        found.cost,
        found.currency,
    )
    return dict(zip(SESSION_FIELDS, values, strict=True))


def sessions_body(vehicle_id: str, found: list[Summary]) -> dict[str, Any]:
    """The list and its totals (``total.cost`` is null when currencies differ)."""
    total = totals(found)
    return {
        "vehicleId": vehicle_id,
        "sessions": [session_body(s) for s in found],
        "total": {
            "count": total.count,
            "energyKwh": total.energy_kwh,
            "cost": total.cost,
            "currency": total.currency,
            "durationSeconds": total.duration_seconds,
        },
    }


def sessions_csv(found: list[Summary]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(SESSION_FIELDS)
    for summary in found:
        writer.writerow(_cell(value) for value in session_body(summary).values())
    return out.getvalue()


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise BadRequest("limit must be a whole number from 1 to 100") from None
    if not 1 <= limit <= sessions.MAX_LIST:
        raise BadRequest("limit must be a whole number from 1 to 100")
    return limit


def _since(request: Request) -> Any:
    raw = request.query_params.get("since")
    if raw is None:
        return None
    since = parse_timestamp(raw.replace(" ", "+"))  # a '+' in a query string reads as a space
    if since is None:
        raise BadRequest("since must be an ISO 8601 time, such as 2025-05-01T00:00:00Z")
    return since


def _wants_csv(request: Request) -> bool:
    given = request.query_params.get("format")
    if given is not None and given not in ("csv", "json"):
        raise BadRequest("format must be csv or json")
    if given is not None:
        return given == "csv"
    accept = header(request.scope, b"accept") or ""
    return "text/csv" in accept


async def list_sessions(request: Request) -> Response:
    """GET /api/ha/sessions/{vehicle_id}."""
    user = await authenticated(request)
    limit, since, as_csv = _limit(request), _since(request), _wants_csv(request)
    services = services_of(request)
    vehicle = await vehicles.get_vehicle(user, request.path_params["vehicle_id"])
    found = [
        sessions.summary(s)
        for s in await sessions.list_sessions(services, vehicle, last=limit, since=since)
    ]
    if as_csv:
        return Response(sessions_csv(found), media_type="text/csv; charset=utf-8")
    return JSONResponse(sessions_body(str(vehicle.id), found))


async def current_session(request: Request) -> JSONResponse:
    """GET /api/ha/sessions/{vehicle_id}/current."""
    user = await authenticated(request)
    services = services_of(request)
    vehicle = await vehicles.get_vehicle(user, request.path_params["vehicle_id"])
    session = await sessions.current_session(services, vehicle)
    if session is None:
        return JSONResponse({"active": False})
    return JSONResponse(session_body(sessions.summary(session)))


routes: list[BaseRoute] = [
    Route("/api/ha/sessions/{vehicle_id}", list_sessions, methods=["GET"]),
    Route("/api/ha/sessions/{vehicle_id}/current", current_session, methods=["GET"]),
]
