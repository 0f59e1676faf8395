"""GraphQL limits: depth, tokens, aliases, cost, batched commands, suggestions, introspection."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from evlink.settings import Settings
from tests.conftest import Server, _truncate, run_server


def codes(body: dict[str, Any]) -> list[str | None]:
    return [e.get("extensions", {}).get("code") for e in body.get("errors") or []]


async def test_deep_queries_are_refused(server: Server) -> None:
    _, key = await server.user()
    deep = "{ vehicles { " + "chargingCommands { vehicle { " * 6 + "id" + " } }" * 6 + " } }"

    body = await server.graphql(deep, key=key)

    assert body["data"] is None
    assert "exceeds maximum operation depth" in body["errors"][0]["message"]


async def test_too_many_tokens_are_refused_before_parsing(server: Server) -> None:
    _, key = await server.user()
    huge = "{ viewer { " + "id " * 3000 + "} }"

    body = await server.graphql(huge, key=key)

    assert body["data"] is None
    assert "more than 2000 tokens" in body["errors"][0]["message"]


async def test_too_many_aliases_are_refused(server: Server) -> None:
    _, key = await server.user()
    aliased = "{ " + " ".join(f"a{i}: viewer {{ id }}" for i in range(20)) + " }"

    body = await server.graphql(aliased, key=key)

    assert body["data"] is None
    assert "aliases" in body["errors"][0]["message"]


async def test_costly_queries_are_refused(server: Server) -> None:
    _, key = await server.user()
    fields = " ".join(
        f"c{i}: chargingCommands(last: 100) {{ id state attempts action }}" for i in range(12)
    )

    body = await server.graphql("{ vehicles { " + fields + " } }", key=key)

    assert body["data"] is None
    assert codes(body) == ["QUERY_TOO_COSTLY"]


async def test_one_set_charging_per_document(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    batch = (
        "mutation($id: ID!) { a: setCharging(vehicleId: $id, action: START) { id } "
        "b: setCharging(vehicleId: $id, action: STOP) { id } }"
    )

    body = await server.graphql(batch, {"id": str(vehicle.id)}, key=key)

    assert body["data"] is None
    assert codes(body) == ["BATCHED_COMMANDS"]
    assert not [c for c in server.simulator.calls if c.startswith("set_charging")]


async def test_production_mode_makes_no_suggestions_and_introspection_can_be_off(
    settings: Settings,
) -> None:
    await _truncate(settings.database_url)
    quiet = replace(settings, environment="production", graphql_introspection=False)
    async with run_server(quiet) as server:
        _, key = await server.user()
        typo = await server.graphql("{ vehicls { id } }", key=key)
        schema = await server.graphql("{ __schema { types { name } } }", key=key)

    assert "Did you mean" not in typo["errors"][0]["message"]
    assert schema["data"] is None
    assert "introspection" in schema["errors"][0]["message"].lower()


async def test_development_mode_suggests_and_allows_introspection(server: Server) -> None:
    _, key = await server.user()
    typo = await server.graphql("{ vehicls { id } }", key=key)
    schema = await server.graphql("{ __schema { queryType { name } } }", key=key)

    assert "Did you mean" in typo["errors"][0]["message"]
    assert schema["data"] == {"__schema": {"queryType": {"name": "Query"}}}


async def test_production_serves_no_introspection_unless_it_is_turned_on(
    settings: Settings,
) -> None:
    await _truncate(settings.database_url)
    introspect = "{ __schema { queryType { name } } }"
    async with run_server(replace(settings, environment="production")) as server:
        _, key = await server.user()
        for headers in ({}, {"Authorization": f"Bearer {key}"}):
            refused = (
                await server.http.post("/graphql", json={"query": introspect}, headers=headers)
            ).json()
            assert refused["data"] is None
            assert "introspection" in refused["errors"][0]["message"].lower()
    await _truncate(settings.database_url)
    turned_on = replace(settings, environment="production", graphql_introspection=True)
    async with run_server(turned_on) as server:
        _, key = await server.user()
        served = await server.graphql(introspect, key=key)
    assert served == {"data": {"__schema": {"queryType": {"name": "Query"}}}}
