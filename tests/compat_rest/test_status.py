"""GET /api/status/{id} and the /api/ha read paths, over real HTTP."""

from __future__ import annotations

import logging
import re
import uuid

import pytest

from evlink.models import Tier, Vehicle
from evlink.resolvers import accounts
from tests.conftest import EnodeWorld, Server

ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
CHARGE_STATE_KEYS = [
    "batteryLevel",
    "range",
    "isPluggedIn",
    "isCharging",
    "batteryCapacity",
    "chargeLimit",
    "chargeRate",
    "chargeTimeRemaining",
    "isFullyCharged",
    "lastUpdated",
    "powerDeliveryState",
    "maxCurrent",
]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_status_has_the_documented_body(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "charging")

    response = await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))

    assert response.status_code == 200
    body = response.json()
    assert list(body)[:9] == [
        "batteryLevel",
        "range",
        "isCharging",
        "isPluggedIn",
        "chargingState",
        "vehicleName",
        "lastSeen",
        "isReachable",
        "chargeState",
    ]
    assert list(body["chargeState"]) == CHARGE_STATE_KEYS
    state = body["chargeState"]
    assert isinstance(state["batteryLevel"], int)
    assert isinstance(state["range"], float)
    assert state["isCharging"] is True
    assert state["isPluggedIn"] is True
    assert state["powerDeliveryState"] == "PLUGGED_IN:CHARGING"
    assert ISO_Z.fullmatch(state["lastUpdated"])
    assert ISO_Z.fullmatch(body["lastSeen"])
    # Legacy top-level keys mirror the block.
    assert body["batteryLevel"] == state["batteryLevel"]
    assert body["chargingState"] == state["powerDeliveryState"]
    assert body["vehicleName"] == "Test charging"
    assert body["isReachable"] is True
    assert isinstance(body["latitude"], float)
    assert isinstance(body["longitude"], float)


async def test_status_unplugged_car(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "unplugged")

    body = (await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))).json()

    assert body["chargingState"] == "UNPLUGGED"
    assert body["isPluggedIn"] is False
    assert body["chargeState"]["chargeRate"] is None
    assert body["chargeState"]["chargeTimeRemaining"] is None


async def test_battery_moves_while_charging(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "charging", battery_level=40.0, charge_limit=90)
    first = (await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))).json()

    # An hour at 11 kW on 75-87.5 kWh: +12 % or more. The simulator pushes its step
    # into evlink as a webhook would, so the stored state moves without a provider read.
    await server.clock.advance(3600)
    server.simulator.calls.clear()
    moved = (await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))).json()
    assert moved["batteryLevel"] >= first["batteryLevel"] + 12
    assert moved["range"] > first["range"]
    assert server.simulator.calls == []


async def test_missing_malformed_unknown_and_revoked_keys_get_the_same_401(
    server: Server,
) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user)
    revoked = (await accounts_revoke(server, user)).secret
    unknown = "evl_" + "A" * 33 + "_000000"  # well-formed shape, bad checksum
    real_shape_unknown = await _unknown_but_valid_key()
    answers = []
    for headers in (
        {},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": f"Basic {key}"},
        auth(unknown),
        auth(real_shape_unknown),
        auth(revoked),
    ):
        answers.append(await server.http.get(f"/api/status/{vehicle.id}", headers=headers))
    for response in answers:
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json() == {
            "detail": "Missing or invalid API key",
            "code": "UNAUTHENTICATED",
        }


async def accounts_revoke(server: Server, user: object) -> object:
    from evlink.resolvers.auth import issue_key, revoke_key

    issued = await issue_key(user)  # type: ignore[arg-type]
    await revoke_key(str(issued.record.id))
    return issued


async def _unknown_but_valid_key() -> str:
    from evlink.resolvers.auth import new_key

    return new_key()


async def test_another_users_vehicle_is_403(server: Server) -> None:
    owner, _ = await server.user()
    _, other_key = await server.user()
    vehicle = await server.vehicle(owner)
    before = len(server.simulator.calls)

    response = await server.http.get(f"/api/status/{vehicle.id}", headers=auth(other_key))

    assert response.status_code == 403
    assert response.json()["code"] == "FORBIDDEN_OWNER"
    assert len(server.simulator.calls) == before  # refused before any provider call


