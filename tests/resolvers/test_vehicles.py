"""Freshness of vehicle reads: max age, stale-but-true, ordering, unexpected failures."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from evlink.domain import VehicleData
from evlink.errors import ForbiddenOwner, ProviderUnavailable
from evlink.models import ChargeState, Vehicle
from evlink.models.vehicles import charge_state_data
from evlink.providers.simulator import ManualClock, Simulator
from evlink.resolvers.auth import hash_key
from evlink.resolvers.charging import ingest_provider_update
from evlink.resolvers.vehicles import StatusRead, get_vehicle_with_state
from evlink.settings import Settings
from tests.conftest import Server, _truncate, run_server


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def make_stale(vehicle: Vehicle) -> None:
    await Vehicle.filter(id=vehicle.id).update(refreshed_at=None)


async def test_fresh_state_is_served_without_a_provider_call(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))
    server.simulator.calls.clear()

    for _ in range(5):
        response = await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))
        assert response.status_code == 200

    assert server.simulator.calls == []


async def test_provider_outage_serves_the_stored_state_and_logs_it(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    before = (await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))).json()
    await server.clock.advance(600)
    await make_stale(vehicle)
    server.simulator.outage = ProviderUnavailable(status=502)

    with caplog.at_level(logging.WARNING, logger="evlink"):
        response = await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))

    assert response.status_code == 200
    body = response.json()
    assert body["chargeState"] == before["chargeState"]  # stale but true: its own lastUpdated
    assert any("serving the stored state" in r.getMessage() for r in caplog.records)


async def test_provider_outage_with_nothing_stored_is_502(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    server.simulator.outage = ProviderUnavailable(status=502)

    response = await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))

    assert response.status_code == 502
    assert response.json()["code"] == "PROVIDER_UNAVAILABLE"


async def test_an_older_report_never_overwrites_a_newer_one(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "charging")
    current = await server.simulator.get_vehicle(vehicle.provider_vehicle_id or "")
    await ingest_provider_update(server.services, current)
    assert current.charge_state.last_updated is not None
    older = replace(
        current,
        last_seen=current.last_seen - timedelta(minutes=5) if current.last_seen else None,
        charge_state=replace(
            current.charge_state,
            power_delivery_state="UNPLUGGED",
            is_plugged_in=False,
            is_charging=False,
            last_updated=current.charge_state.last_updated - timedelta(minutes=5),
        ),
    )

    await ingest_provider_update(server.services, older)

    body = (await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))).json()
    assert body["chargingState"] == "PLUGGED_IN:CHARGING"


async def test_unknown_power_delivery_state_passes_through(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    current = await server.simulator.get_vehicle(vehicle.provider_vehicle_id or "")
    novel = replace(
        current,
        charge_state=replace(current.charge_state, power_delivery_state="PLUGGED_IN:V2G_EXPORT"),
    )
    await ingest_provider_update(server.services, novel)

    rest = (await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))).json()
    graphql = await server.graphql(
        "query($id: ID!) { vehicle(id: $id) { chargeState { powerDeliveryState } } }",
        {"id": str(vehicle.id)},
        key=key,
    )

    assert rest["chargingState"] == "PLUGGED_IN:V2G_EXPORT"
    assert graphql["data"]["vehicle"]["chargeState"]["powerDeliveryState"] == (
        "PLUGGED_IN:V2G_EXPORT"
    )


class BrokenProvider(Simulator):
    """A provider double with a bug of its own: every vehicle read blows up."""

    async def get_vehicle(self, vehicle_id: str) -> VehicleData:
        raise RuntimeError("internal detail: connection string postgres://secret@db")


async def test_unexpected_errors_are_masked_and_logged_with_the_request_id(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    await _truncate(settings.database_url)
    clock = ManualClock()
    async with run_server(settings, clock=clock, simulator=BrokenProvider(clock)) as server:
        user, key = await server.user()
        vehicle = await server.vehicle(user, "plugged")
        with caplog.at_level(logging.ERROR):
            rest = await server.http.get(
                f"/api/status/{vehicle.id}", headers={**auth(key), "X-Request-ID": "req-rest-1"}
            )
            graphql = await server.http.post(
                "/graphql",
                json={
                    "query": "query($id: ID!) { vehicle(id: $id) { chargeState { range } } }",
                    "variables": {"id": str(vehicle.id)},
                },
                headers={**auth(key), "X-Request-ID": "req-gql-1"},
            )

    assert rest.status_code == 500
    assert rest.json() == {"detail": "Unexpected error", "code": "INTERNAL_ERROR"}
    assert rest.headers["x-request-id"] == "req-rest-1"
    error = graphql.json()["errors"][0]
    assert error["message"] == "Unexpected error"
    assert error["extensions"] == {"code": "INTERNAL_ERROR"}
    assert "secret" not in rest.text
    assert "secret" not in graphql.text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "req-rest-1" in logged
    assert "req-gql-1" in logged


# A miss (the read cache off): the vehicle and its charge state in one statement.


def _statements_on(records: list[logging.LogRecord], *tables: str) -> list[str]:
    """The SQL statements Tortoise ran (its debug log) that name one of ``tables``."""
    messages = [r.getMessage() for r in records if r.name == "tortoise.db_client"]
    return [m for m in messages if any(f'"{table}"' in m for table in tables)]


@contextlib.asynccontextmanager
async def _uncached_car(
    settings: Settings, **simulated: Any
) -> AsyncIterator[tuple[Server, str, Vehicle]]:
    """A server with the read cache off (every read a miss), a user's key and a charging
    car of theirs (tweaked by ``simulated``)."""
    await _truncate(settings.database_url)
    async with run_server(replace(settings, cache_ttl=0.0)) as server:
        user, key = await server.user()
        yield server, key, await server.vehicle(user, "charging", **simulated)


async def test_a_status_miss_reads_the_vehicle_and_its_state_in_one_statement(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with _uncached_car(settings) as (server, key, vehicle):
        first = await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))
        server.simulator.calls.clear()

        with caplog.at_level(logging.DEBUG, logger="tortoise.db_client"):
            again = await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))

    assert again.status_code == 200
    assert again.json() == first.json()
    assert server.simulator.calls == []  # fresh: served from what is stored
    assert len(_statements_on(caplog.records, "vehicles", "charge_states")) == 1


async def test_a_fresh_car_whose_state_is_gone_is_read_from_its_provider(
    settings: Settings,
) -> None:
    async with _uncached_car(settings) as (server, key, vehicle):
        await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))
        await ChargeState.filter(vehicle_id=vehicle.id).delete()
        server.simulator.calls.clear()

        response = await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))

    assert response.status_code == 200
    assert response.json()["chargingState"] == "PLUGGED_IN:CHARGING"
    assert server.simulator.calls == [f"get_vehicle {vehicle.provider_vehicle_id}"]


async def test_a_removed_vehicle_is_404_on_a_miss(settings: Settings) -> None:
    async with _uncached_car(settings) as (server, key, vehicle):
        assert (await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))).is_success
        await Vehicle.filter(id=vehicle.id).update(deleted_at=datetime.now(UTC))

        response = await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))

    assert response.status_code == 404
    assert response.json()["code"] == "NOT_FOUND"


_VEHICLE_STATE = "query($id: ID!) { vehicle(id: $id) { name chargeState { batteryLevel } } }"


async def test_a_graphql_miss_reads_the_vehicle_and_its_state_in_one_statement(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with _uncached_car(settings) as (server, key, vehicle):
        first = await server.graphql(_VEHICLE_STATE, {"id": str(vehicle.id)}, key=key)
        server.simulator.calls.clear()

        with caplog.at_level(logging.DEBUG, logger="tortoise.db_client"):
            again = await server.graphql(_VEHICLE_STATE, {"id": str(vehicle.id)}, key=key)

    assert again == first
    assert again["data"]["vehicle"]["chargeState"]["batteryLevel"] is not None
    assert server.simulator.calls == []  # fresh: served from what is stored
    assert len(_statements_on(caplog.records, "vehicles", "charge_states")) == 1


async def test_graphql_serves_a_never_synced_vehicle_what_its_provider_says_not_the_store(
    settings: Settings,
) -> None:
    # The vehicle query reads the stored state with the vehicle; a vehicle never read
    # from its provider is read then, and its chargeState is what the provider said.
    async with _uncached_car(settings, battery_level=61.0) as (server, key, vehicle):
        await server.graphql(_VEHICLE_STATE, {"id": str(vehicle.id)}, key=key)
        await Vehicle.filter(id=vehicle.id).update(refreshed_at=None)
        await ChargeState.filter(vehicle_id=vehicle.id).update(battery_level=7)
        server.simulator.calls.clear()

        answer = await server.graphql(_VEHICLE_STATE, {"id": str(vehicle.id)}, key=key)

    assert server.simulator.calls == [f"get_vehicle {vehicle.provider_vehicle_id}"]
    assert answer["data"]["vehicle"]["chargeState"]["batteryLevel"] == 61


async def test_the_row_read_with_the_key_serves_only_its_vehicle_and_only_once(
    server: Server,
) -> None:
    # GraphQL's known vehicle(id:) hands the key's lookup to its resolver: the row read
    # there stands in for the resolver's own read of that vehicle, never of another.
    user, key = await server.user()
    mine = await server.vehicle(user, "charging")
    other = await server.vehicle(user, "plugged")
    stranger, _ = await server.user()
    theirs = await server.vehicle(stranger, "plugged")

    along = StatusRead(server.services, str(mine.id))
    assert await along.lookup(hash_key(key)) is not None
    await Vehicle.filter(id=mine.id).update(name="Renamed")  # after the key's statement
    vehicle, _ = await get_vehicle_with_state(user, str(mine.id), along)
    assert vehicle.name != "Renamed"  # the row read with the key
    again, _ = await get_vehicle_with_state(user, str(mine.id), along)
    assert again.name == "Renamed"  # taken once: a second read reads the database

    along = StatusRead(server.services, str(mine.id))
    assert await along.lookup(hash_key(key)) is not None
    vehicle, _ = await get_vehicle_with_state(user, str(other.id), along)
    assert vehicle.id == other.id  # another id: read, not the row

    along = StatusRead(server.services, str(theirs.id))
    assert await along.lookup(hash_key(key)) is not None
    with pytest.raises(ForbiddenOwner):  # judged by the resolver, as its own read is
        await get_vehicle_with_state(user, str(theirs.id), along)


async def test_a_refresh_that_finds_the_car_as_stored_writes_its_row_alone(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # Most refreshes: the provider says what is stored. The vehicle's row (its freshness)
    # is written in one statement, without a transaction or a write of the state.
    async with _uncached_car(settings) as (server, key, vehicle):
        first = await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))
        await make_stale(vehicle)
        stored = await ChargeState.get(vehicle_id=vehicle.id)
        server.simulator.calls.clear()

        with caplog.at_level(logging.DEBUG, logger="tortoise.db_client"):
            again = await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))

        refreshed = await Vehicle.get(id=vehicle.id)
        state = await ChargeState.get(vehicle_id=vehicle.id)
    assert server.simulator.calls == [f"get_vehicle {vehicle.provider_vehicle_id}"]
    assert again.json()["chargeState"] == first.json()["chargeState"]
    assert refreshed.refreshed_at is not None
    assert charge_state_data(state) == charge_state_data(stored)
    statements = [
        s.split()[0].upper() for s in _statements_on(caplog.records, "vehicles", "charge_states")
    ]
    # The status read, the state's read, the vehicle's write: no BEGIN, no second read.
    assert statements == ["SELECT", "SELECT", "UPDATE"], statements
