"""The hot reads' statements (evlink.models.statements) make the models Tortoise makes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from evlink.models import ApiKey, ChargeState, User, Vehicle
from evlink.models.users import active_key_with_user
from evlink.models.vehicles import vehicle_with_charge_state
from evlink.resolvers.auth import hash_key
from tests.conftest import Server


def _fields(model: User | Vehicle | ChargeState) -> dict[str, object]:
    return {name: getattr(model, name) for name in model._meta.fields_db_projection}


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
    assert _fields(found[1]) == _fields(await ChargeState.get(vehicle_id=vehicle.id))
    assert found[0].last_seen == when
    assert found[1].last_updated == when
    assert active is not None
    assert _fields(active.user) == _fields(await User.get(id=user.id))
    stored_key = await ApiKey.get(hash=hash_key(key))
    assert (active.id, active.last_used_at) == (stored_key.id, when)
