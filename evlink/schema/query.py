"""Query, Mutation and Subscription: each field calls one use case and converts the result."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import TypeVar

import strawberry

from evlink.models.vehicles import AnyVehicle, as_model
from evlink.resolvers import accounts, charging, follow, vehicles
from evlink.schema import fanout
from evlink.schema import sessions as session_fields
from evlink.schema.context import Info
from evlink.schema.types import (
    ChargeState,
    ChargingAction,
    ChargingCommand,
    Vehicle,
    Viewer,
)

__all__ = ["Mutation", "Query", "Subscription"]

T = TypeVar("T")
P = TypeVar("P")


@strawberry.type
class Query:
    @strawberry.field(description="The caller, from the API key.")
    async def viewer(self, info: Info) -> Viewer:
        return Viewer.from_user(await info.context.user())

    @strawberry.field(description="The caller's vehicles.")
    async def vehicles(self, info: Info) -> list[Vehicle]:
        owned = await vehicles.list_vehicles(await info.context.user())
        await vehicles.ensure_synced(info.context.services, owned)
        for vehicle in owned:
            info.context.showing(vehicle)
        return [Vehicle.from_model(vehicle) for vehicle in owned]

    @strawberry.field(description="One of the caller's vehicles.")
    async def vehicle(self, info: Info, id: strawberry.ID) -> Vehicle:
        user = await info.context.user()
        found = await vehicles.get_vehicle_with_state(user, str(id), info.context.along)
        vehicle: AnyVehicle = found[0]
        stored = found[1]
        if vehicle.refreshed_at is None:
            stored = None  # ensure_synced reads it from its provider now: not what is stored
            vehicle = as_model(vehicle)  # which it changes in place
            await vehicles.ensure_synced(info.context.services, [vehicle])
        info.context.showing(vehicle)
        return Vehicle.from_model(vehicle, stored)

    @strawberry.field(description="One of the caller's charging commands.")
    async def charging_command(self, info: Info, id: strawberry.ID) -> ChargingCommand:
        user = await info.context.user()
        return ChargingCommand.from_model(await charging.get_command(user, str(id)))

    charging_session = strawberry.field(
        resolver=session_fields.charging_session,
        description="One of the caller's charging sessions.",
    )


@strawberry.type
class Mutation:
    @strawberry.mutation(
        description=(
            "Start or stop charging (Pro tier). Returns the command as PENDING; follow it "
            "with the chargingCommand subscription until CONFIRMED, FAILED, CANCELLED or "
            "TIMED_OUT. "
            "The same idempotencyKey with the same arguments returns the first command."
        )
    )
    async def set_charging(
        self,
        info: Info,
        vehicle_id: strawberry.ID,
        action: ChargingAction,  # type: ignore[valid-type]
        idempotency_key: str | None = None,
    ) -> ChargingCommand:
        user = await info.context.user()
        requested = await charging.set_charging(
            info.context.services, user, str(vehicle_id), action, idempotency_key
        )
        return ChargingCommand.from_model(requested.command)

    @strawberry.mutation(
        description=(
            "The provider's page where the caller connects a vehicle account; the cars "
            "then appear in `vehicles` (through the provider's webhooks or `evlink enode sync`)."
        )
    )
    async def link_vehicle_account(self, info: Info, redirect_uri: str) -> str:
        user = await info.context.user()
        return await accounts.link_vehicle_account(info.context.services, user, redirect_uri)

    set_tariff = strawberry.mutation(
        resolver=session_fields.set_tariff,
        description="Set the caller's tariff (price per kWh, currency, optional time-of-use "
        "periods in timeZone, default UTC). Sessions opened from then on are priced by it; "
        "earlier ones keep the tariff they opened with.",
    )


@strawberry.type
class Subscription:
    charging_session = strawberry.subscription(
        resolver=session_fields.charging_session_events,
        description="The vehicle's open charging session now (if any), then each change: "
        "as it grows, and once more when it ends.",
    )

    @strawberry.subscription(
        description="The command now, then each change; completes after an end state."
    )
    async def charging_command(
        self, info: Info, id: strawberry.ID
    ) -> AsyncGenerator[ChargingCommand, None]:
        services = info.context.services
        command = await charging.get_command(await info.context.user(), str(id))
        # Ended with an error once the user no longer owns the car (evlink.revocation).
        changes = follow.follow_command(services, command, watching=info.context.watching)
        async for payload in _relayed(info, "chargingCommand", changes, ChargingCommand.from_model):
            yield payload

    @strawberry.subscription(description="The vehicle's charge state now, then each change.")
    async def charge_state(
        self, info: Info, vehicle_id: strawberry.ID
    ) -> AsyncGenerator[ChargeState, None]:
        # Ended with an error once the user no longer owns the car (evlink.revocation).
        # After the first, the states are forwarded to the socket (schema.fanout). The
        # vehicle is not kept in this frame: an idle subscription holds only what it needs.
        states = follow.follow_charge_state(
            info.context.services,
            await vehicles.get_vehicle(await info.context.user(), str(vehicle_id)),
            watching=info.context.watching,
            forwarding=fanout.forwarding,
        )
        async for payload in _relayed(info, "chargeState", states, fanout.shared_payload):
            yield payload


async def _relayed(
    info: Info, name: str, followed: AsyncGenerator[T, None], shape: Callable[[T], P]
) -> AsyncGenerator[P, None]:
    """``shape`` of each item a use case follows, counted as the subscription ``name``;
    the follow is closed (its event subscription ended) with the subscription."""
    async with info.context.services.metrics.subscription(name), aclosing(followed):
        async for item in followed:
            yield shape(item)
