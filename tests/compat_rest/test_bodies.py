"""A status miss answers from the stored row without models (evlink.models.vehicles
.StoredVehicle), rendered without Starlette's JSONResponse: the same bytes as Tortoise's
models rendered by JSONResponse, over real HTTP, REST and GraphQL, on each backend."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.responses import JSONResponse, Response
from starlette.types import Message

from evlink.compat_rest.bodies import RenderedJson, render, status_body, vehicle_body
from evlink.models import ChargeState, Vehicle
from evlink.models.vehicles import StoredVehicle, charge_state_data, vehicle_with_charge_state
from evlink.resolvers.vehicles import VehicleStatus
from evlink.settings import Settings
from tests.conftest import Server, _truncate, run_server

WHOLE = (
    "id name vendor provider providerVehicleId lastSeen isReachable "
    "information { vin brand model year displayName } "
    "location { latitude longitude lastUpdated } odometer { distance lastUpdated } "
    "smartChargingPolicy { isEnabled deadline minimumChargeLimit } "
    "capabilities { chargeState { isCapable interventionIds } "
    "startCharging { isCapable interventionIds } } "
    "chargeState { batteryLevel range isPluggedIn isCharging batteryCapacity chargeLimit "
    "chargeRate chargeTimeRemaining isFullyCharged lastUpdated powerDeliveryState maxCurrent }"
)
ONE = "query($id: ID!) { vehicle(id: $id) { " + WHOLE + " } }"
ALL = "{ vehicles { " + WHOLE + " } }"


@pytest.fixture
async def uncached(settings: Settings) -> AsyncIterator[Server]:
    """A server whose every status read is a miss (``EVLINK_CACHE_TTL=0``)."""
    await _truncate(settings.database_url)
    async with run_server(replace(settings, cache_ttl=0.0, graphql_max_cost=10_000)) as server:
        yield server


async def _cars(server: Server) -> tuple[str, list[Vehicle]]:
    """A named car, and one named by its provider's information, with values whose text
    is easy to get wrong (non-ASCII, escapes, floats written with exponents)."""
    user, key = await server.user()
    named = await server.vehicle(user, "charging")
    unnamed = await server.vehicle(user, "plugged")
    for car in (named, unnamed):  # the first read asks the provider; the rest is stored
        assert (await server.http.get(f"/api/status/{car.id}", headers=_auth(key))).is_success
    await Vehicle.filter(id=unnamed.id).update(
        name=None,
        information={
            "vin": "VIN-ÆØÅ",
            "brand": "Škoda",
            "model": 'Enyaq "iV" \\ ☃\u2028',
            "year": 2023,
            "displayName": None,
        },
        location={"latitude": 1e-05, "longitude": 1.2345678901234567e16, "lastUpdated": None},
        odometer={"distance": 0.1 + 0.2, "lastUpdated": "2026-03-04T05:06:07.890Z"},
        smart_charging_policy={"isEnabled": True, "deadline": None, "minimumChargeLimit": 7},
    )
    await ChargeState.filter(vehicle_id=unnamed.id).update(range=1e-07, battery_capacity=75.0)
    return key, [named, unnamed]


async def test_a_status_miss_is_the_bytes_of_tortoise_s_models_rendered_by_starlette(
    uncached: Server,
) -> None:
    server = uncached
    key, cars = await _cars(server)
    server.simulator.calls.clear()
    listed = await server.http.get("/api/ha/vehicles", headers=_auth(key))  # models
    for car in cars:
        status = await server.http.get(f"/api/status/{car.id}", headers=_auth(key))
        whole = await server.http.get(f"/api/ha/status/{car.id}", headers=_auth(key))

        model = await Vehicle.get(id=car.id)
        state = charge_state_data(await ChargeState.get(vehicle_id=car.id))
        assert status.content == JSONResponse(status_body(VehicleStatus(model, state))).body
        assert whole.content == JSONResponse(vehicle_body(model, state)).body
        assert whole.content in listed.content
    assert server.simulator.calls == []  # every answer was the stored row's
    assert json.loads(status.content)["vehicleName"] == 'Škoda Enyaq "iV" \\ ☃\u2028'


async def test_a_named_car_s_status_never_decodes_its_provider_information(
    uncached: Server,
) -> None:
    # The status body needs the information (a JSON column) only for a car without a
    # name of its own: a named car's row leaves it undecoded.
    _, (named, unnamed) = await _cars(uncached)
    for car, decoded in ((named, False), (unnamed, True)):
        found = await vehicle_with_charge_state(car.id)
        assert found is not None
        vehicle, state = found
        assert state is not None
        body = status_body(VehicleStatus(vehicle, state))
        unnamed_name = 'Škoda Enyaq "iV" \\ ☃\u2028'
        assert body["vehicleName"] == (unnamed_name if decoded else named.name)
        try:
            StoredVehicle.information.__get__(vehicle)  # the slot, without decoding it
        except AttributeError:
            assert not decoded
        else:
            assert decoded


async def test_graphql_s_vehicle_is_the_bytes_of_the_vehicles_list(uncached: Server) -> None:
    """``vehicle(id:)`` reads the row without models, ``vehicles`` reads models; the
    first answer twice (the second a known query, answered by its plan)."""
    server = uncached
    key, cars = await _cars(server)
    listed = await server.http.post("/graphql", json={"query": ALL}, headers=_auth(key))
    assert b'"errors"' not in listed.content, listed.content
    for car in cars:
        asked = {"query": ONE, "variables": {"id": str(car.id)}}
        answers = [
            await server.http.post("/graphql", json=asked, headers=_auth(key)) for _ in range(2)
        ]
        assert answers[0].content == answers[1].content
        prefix, suffix = b'{"data":{"vehicle":', b"}}"
        content = answers[0].content
        assert content.startswith(prefix), content
        assert content.endswith(suffix), content
        assert content[len(prefix) : -len(suffix)] in listed.content


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(_JSON)
def test_render_is_starlette_s_json_response_body(value: Any) -> None:
    try:
        expected = JSONResponse(value).body
    except (ValueError, UnicodeEncodeError) as refused:
        with pytest.raises(type(refused)):
            render(value)
    else:
        assert render(value) == expected


async def _messages(response: Response) -> list[Message]:
    """What ``response`` sends, driven as an ASGI app."""
    sent: list[Message] = []

    async def receive() -> Message:
        raise AssertionError("a response reads nothing")

    async def send(message: Message) -> None:
        sent.append(message)

    await response({"type": "http", "method": "GET", "path": "/"}, receive, send)
    return sent


@pytest.mark.parametrize("body", [b"{}", b'{"vehicleName":"Caf\xc3\xa9"}', b"x" * 70_000])
async def test_rendered_json_answers_as_starlette_s_response(body: bytes) -> None:
    ours = RenderedJson(body)
    theirs = Response(body, media_type="application/json")

    assert await _messages(ours) == await _messages(theirs)
    assert ours.headers == theirs.headers
    assert (ours.status_code, ours.media_type, ours.background) == (200, "application/json", None)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, {"range": math.nan}])
def test_render_refuses_what_json_cannot_say(value: Any) -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        JSONResponse(value)
    with pytest.raises(ValueError, match="JSON compliant"):
        render(value)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
