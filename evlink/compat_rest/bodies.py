"""The REST shapes: one function per body, from the resolvers' results."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from evlink.domain import ChargeStateData, format_timestamp, vehicle_name
from evlink.models import ChargingCommand, User, Vehicle
from evlink.models.vehicles import AnyVehicle
from evlink.resolvers.vehicles import VehicleStatus

__all__ = [
    "RenderedJson",
    "charge_state_body",
    "charging_body",
    "me_body",
    "render",
    "status_body",
    "vehicle_body",
]


# Starlette's JSONResponse renders with these options; made once (json.dumps makes an
# encoder per call when given any).
_encode = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
).encode


def render(body: Any) -> bytes:
    """``body`` as the bytes of Starlette's ``JSONResponse(body).body`` (NaN and the
    infinities refused with ``ValueError`` as there)."""
    return _encode(body).encode("utf-8")


_JSON_TYPE = (b"content-type", b"application/json")


class RenderedJson(Response):
    """A JSON body already rendered (:func:`render`), answered with status 200 and the
    same two headers as ``Response(body, media_type="application/json")``, made
    directly: Starlette's constructor makes them through ``init_headers`` (1.8 µs
    against 0.3 µs, on each cached status read). tests/compat_rest/test_bodies.py
    compares the two."""

    media_type = "application/json"

    def __init__(self, body: bytes) -> None:
        self.status_code = 200
        self.body = body
        self.background = None
        self.raw_headers = [(b"content-length", b"%d" % len(body)), _JSON_TYPE]


def charge_state_body(state: ChargeStateData) -> dict[str, Any]:
    """The documented ``chargeState`` block, keys in the documented order."""
    return {
        "batteryLevel": state.battery_level,
        "range": state.range,
        "isPluggedIn": state.is_plugged_in,
        "isCharging": state.is_charging,
        "batteryCapacity": state.battery_capacity,
        "chargeLimit": state.charge_limit,
        "chargeRate": state.charge_rate,
        "chargeTimeRemaining": state.charge_time_remaining,
        "isFullyCharged": state.is_fully_charged,
        "lastUpdated": format_timestamp(state.last_updated),
        "powerDeliveryState": state.power_delivery_state,
        "maxCurrent": state.max_current,
    }


def status_body(status: VehicleStatus) -> dict[str, Any]:
    """``GET /api/status/{id}``: legacy top-level keys, then ``chargeState``."""
    vehicle, state = status.vehicle, status.charge_state
    body: dict[str, Any] = {
        "batteryLevel": state.battery_level,
        "range": state.range,
        "isCharging": state.is_charging,
        "isPluggedIn": state.is_plugged_in,
        "chargingState": state.power_delivery_state,
        # The provider's information is decoded only for a car without a name of its own.
        "vehicleName": vehicle.name or vehicle_name(None, vehicle.information),
        "lastSeen": format_timestamp(vehicle.last_seen),
        "isReachable": vehicle.is_reachable,
        "chargeState": charge_state_body(state),
    }
    location = vehicle.location or {}
    if location.get("latitude") is not None and location.get("longitude") is not None:
        body["latitude"] = location["latitude"]
        body["longitude"] = location["longitude"]
    return body


def vehicle_body(vehicle: AnyVehicle, state: ChargeStateData | None) -> dict[str, Any]:
    """A whole vehicle (``/api/ha/vehicles``, ``/api/ha/status/{id}``)."""
    return {
        "id": str(vehicle.id),
        "enode_vehicle_id": vehicle.provider_vehicle_id,
        "provider": vehicle.provider,
        "name": vehicle_name(vehicle.name, vehicle.information),
        "vendor": vehicle.vendor,
        "lastSeen": format_timestamp(vehicle.last_seen),
        "isReachable": vehicle.is_reachable,
        "information": vehicle.information or None,
        "chargeState": None if state is None else charge_state_body(state),
        "smartChargingPolicy": vehicle.smart_charging_policy or None,
        "location": vehicle.location,
        "odometer": vehicle.odometer,
        "capabilities": vehicle.capabilities or None,
    }


def me_body(user: User, vehicle_count: int) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "tier": user.tier.value,
        "vehicleCount": vehicle_count,
    }


def charging_body(
    vehicle: Vehicle, command: ChargingCommand, *, with_state: bool = False
) -> dict[str, Any]:
    """``POST /api/charging/{id}``: the documented body, plus ``command_id`` (and ``state``)."""
    body: dict[str, Any] = {
        "status": "success",
        "vehicle_id": str(vehicle.id),
        "enode_vehicle_id": vehicle.provider_vehicle_id,
        "action": command.action.value,
        "enode_response": command.provider_action,
        "command_id": str(command.id),
    }
    if with_state:
        body["state"] = command.state.value
        body["failure_reason"] = command.failure_reason
    return body
