"""The Provider protocol: where vehicles are read and controlled.

Providers speak :mod:`evlink.domain`'s types (the simulator produces them, the Enode
client parses them from JSON) and raise only :mod:`evlink.errors` errors; they import
nothing above them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from evlink.domain import ChargeAction, ChargingAction, ProviderUpdate, VehicleData

__all__ = ["Provider", "UpdateSink"]

UpdateSink = Callable[[ProviderUpdate], Awaitable[None]]


class Provider(Protocol):
    """Where vehicles are read and controlled. Raises only :mod:`evlink.errors` errors."""

    name: str

    async def start(self, sink: UpdateSink) -> None:
        """Begin pushing updates (vehicle changes, action changes) into ``sink``."""

    async def aclose(self) -> None:
        """Stop pushing updates and release connections."""

    async def get_vehicle(self, vehicle_id: str) -> VehicleData: ...

    async def list_vehicles(self, user_id: str) -> list[VehicleData]: ...

    async def set_charging(self, vehicle_id: str, action: ChargingAction) -> ChargeAction:
        """Ask the vehicle to start or stop; 400/422 rules raise evlink's errors."""
        ...

    async def get_action(self, action_id: str) -> ChargeAction: ...

    async def cancel_action(self, action_id: str) -> ChargeAction: ...

    async def link_user(self, user_id: str, redirect_uri: str) -> str:
        """The URL where the user connects a vehicle account to ``user_id``."""
        ...
