"""A status read's row without models (evlink.models.vehicles.VehicleRow.stored): the
same values, of the same types, as Tortoise's models of the row, on each backend."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from evlink.domain import ChargeStateData
from evlink.models import ChargeState, Vehicle
from evlink.models.vehicles import (
    StoredVehicle,
    VehicleRow,
    active_key_with_vehicle,
    as_model,
    charge_state_data,
    charge_state_of,
)
from evlink.resolvers.auth import hash_key
from tests.conftest import Server

NAMES = tuple(Vehicle._meta.fields_db_projection)


def _exact(value: object) -> tuple[type, str]:
    """A value with its type: 1 and 1.0, or two time zones of one instant, differ."""
    return (type(value), repr(value))


def _attributes(vehicle: Vehicle | StoredVehicle) -> dict[str, tuple[type, str]]:
    return {name: _exact(getattr(vehicle, name)) for name in NAMES}


def _state(state: ChargeStateData | None) -> str:
    return repr(state)  # every field's repr: types, and the time zone of last_updated


async def _row(key: str, vehicle_id: uuid.UUID) -> VehicleRow:
    found = await active_key_with_vehicle(hash_key(key), vehicle_id)
    assert found is not None
    return found[1]


async def test_a_stored_vehicle_has_the_values_and_types_of_tortoise_s_models(
    server: Server,
) -> None:
    user, key = await server.user()
    read = await server.vehicle(user, "charging")
    never = await server.vehicle(user)  # never read: no state, JSON defaults, no timestamps
    assert (await server.http.get(f"/api/status/{read.id}", headers=_auth(key))).is_success
    when = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    await Vehicle.filter(id=read.id).update(
        name=None,
        information={
            "displayName": 'Škoda Enyaq ☃ \u2028 "quoted" \\',
            "year": 2023,
            "nested": {"list": [1, 2.5, None, True, "x", 1e-05, 1e16, 2**70]},
        },
        location={"latitude": 1e-05, "longitude": -0.0, "lastUpdated": None},
        odometer=None,
        smart_charging_policy={"isEnabled": True, "deadline": None, "minimumChargeLimit": 0},
        last_seen=when,
        refreshed_at=when.replace(microsecond=0),
        removed_at=when - timedelta(days=1),
    )
    await ChargeState.filter(vehicle_id=read.id).update(
        last_updated=when, range=123.0, max_current=None, plugged_in_charger_id="ç-1"
    )

    for vehicle in (read, never):
        row = await _row(key, vehicle.id)
        assert row.converts_itself  # the way without models is the one measured here
        models = row.models()
        assert models is not None
        model, state = models
        expected = None if state is None else charge_state_data(state)
        for found in (row.stored(), row.stored_from_models()):
            assert found is not None
            assert _attributes(found[0]) == _attributes(model)
            assert _state(found[1]) == _state(expected)
        # The charge state alone (a refresh's read), by its own statement.
        assert _state(await charge_state_of(vehicle.id)) == _state(expected)
    never_found = (await _row(key, never.id)).stored()
    assert never_found is not None
    assert never_found[1] is None


async def test_no_vehicle_is_none_either_way(server: Server) -> None:
    user, key = await server.user()
    gone = await server.vehicle(user)
    await Vehicle.filter(id=gone.id).update(deleted_at=datetime.now(UTC))
    for vehicle_id in (gone.id, uuid.uuid4()):
        row = await _row(key, vehicle_id)
        assert row.stored() is None
        assert row.stored_from_models() is None
        assert await charge_state_of(vehicle_id) is None  # never read: no state stored


async def test_a_stored_vehicle_is_read_only_and_its_model_is_a_new_one_to_save(
    server: Server,
) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    assert (await server.http.get(f"/api/status/{vehicle.id}", headers=_auth(key))).is_success
    found = (await _row(key, vehicle.id)).stored()
    assert found is not None
    stored = found[0]

    with pytest.raises(AttributeError):
        stored.name = "Renamed"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del stored.location
    with pytest.raises(AttributeError):
        stored.anything_else  # type: ignore[attr-defined]  # noqa: B018
    assert stored.name == "Test plugged"

    model = as_model(stored)
    assert isinstance(model, Vehicle)
    assert model is not as_model(stored)
    assert as_model(model) is model
    assert _attributes(model) == _attributes(stored)
    model.name = "Renamed"
    await model.save(update_fields=["name"])
    assert (await Vehicle.get(id=vehicle.id)).name == "Renamed"
    assert stored.name == "Test plugged"  # what the row said


def _auth(key: str) -> dict[str, Any]:
    return {"Authorization": f"Bearer {key}"}
