"""evlink.schema.types.Vehicle: its JSON blocks are built from the vehicle when read."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, cast

from evlink.models.vehicles import AnyVehicle
from evlink.schema.types import Capabilities, Location, Vehicle, VehicleInformation

BLOCKS = ("information", "location", "odometer", "smart_charging_policy", "capabilities")


class ReadVehicle:
    """A vehicle that notes which of its attributes were read."""

    def __init__(self, **values: Any) -> None:
        self.values = values
        self.read: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.read.append(name)
        return self.values[name]


def _vehicle(name: str | None) -> ReadVehicle:
    return ReadVehicle(
        id=uuid.uuid4(),
        name=name,
        vendor="TESLA",
        provider="enode",
        provider_vehicle_id="v1",
        information={"brand": "Tesla", "model": "Model 3", "displayName": "Red"},
        location={"latitude": 59.3, "longitude": 18.1},
        odometer=None,
        smart_charging_policy={},
        capabilities={"chargeState": {"isCapable": True, "interventionIds": [7]}},
        last_seen=datetime(2026, 1, 1, tzinfo=UTC),
        is_reachable=True,
    )


def test_a_block_is_read_from_the_vehicle_only_when_asked_for() -> None:
    vehicle = _vehicle("Mine")
    built = Vehicle.from_model(cast(AnyVehicle, vehicle))

    assert built.name == "Mine"
    assert not set(BLOCKS) & set(vehicle.read)
    assert built.location == Location(latitude=59.3, longitude=18.1, last_updated=None)
    reads = vehicle.read.count("location")
    assert reads > 0
    assert built.location is built.location  # built once
    assert vehicle.read.count("location") == reads
    assert not {"information", "capabilities"} & set(vehicle.read)


def test_the_blocks_are_those_built_from_their_json() -> None:
    vehicle = _vehicle(None)
    built = Vehicle.from_model(cast(AnyVehicle, vehicle))

    assert built.name == "Red"  # the information's displayName, for a car without a name
    assert built.information == VehicleInformation.from_json(vehicle.values["information"])
    assert built.capabilities == Capabilities.from_json(vehicle.values["capabilities"])
    assert built.capabilities.charge_state.intervention_ids == ["7"]
    assert built.odometer is None
    assert built.smart_charging_policy is None  # an empty block is none
    try:
        built.no_such_field  # noqa: B018
    except AttributeError:
        pass
    else:
        raise AssertionError("an unknown attribute was found")