async def test_unknown_and_malformed_ids_are_404(server: Server) -> None:
    _, key = await server.user()
    for vehicle_id in (str(uuid.uuid4()), "not-a-uuid", "1' OR '1'='1", "%00"):
        response = await server.http.get(f"/api/status/{vehicle_id}", headers=auth(key))
        assert response.status_code == 404, vehicle_id
        assert response.json()["code"] == "NOT_FOUND"


async def test_vehicle_without_provider_id_is_500_says_what_to_run_and_warns_once(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A car stored without a provider id (the seed's CLI made them; `vehicle add` no
    longer does) keeps the contract's 500, its detail names the commands to run, and
    Home Assistant polling it leaves one WARNING in the log, no ERROR."""
    user, key = await server.user()
    vehicle = await accounts.add_vehicle(user, provider="simulator", provider_vehicle_id=None)

    with caplog.at_level(logging.INFO, logger="evlink"):
        answers = [
            await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key)) for _ in range(3)
        ]

    for response in answers:
        assert response.status_code == 500
        assert response.json() == {
            "detail": f"Vehicle {vehicle.id} has no provider id: run `evlink vehicle remove "
            f"{vehicle.id}`, then `evlink vehicle add` with the car's provider id",
            "code": "PROVIDER_LINK_MISSING",
        }
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.levelno, str(vehicle.id) in r.getMessage()) for r in warned] == [
        (logging.WARNING, True)
    ], [r.getMessage() for r in warned]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_ha_me_vehicles_and_status(server: Server) -> None:
    user, key = await server.user(tier=Tier.BASIC)
    plugged = await server.vehicle(user, "plugged")
    await server.vehicle(user, "unplugged")

    me = (await server.http.get("/api/ha/me", headers=auth(key))).json()
    assert me == {"id": user.id, "email": user.email, "tier": "BASIC", "vehicleCount": 2}

    listed = (await server.http.get("/api/ha/vehicles", headers=auth(key))).json()
    assert [v["id"] for v in listed] == [str(plugged.id), *[v["id"] for v in listed[1:]]]
    assert all(v["chargeState"] is not None for v in listed)

    full = (await server.http.get(f"/api/ha/status/{plugged.id}", headers=auth(key))).json()
    for block in (
        "information",
        "chargeState",
        "location",
        "odometer",
        "smartChargingPolicy",
        "capabilities",
    ):
        assert full[block], block
    assert full["enode_vehicle_id"] == plugged.provider_vehicle_id
    assert full["chargeState"]["powerDeliveryState"] == "PLUGGED_IN:STOPPED"
    assert full["capabilities"]["startCharging"]["isCapable"] is True


async def test_stale_state_refreshes_and_concurrent_reads_share_one_provider_call(
    server: Server, make_settings: object
) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))
    await Vehicle.filter(id=vehicle.id).update(refreshed_at=None)  # make it stale
    server.simulator.calls.clear()

    import asyncio

    responses = await asyncio.gather(
        *(server.http.get(f"/api/status/{vehicle.id}", headers=auth(key)) for _ in range(50))
    )

    assert all(r.status_code == 200 for r in responses)
    assert server.simulator.calls == [f"get_vehicle {vehicle.provider_vehicle_id}"]


async def test_fractional_enode_values_keep_the_contracts_integer_types(
    enode: EnodeWorld,
) -> None:
    """Enode may send ``batteryLevel: 63.5``; the REST contract (and GraphQL's ``Int``)
    types it, ``chargeLimit`` and ``chargeTimeRemaining`` as integers, which Home
    Assistant templates compare as such: they are rounded (halves to even), and the
    fields Enode and the contract type as decimals stay decimals."""
    user, key = await enode.linked_user()
    vehicle = await enode.vehicle(
        user,
        isPluggedIn=True,
        batteryLevel=63.5,
        chargeLimit=79.6,
        chargeTimeRemaining=12.4,
        range=301.25,
        chargeRate=7.4,
    )

    body = (await enode.server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))).json()

    state = body["chargeState"]
    assert (body["batteryLevel"], state["batteryLevel"]) == (64, 64)
    assert (state["chargeLimit"], state["chargeTimeRemaining"]) == (80, 12)
    assert all(
        type(state[f]) is int for f in ("batteryLevel", "chargeLimit", "chargeTimeRemaining")
    )
    assert (state["range"], state["chargeRate"]) == (301.25, 7.4)
