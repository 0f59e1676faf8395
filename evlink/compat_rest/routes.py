"""Documented REST paths. Each route: authenticate, call one use case, shape the body."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from evlink import jsonbody
from evlink.compat_rest.bodies import (
    RenderedJson,
    charging_body,
    me_body,
    render,
    status_body,
    vehicle_body,
)
from evlink.domain import ChargingAction
from evlink.errors import BadRequest, UnsupportedMediaType
from evlink.models import User
from evlink.requestheaders import client_address, header, media_type
from evlink.resolvers import auth, charging, follow, vehicles
from evlink.services import Services

__all__ = ["authenticated", "routes", "services_of"]


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def authenticated(
    request: Request,
    *,
    reads: bool = True,
    lookup: auth.KeyLookup | None = None,
    services: Services | None = None,
) -> User:
    """The caller (:func:`~evlink.resolvers.auth.authenticate_request`), charged to its
    rate limits (429 past them, :mod:`evlink.ratelimit`); ``reads=False`` for a charging
    command, which the use case charges to the ``commands`` quota once it is sent.
    ``lookup``: the key's read, when the route reads more along with it; ``services``:
    the app's, when the route has them already."""
    if services is None:
        services = services_of(request)
    caller = await auth.authenticate_request(
        services,
        header(request.scope, b"authorization"),
        client_address(request),
        lookup,
    )
    if services.limiter is not None:
        await services.limiter.admit(caller.user, caller.key_id, reads=reads)
    return caller.user


def _status_response(
    result: vehicles.VehicleStatus, shape: Callable[[vehicles.VehicleStatus], Any]
) -> Response:
    """``shape(result)`` as JSON, rendered once per status (the read cache shares one)."""
    body = result.rendered.get(shape)
    if body is None:
        body = result.rendered[shape] = render(shape(result))
    return RenderedJson(body)


def _vehicle_status_body(result: vehicles.VehicleStatus) -> dict[str, Any]:
    return vehicle_body(result.vehicle, result.charge_state)


async def _read_status(request: Request) -> vehicles.VehicleStatus:
    """The caller's status of the path's vehicle: on a miss of the read cache the key and
    the vehicle are read in one statement (:class:`~evlink.resolvers.vehicles.StatusRead`),
    judged in the same order as before (the key, the rate limits, the vehicle)."""
    services = services_of(request)
    vehicle_id = request.path_params["vehicle_id"]
    along = vehicles.StatusRead(services, vehicle_id)
    user = await authenticated(request, lookup=along.lookup, services=services)
    return await vehicles.read_status(services, user, vehicle_id, along)


async def status(request: Request) -> Response:
    """GET /api/status/{vehicle_id}: the documented status body."""
    return _status_response(await _read_status(request), status_body)


async def ha_me(request: Request) -> JSONResponse:
    user = await authenticated(request)
    owned = await vehicles.list_vehicles(user)
    return JSONResponse(me_body(user, len(owned)))


async def ha_vehicles(request: Request) -> JSONResponse:
    """The user's vehicles with their stored charge state (a provider call only on first sight)."""
    user = await authenticated(request)
    owned = await vehicles.ensure_synced(services_of(request), await vehicles.list_vehicles(user))
    states = [await vehicles.stored_charge_state(vehicle) for vehicle in owned]
    return JSONResponse(
        [vehicle_body(vehicle, state) for vehicle, state in zip(owned, states, strict=True)]
    )


async def ha_status(request: Request) -> Response:
    """GET /api/ha/status/{vehicle_id}: the whole vehicle, charge state fresh."""
    return _status_response(await _read_status(request), _vehicle_status_body)


MAX_WAIT = 60.0


def _wait_seconds(request: Request) -> float | None:
    raw = request.query_params.get("wait")
    if raw is None:
        return None
    try:
        wait = float(raw)
    except ValueError:
        raise BadRequest("wait must be a number of seconds") from None
    if not 0 <= wait <= MAX_WAIT:
        raise BadRequest(f"wait must be between 0 and {MAX_WAIT:g} seconds")
    return wait


def _check_json(request: Request) -> None:
    """JSON, or no content type at all (clients that only send a body); anything else is 415."""
    given = media_type(request.scope)
    if given and given != "application/json" and not given.endswith("+json"):
        raise UnsupportedMediaType()


async def _action(request: Request) -> ChargingAction:
    _check_json(request)
    try:
        body = jsonbody.loads(await request.body())
    except jsonbody.Refused as refused:
        raise BadRequest(refused.msg) from None
    except json.JSONDecodeError:
        raise BadRequest('body must be JSON: {"action": "START"} or {"action": "STOP"}') from None
    if not isinstance(body, dict):
        raise BadRequest('body must be a JSON object: {"action": "START"}')
    return charging.parse_action(body.get("action"))


async def set_charging(request: Request) -> JSONResponse:
    """POST /api/charging/{vehicle_id}: start or stop; ``?wait=`` waits for the outcome."""
    user = await authenticated(request, reads=False)  # the command quota is charged when it is sent
    wait = _wait_seconds(request)
    action = await _action(request)
    services = services_of(request)
    requested = await charging.set_charging(
        services,
        user,
        request.path_params["vehicle_id"],
        action,
        request.headers.get("idempotency-key"),
    )
    command = requested.command
    if wait:
        command = await follow.wait_for_command(services, command, wait)
    return JSONResponse(charging_body(requested.vehicle, command, with_state=wait is not None))


routes: list[BaseRoute] = [
    Route("/api/status/{vehicle_id}", status, methods=["GET"]),
    Route("/api/ha/me", ha_me, methods=["GET"]),
    Route("/api/ha/vehicles", ha_vehicles, methods=["GET"]),
    Route("/api/ha/status/{vehicle_id}", ha_status, methods=["GET"]),
    Route("/api/charging/{vehicle_id}", set_charging, methods=["POST"]),
    Route("/api/ha/charging/{vehicle_id}", set_charging, methods=["POST"]),
]
