"""GraphQL queries over real HTTP: viewer, vehicles, vehicle and their errors."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from evlink.models import Tier
from evlink.resolvers import accounts
from evlink.schema.printed import printed_schema
from tests.compat_rest.test_status import CHARGE_STATE_KEYS, ISO_Z
from tests.conftest import Server

# The documented chargeState block: GraphQL serves the same fields as REST.
CHARGE_STATE_FIELDS = CHARGE_STATE_KEYS
CHARGE_STATE = "chargeState { " + " ".join(CHARGE_STATE_FIELDS) + " }"

VIEWER = "{ viewer { id email tier } }"
VEHICLES = f"""
{{
  vehicles {{
    id name provider providerVehicleId
    {CHARGE_STATE}
    capabilities {{ startCharging {{ isCapable }} setMaxCurrent {{ isCapable }} }}
    information {{ displayName brand model }}
  }}
}}
"""
VEHICLE = f"""
query($id: ID!) {{
  vehicle(id: $id) {{ id name lastSeen isReachable {CHARGE_STATE} }}
}}
"""
VEHICLE_NAME = "query($id: ID!) { vehicle(id: $id) { id name providerVehicleId } }"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def error_code(body: dict[str, Any]) -> str:
    assert body.get("errors"), body
    code: str = body["errors"][0]["extensions"]["code"]
    return code


# -- viewer -----------------------------------------------------------------


async def test_viewer_is_the_keys_owner(server: Server) -> None:
    user, key = await server.user("Viewer@Example.com", tier=Tier.BASIC)
    await server.user()  # someone else

    body = await server.graphql(VIEWER, key=key)

    assert "errors" not in body, body
    assert body["data"]["viewer"] == {
        "id": str(user.id),
        "email": "viewer@example.com",
        "tier": "BASIC",
    }


async def test_missing_and_bad_keys_are_unauthenticated(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user)
    calls = len(server.simulator.calls)

    typo = key[:-1] + ("x" if key[-1] != "x" else "y")
    for bad in (None, "nonsense", "evl_" + "A" * 33 + "_000000", typo):
        for query, variables in ((VIEWER, None), (VEHICLE, {"id": str(vehicle.id)})):
            body = await server.graphql(query, variables, key=bad)
            assert body["data"] is None, (bad, body)
            assert error_code(body) == "UNAUTHENTICATED", bad
            assert body["errors"][0]["message"] == "Missing or invalid API key"
    assert len(server.simulator.calls) == calls


async def test_a_non_bearer_authorization_is_unauthenticated(server: Server) -> None:
    _, key = await server.user()

    response = await server.http.post(
        "/graphql", json={"query": VIEWER}, headers={"Authorization": f"Basic {key}"}
    )

    assert error_code(response.json()) == "UNAUTHENTICATED"


# -- vehicles ---------------------------------------------------------------


async def test_vehicles_lists_the_callers_cars_with_every_block(server: Server) -> None:
    user, key = await server.user()
    plugged = await server.vehicle(user, "plugged")
    charging = await server.vehicle(user, "charging")
    other, _ = await server.user()
    await server.vehicle(other, "plugged")

    body = await server.graphql(VEHICLES, key=key)

    assert "errors" not in body, body
    listed = body["data"]["vehicles"]
    assert [v["id"] for v in listed] == [str(plugged.id), str(charging.id)]
    first, second = listed
    assert first["name"] == "Test plugged"
    assert first["provider"] == "simulator"
    assert first["providerVehicleId"] == plugged.provider_vehicle_id
    car = server.car(plugged)
    assert first["information"] == {
        "displayName": f"{car.brand} {car.model}",
        "brand": car.brand,
        "model": car.model,
    }
    assert first["capabilities"]["startCharging"]["isCapable"] is True
    assert first["capabilities"]["setMaxCurrent"]["isCapable"] is False
    for vehicle in listed:
        assert list(vehicle["chargeState"]) == CHARGE_STATE_FIELDS
        assert ISO_Z.fullmatch(vehicle["chargeState"]["lastUpdated"])
    assert first["chargeState"]["powerDeliveryState"] == "PLUGGED_IN:STOPPED"
    assert first["chargeState"]["isCharging"] is False
    assert first["chargeState"]["chargeRate"] is None
    assert second["chargeState"]["powerDeliveryState"] == "PLUGGED_IN:CHARGING"
    assert second["chargeState"]["isCharging"] is True
    assert second["chargeState"]["chargeRate"] == 11.0
    assert isinstance(second["chargeState"]["chargeTimeRemaining"], int)


async def test_vehicles_is_empty_for_a_user_without_cars(server: Server) -> None:
    owner, _ = await server.user()
    await server.vehicle(owner)
    _, key = await server.user()

    body = await server.graphql(VEHICLES, key=key)

    assert body == {"data": {"vehicles": []}}


async def test_vehicles_reads_each_car_from_the_provider_only_once(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    server.simulator.calls.clear()

    await server.graphql(VEHICLES, key=key)
    await server.graphql(VEHICLES, key=key)

    assert server.simulator.calls == [f"get_vehicle {vehicle.provider_vehicle_id}"]


# -- vehicle(id:) -----------------------------------------------------------


async def test_vehicle_of_the_caller(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "unplugged")

    body = await server.graphql(VEHICLE, {"id": str(vehicle.id)}, key=key)

    assert "errors" not in body, body
    data = body["data"]["vehicle"]
    assert data["id"] == str(vehicle.id)
    assert data["name"] == "Test unplugged"
    assert data["isReachable"] is True
    assert ISO_Z.fullmatch(data["lastSeen"])
    assert data["chargeState"]["powerDeliveryState"] == "UNPLUGGED"
    assert data["chargeState"]["isPluggedIn"] is False
    assert data["chargeState"]["chargeTimeRemaining"] is None


async def test_another_users_vehicle_is_forbidden_before_any_provider_call(
    server: Server,
) -> None:
    owner, _ = await server.user()
    _, other_key = await server.user()
    vehicle = await server.vehicle(owner)
    calls = len(server.simulator.calls)

    body = await server.graphql(VEHICLE, {"id": str(vehicle.id)}, key=other_key)

    assert body["data"] is None
    assert error_code(body) == "FORBIDDEN_OWNER"
    assert body["errors"][0]["path"] == ["vehicle"]
    assert len(server.simulator.calls) == calls


async def test_unknown_and_malformed_ids_are_not_found(server: Server) -> None:
    _, key = await server.user()

    for vehicle_id in (str(uuid.uuid4()), "not-a-uuid", "1' OR '1'='1", ""):
        body = await server.graphql(VEHICLE, {"id": vehicle_id}, key=key)
        assert body["data"] is None, vehicle_id
        assert error_code(body) == "NOT_FOUND", vehicle_id
        assert body["errors"][0]["message"] == "Vehicle not found"


async def test_a_vehicle_without_provider_id_cannot_give_its_charge_state(
    server: Server,
) -> None:
    user, key = await server.user()
    vehicle = await accounts.add_vehicle(
        user, provider="simulator", provider_vehicle_id=None, name="Unlinked"
    )

    body = await server.graphql(VEHICLE, {"id": str(vehicle.id)}, key=key)

    assert error_code(body) == "PROVIDER_LINK_MISSING"
    assert body["errors"][0]["message"].startswith(
        f"Vehicle {vehicle.id} has no provider id: run `evlink vehicle remove {vehicle.id}`"
    )
    assert body["errors"][0]["path"] == ["vehicle", "chargeState"]
    # chargeState is nullable: the error stays with this vehicle, the rest still reads.
    assert body["data"]["vehicle"]["chargeState"] is None

    # Without chargeState the vehicle reads fine.
    plain = await server.graphql(VEHICLE_NAME, {"id": str(vehicle.id)}, key=key)
    assert plain == {
        "data": {"vehicle": {"id": str(vehicle.id), "name": "Unlinked", "providerVehicleId": None}}
    }


async def test_rest_and_graphql_agree_on_a_vehicle(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "charging", battery_level=35.0, charge_limit=90)
    await server.clock.advance(1800)  # half an hour of charging moves every figure

    for _ in range(2):
        rest = (await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))).json()
        body = await server.graphql(VEHICLE, {"id": str(vehicle.id)}, key=key)
        assert "errors" not in body, body
        graphql = body["data"]["vehicle"]

        assert rest["chargeState"]["powerDeliveryState"] == "PLUGGED_IN:CHARGING"
        assert rest["chargeState"]["batteryLevel"] > 35
        for name in CHARGE_STATE_FIELDS:
            assert graphql["chargeState"][name] == rest["chargeState"][name], name
        assert graphql["chargeState"] == rest["chargeState"]
        assert ISO_Z.fullmatch(graphql["chargeState"]["lastUpdated"])
        assert graphql["lastSeen"] == rest["lastSeen"]
        assert ISO_Z.fullmatch(graphql["lastSeen"])
        assert graphql["isReachable"] == rest["isReachable"] is True
        assert graphql["name"] == rest["vehicleName"]
        await server.clock.advance(600)  # and again after the state moved


# -- GraphQL's own errors -----------------------------------------------------


async def test_a_syntax_error_stays_graphqls(server: Server) -> None:
    _, key = await server.user()

    response = await server.http.post(
        "/graphql", json={"query": "{ viewer { id "}, headers=auth(key)
    )

    assert response.status_code == 200
    body = response.json()
    assert body["data"] is None
    assert len(body["errors"]) == 1
    error = body["errors"][0]
    assert error["message"].startswith("Syntax Error")
    assert "code" not in (error.get("extensions") or {})


async def test_an_unknown_field_stays_graphqls(server: Server) -> None:
    _, key = await server.user()

    response = await server.http.post(
        "/graphql", json={"query": "{ viewer { id password } }"}, headers=auth(key)
    )

    assert response.status_code == 200
    body = response.json()
    assert body["data"] is None
    assert "password" in body["errors"][0]["message"]
    assert "code" not in (body["errors"][0].get("extensions") or {})


# -- The printed schema -------------------------------------------------------


def test_schema_graphql_is_the_schema_as_served() -> None:
    committed = (Path(__file__).parents[2] / "schema.graphql").read_text()

    assert committed == printed_schema(), (
        "schema.graphql is out of date: regenerate with "
        "`python -m evlink.schema.printed > schema.graphql`"
    )


async def test_one_unlinked_vehicle_does_not_hide_the_others(server: Server) -> None:
    user, key = await server.user()
    linked = await server.vehicle(user, "plugged")
    await accounts.add_vehicle(user, provider="simulator", provider_vehicle_id=None)

    body = await server.graphql("{ vehicles { id chargeState { powerDeliveryState } } }", key=key)

    states = {v["id"]: v["chargeState"] for v in body["data"]["vehicles"]}
    assert states[str(linked.id)] == {"powerDeliveryState": "PLUGGED_IN:STOPPED"}
    assert [e["extensions"]["code"] for e in body["errors"]] == ["PROVIDER_LINK_MISSING"]


async def test_malformed_requests_are_refused_in_the_graphql_error_shape(server: Server) -> None:
    """Refused before any operation runs: 400 with {"errors": [...]}, JSON like every
    other answer, never Strawberry's plain text."""
    _, key = await server.user()
    operation = {"query": VIEWER}
    refusals = {
        "body not JSON": {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
        "no query": {"json": {"variables": {}}},
        "a number for a body": {"json": 5},
        "a string for a body": {"json": "{ viewer { id } }"},
        "null for a body": {"content": b"null", "headers": {"Content-Type": "application/json"}},
        "a batch": {"json": [operation, operation]},
        "unsupported content type": {
            "content": b"query { viewer { id } }",
            "headers": {"Content-Type": "text/csv"},
        },
    }
    for label, request in refusals.items():
        headers = {**auth(key), **request.pop("headers", {})}
        response = await server.http.post("/graphql", headers=headers, **request)
        assert response.status_code == 400, label
        assert response.headers["content-type"] == "application/json", label
        assert response.headers["x-content-type-options"] == "nosniff", label
        body = response.json()
        assert set(body) == {"errors"}, (label, body)
        assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST", (label, body)
        assert body["errors"][0]["message"], (label, body)
        if label == "unsupported content type":  # says what to send
            assert "send the body as application/json" in body["errors"][0]["message"]
    as_json = {**auth(key), "Accept": "application/json"}  # not a browser: no playground
    missing = await server.http.get("/graphql", params={"variables": "{}"}, headers=as_json)
    assert missing.status_code == 400
    assert missing.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_head_on_graphql_is_answered_as_get_without_a_body(server: Server) -> None:
    # Starlette's route allows HEAD with GET: it was refused 405 without an Allow header
    # (found by the attacker trial).
    _, key = await server.user()
    as_json = {**auth(key), "Accept": "application/json"}
    query = {"query": VIEWER}
    got = await server.http.get("/graphql", params=query, headers=as_json)
    head = await server.http.head("/graphql", params=query, headers=as_json)
    page = await server.http.head("/graphql", headers={"Accept": "text/html"})
    assert got.status_code == head.status_code == 200
    assert head.headers["content-type"] == got.headers["content-type"] == "application/json"
    assert head.headers["content-length"] == got.headers["content-length"]
    assert head.content == b""
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")


async def test_operations_http_does_not_run_are_refused_in_the_graphql_error_shape(
    server: Server,
) -> None:
    """The view chooses what HTTP runs (no subscriptions: tests/schema/test_subscriptions.py);
    the other refusals keep their reasons."""
    _, key = await server.user()
    as_json = {**auth(key), "Accept": "application/json"}
    mutation = 'mutation { setCharging(vehicleId: "x", action: START) { id } }'
    refusals = {
        "a mutation over GET": (
            await server.http.get("/graphql", params={"query": mutation}, headers=as_json),
            "mutations are not allowed when using GET",
        ),
        "an unknown operation name": (
            await server.http.post(
                "/graphql", json={"query": VIEWER, "operationName": "Other"}, headers=auth(key)
            ),
            'Unknown operation named "Other".',
        ),
    }
    for label, (response, message) in refusals.items():
        assert response.status_code == 400, label
        assert response.json() == {
            "errors": [{"message": message, "extensions": {"code": "BAD_REQUEST"}}]
        }, label
