"""GraphQL types: thin dataclasses, each built from the domain by one function."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

import strawberry
from strawberry.scalars import JSON

from evlink.domain import ChargeStateData, parse_timestamp, vehicle_name
from evlink.domain import ChargingAction as ChargingActionModel
from evlink.models import ChargingCommand as ChargingCommandModel
from evlink.models import Tier as TierModel
from evlink.models import User
from evlink.models.commands import CommandState
from evlink.models.vehicles import AnyVehicle
from evlink.resolvers import charging, vehicles
from evlink.schema import sessions as session_fields
from evlink.schema.context import Info
from evlink.schema.quotas import Quota

__all__ = [
    "ChargeState",
    "ChargingAction",
    "ChargingCommand",
    "ChargingCommandState",
    "Vehicle",
    "Viewer",
]

Tier = strawberry.enum(TierModel, description="A user's plan; charging control needs PRO.")
ChargingAction = strawberry.enum(ChargingActionModel, description="Start or stop charging.")
ChargingCommandState = strawberry.enum(
    CommandState,
    name="ChargingCommandState",
    description="PENDING until the vehicle's powerDeliveryState matches the wish; then final.",
)


@strawberry.type(description="The authenticated caller.")
class Viewer:
    id: strawberry.ID
    email: str
    tier: Tier  # type: ignore[valid-type]

    @classmethod
    def from_user(cls, user: User) -> Viewer:
        return cls(id=strawberry.ID(str(user.id)), email=user.email, tier=user.tier)

    @strawberry.field(
        description="The caller's rate limits: burst for this API key, reads and commands "
        "for the user's tier (this request included)."
    )
    async def quotas(self, info: Info) -> list[Quota]:
        context = info.context
        user = await context.user()
        if context.services.limiter is None:
            return []
        keys = [context.key_id] if context.key_id else []
        return [Quota.from_state(s) for s in await context.services.limiter.usage(user, keys)]

    tariff = strawberry.field(
        resolver=session_fields.viewer_tariff, description="The caller's tariff, or null."
    )


@strawberry.type(description="A vehicle's charge state as last reported by the vehicle.")
class ChargeState:
    battery_level: int | None = strawberry.field(description="Battery, percent.")
    range: float | None = strawberry.field(description="Estimated range, km.")
    is_plugged_in: bool | None
    is_charging: bool | None
    battery_capacity: float | None = strawberry.field(description="kWh.")
    charge_limit: int | None = strawberry.field(description="Percent.")
    charge_rate: float | None = strawberry.field(description="kW.")
    charge_time_remaining: int | None = strawberry.field(description="Minutes to full.")
    is_fully_charged: bool | None
    last_updated: datetime | None
    power_delivery_state: str = strawberry.field(
        description="Open enum, e.g. UNPLUGGED, PLUGGED_IN:CHARGING, PLUGGED_IN:STOPPED."
    )
    max_current: float | None = strawberry.field(description="Amps.")

    @classmethod
    def from_data(cls, state: ChargeStateData) -> ChargeState:
        return cls(
            battery_level=state.battery_level,
            range=state.range,
            is_plugged_in=state.is_plugged_in,
            is_charging=state.is_charging,
            battery_capacity=state.battery_capacity,
            charge_limit=state.charge_limit,
            charge_rate=state.charge_rate,
            charge_time_remaining=state.charge_time_remaining,
            is_fully_charged=state.is_fully_charged,
            last_updated=state.last_updated,
            power_delivery_state=state.power_delivery_state,
            max_current=state.max_current,
        )


@strawberry.type
class VehicleInformation:
    vin: str | None
    brand: str | None
    model: str | None
    year: int | None
    display_name: str | None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> VehicleInformation:
        year = raw.get("year")
        return cls(
            vin=_opt_str(raw.get("vin")),
            brand=_opt_str(raw.get("brand")),
            model=_opt_str(raw.get("model")),
            year=year if isinstance(year, int) else None,
            display_name=_opt_str(raw.get("displayName")),
        )


@strawberry.type
class Location:
    latitude: float | None
    longitude: float | None
    last_updated: datetime | None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Location:
        return cls(
            latitude=_opt_float(raw.get("latitude")),
            longitude=_opt_float(raw.get("longitude")),
            last_updated=parse_timestamp(raw.get("lastUpdated")),
        )


@strawberry.type
class Odometer:
    distance: float | None = strawberry.field(description="km.")
    last_updated: datetime | None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Odometer:
        return cls(
            distance=_opt_float(raw.get("distance")),
            last_updated=parse_timestamp(raw.get("lastUpdated")),
        )


@strawberry.type
class SmartChargingPolicy:
    is_enabled: bool
    deadline: str | None
    minimum_charge_limit: int | None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SmartChargingPolicy:
        minimum = raw.get("minimumChargeLimit")
        return cls(
            is_enabled=raw.get("isEnabled") is True,
            deadline=_opt_str(raw.get("deadline")),
            minimum_charge_limit=round(minimum) if isinstance(minimum, int | float) else None,
        )


@strawberry.type
class Capability:
    is_capable: bool
    intervention_ids: list[str]


@strawberry.type(description="What the vehicle can report and do, per its provider.")
class Capabilities:
    information: Capability
    charge_state: Capability
    location: Capability
    odometer: Capability
    set_max_current: Capability
    start_charging: Capability
    stop_charging: Capability
    smart_charging: Capability

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Capabilities:
        def capability(name: str) -> Capability:
            block = raw.get(name) or {}
            return Capability(
                is_capable=block.get("isCapable") is True,
                intervention_ids=[str(i) for i in block.get("interventionIds") or []],
            )

        return cls(
            information=capability("information"),
            charge_state=capability("chargeState"),
            location=capability("location"),
            odometer=capability("odometer"),
            set_max_current=capability("setMaxCurrent"),
            start_charging=capability("startCharging"),
            stop_charging=capability("stopCharging"),
            smart_charging=capability("smartCharging"),
        )


@strawberry.type(description="A vehicle of the caller's.")
class Vehicle:
    id: strawberry.ID
    name: str | None
    vendor: str | None
    provider: str
    provider_vehicle_id: str | None = strawberry.field(
        description="The provider's id of this vehicle (Enode's vehicle id)."
    )
    information: VehicleInformation | None
    location: Location | None
    odometer: Odometer | None
    smart_charging_policy: SmartChargingPolicy | None
    capabilities: Capabilities
    last_seen: datetime | None
    is_reachable: bool | None
    model: strawberry.Private[AnyVehicle]
    # The charge state stored when the vehicle was read, in the same statement (the
    # `vehicle` query's): chargeState needs no query of its own while it is fresh.
    stored: strawberry.Private[ChargeStateData | None] = None

    @classmethod
    def from_model(cls, vehicle: AnyVehicle, stored: ChargeStateData | None = None) -> Vehicle:
        """``stored``: the vehicle's stored charge state, when it was read with it.

        The JSON blocks (information, location, odometer, smartChargingPolicy,
        capabilities) are built when first read (:meth:`__getattr__`): a query that asks
        for none of them decodes none (a stored vehicle's JSON columns stay undecoded)."""
        made = cls.__new__(cls)
        attrs = made.__dict__
        attrs["id"] = strawberry.ID(str(vehicle.id))
        # The information is read only for a vehicle without a name of its own.
        attrs["name"] = vehicle.name or vehicle_name(None, vehicle.information)
        attrs["vendor"] = vehicle.vendor
        attrs["provider"] = vehicle.provider
        attrs["provider_vehicle_id"] = vehicle.provider_vehicle_id
        attrs["last_seen"] = vehicle.last_seen
        attrs["is_reachable"] = vehicle.is_reachable
        attrs["model"] = vehicle
        attrs["stored"] = stored
        return made

    def __getattr__(self, name: str) -> Any:
        # Only for an attribute not set yet: a block of from_model's, built once.
        build = _BLOCKS.get(name)
        model = self.__dict__.get("model")
        if build is None or model is None:
            raise AttributeError(name)
        value = build(model)
        self.__dict__[name] = value
        return value

    @strawberry.field(
        description=(
            "Refreshed from the provider when older than the max age. Null, with an error "
            "for this vehicle only, when it cannot be read (e.g. PROVIDER_LINK_MISSING)."
        )
    )
    async def charge_state(self, info: Info) -> ChargeState | None:
        services = info.context.services
        status = await vehicles.vehicle_status(services, self.model, stored=self.stored)
        return ChargeState.from_data(status.charge_state)

    @strawberry.field(description="The latest charging commands, newest first.")
    async def charging_commands(self, last: int = 10) -> list[ChargingCommand]:
        commands = await charging.list_commands(self.model, last)
        return [ChargingCommand.from_model(command) for command in commands]

    charging_sessions = strawberry.field(
        resolver=session_fields.charging_sessions,
        description="Charging sessions, newest first, started before `before`; `last` "
        "clamped to 0-100.",
    )
    current_charging_session = strawberry.field(
        resolver=session_fields.current_charging_session,
        description="The session in progress, or null.",
    )
    charging_statistics = strawberry.field(
        resolver=session_fields.charging_statistics,
        description="Energy, cost, count and duration of the sessions started in [from, "
        "to), per day, week or month of the owner's tariff time zone (UTC without one).",
    )


_BLOCKS: dict[str, Callable[[AnyVehicle], Any]] = {
    "information": lambda vehicle: (
        VehicleInformation.from_json(vehicle.information) if vehicle.information else None
    ),
    "location": lambda vehicle: Location.from_json(vehicle.location) if vehicle.location else None,
    "odometer": lambda vehicle: Odometer.from_json(vehicle.odometer) if vehicle.odometer else None,
    "smart_charging_policy": lambda vehicle: (
        SmartChargingPolicy.from_json(vehicle.smart_charging_policy)
        if vehicle.smart_charging_policy
        else None
    ),
    "capabilities": lambda vehicle: Capabilities.from_json(vehicle.capabilities or {}),
}
"""How :meth:`Vehicle.from_model` builds each of the vehicle's blocks, when first read."""


@strawberry.type(description="A request to start or stop charging, followed until confirmed.")
class ChargingCommand:
    id: strawberry.ID
    vehicle_id: strawberry.ID
    action: ChargingAction  # type: ignore[valid-type]
    state: ChargingCommandState  # type: ignore[valid-type]
    attempts: int
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    failure_reason: str | None
    provider_action_id: str | None
    provider_action: JSON | None = strawberry.field(
        description="The provider's action as it reported it (Enode's ChargeAction)."
    )

    @classmethod
    def from_model(cls, command: ChargingCommandModel) -> ChargingCommand:
        return cls(
            id=strawberry.ID(str(command.id)),
            vehicle_id=strawberry.ID(str(command.vehicle_id)),  # type: ignore[attr-defined]
            action=command.action,
            state=command.state,
            attempts=command.attempts,
            created_at=command.created_at,
            updated_at=command.updated_at,
            completed_at=command.completed_at,
            failure_reason=command.failure_reason,
            provider_action_id=command.provider_action_id,
            provider_action=cast(JSON | None, command.provider_action),
        )

    @strawberry.field
    async def vehicle(self, info: Info) -> Vehicle:
        user = await info.context.user()
        return Vehicle.from_model(await vehicles.get_vehicle(user, str(self.vehicle_id)))


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _opt_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
