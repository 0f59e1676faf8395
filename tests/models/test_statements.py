"""The hot reads' statements (evlink.models.statements) give what Tortoise's queries give."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from evlink.models import ApiKey, ChargeState, User, Vehicle
from evlink.models.users import active_key_with_user
from evlink.models.vehicles import (
    StoredVehicle,
    active_key_with_vehicle,
    charge_state_data,
    vehicle_with_charge_state,
)
from evlink.resolvers.auth import hash_key
from tests.conftest import Server


def _fields(model: User | Vehicle | ChargeState | StoredVehicle) -> dict[str, object]:
    names = Vehicle._meta.fields_db_projection if isinstance(model, StoredVehicle) else None
    return {name: getattr(model, name) for name in names or model._meta.fields_db_projection}


async def test_the_hot_reads_give_what_tortoise_s_own_queries_give(server: Server) -> None:
    # Every timestamp set, one with microseconds and one without: SQLite stores them as
    # text, which the statements parse their own way.
    when = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    user, key = await server.user()
    vehicle = await server.vehicle(user, "charging")
    headers = {"Authorization": f"Bearer {key}"}
    assert (await server.http.get(f"/api/status/{vehicle.id}", headers=headers)).is_success
    await Vehicle.filter(id=vehicle.id).update(
        last_seen=when,
        refreshed_at=when.replace(microsecond=0),
        removed_at=when - timedelta(days=1),
        location={"latitude": 59.9, "longitude": 10.7, "lastUpdated": None},
    )
    await ChargeState.filter(vehicle_id=vehicle.id).update(last_updated=when, battery_level=42)
    await ApiKey.filter(hash=hash_key(key)).update(last_used_at=when)

    found = await vehicle_with_charge_state(vehicle.id)
    active = await active_key_with_user(hash_key(key))

    assert found is not None
    assert found[1] is not None
    assert _fields(found[0]) == _fields(await Vehicle.get(id=vehicle.id))
    assert found[1] == charge_state_data(await ChargeState.get(vehicle_id=vehicle.id))
    assert found[0].last_seen == when
    assert found[1].last_updated == when
    assert active is not None
    assert _fields(active.user) == _fields(await User.get(id=user.id))
    stored_key = await ApiKey.get(hash=hash_key(key))
    assert (active.id, active.last_used_at) == (stored_key.id, when)


async def test_the_key_and_the_vehicle_in_one_statement_are_what_each_read_gives(
    server: Server,
) -> None:
    user, key = await server.user()
    other, _ = await server.user()
    vehicle = await server.vehicle(user, "charging")
    theirs = await server.vehicle(other)  # never read: no charge state stored
    gone = await server.vehicle(user)
    headers = {"Authorization": f"Bearer {key}"}
    assert (await server.http.get(f"/api/status/{vehicle.id}", headers=headers)).is_success
    await Vehicle.filter(id=gone.id).update(deleted_at=datetime.now(UTC))
    digest = hash_key(key)
    alone = await active_key_with_user(digest)
    assert alone is not None

    found = await active_key_with_vehicle(digest, vehicle.id)
    assert found is not None
    active, row = found
    assert (active.id, active.last_used_at) == (alone.id, alone.last_used_at)
    assert _fields(active.user) == _fields(alone.user)
    models = row.models()
    read = await vehicle_with_charge_state(vehicle.id)
    assert models is not None
    assert read is not None
    assert models[1] is not None
    assert _fields(models[0]) == _fields(read[0])
    assert charge_state_data(models[1]) == read[1]

    # Another user's vehicle is read as it is (the caller judges it), one without a
    # state has none, a deleted or unknown one is none.
    for vehicle_id, expected in (
        (theirs.id, await vehicle_with_charge_state(theirs.id)),
        (gone.id, None),
        (uuid.uuid4(), None),
    ):
        found = await active_key_with_vehicle(digest, vehicle_id)
        assert found is not None
        models = found[1].models()
        if expected is None:
            assert models is None
        else:
            assert models is not None
            assert models[1] is None
            assert expected[1] is None
            assert _fields(models[0]) == _fields(expected[0])
        assert (found[1].stored() is None) is (expected is None)

    # No active key: nothing, whatever the vehicle.
    await ApiKey.filter(hash=digest).update(revoked_at=datetime.now(UTC))
    assert await active_key_with_vehicle(digest, vehicle.id) is None
    assert await active_key_with_vehicle(hash_key("evl_unknown"), vehicle.id) is None
