"""GraphQL errors in production (evlink/schema/errors.py): no message names an argument
or a type the client did not write, over HTTP and websockets."""

from __future__ import annotations

import asyncio
import json
import re
from contextlib import aclosing
from dataclasses import replace
from typing import Any

import pytest
from gql import GraphQLRequest
from gql.transport.exceptions import TransportQueryError

from evlink.settings import Settings
from tests.conftest import PROTOCOLS, TIMEOUT, Server, _truncate, run_server

SUBSCRIPTION = "subscription($id: ID!) { chargeState(vehicleId: $id) { batteryLevel } }"
# (document, variables, the message production answers). Each one named a schema
# argument or type the document does not hold (in brackets: what it named).
MISTAKES: list[tuple[str, dict[str, Any], str]] = [
    (  # Query.vehicle(id:), ID!
        "{ vehicle { name } }",
        {},
        "A required argument of 'vehicle' was not provided.",
    ),
    (  # Mutation.linkVehicleAccount(redirectUri:), String!
        "mutation { linkVehicleAccount }",
        {},
        "A required argument of 'linkVehicleAccount' was not provided.",
    ),
    (  # Boolean!
        "{ viewer { email @include } }",
        {},
        "A required argument of '@include' was not provided.",
    ),
    (  # Viewer
        "{ viewer { emal } }",
        {},
        "Cannot query field 'emal' here.",
    ),
    (  # Query
        '{ vehicle(id: "x", idd: "x") { name } }',
        {},
        "Unknown argument 'idd' on field 'vehicle'.",
    ),
    (  # ID!
        "{ viewer { email { x } } }",
        {},
        "Field 'email' must not have a selection.",
    ),
    (  # Viewer!
        "{ viewer }",
        {},
        "Field 'viewer' must have a selection of subfields.",
    ),
    (  # ID!
        "query($a: String!) { vehicle(id: $a) { name } }",
        {"a": "x"},
        "Variable '$a' of type 'String!' cannot be used in this position.",
    ),
    (  # ChargingAction
        'mutation { setCharging(vehicleId: "x", action: STAR) { id } }',
        {},
        "Value 'STAR' does not exist in this enum.",
    ),
    (  # ChargingAction
        'mutation { setCharging(vehicleId: "x", action: "START") { id } }',
        {},
        'Cannot represent value: "START".',
    ),
    (  # Int
        "{ vehicles { chargingCommands(last: 1.5) { id } } }",
        {},
        "Cannot represent value: 1.5",
    ),
    (  # String
        "mutation { linkVehicleAccount(redirectUri: 5) }",
        {},
        "Cannot represent value: 5",
    ),
    (  # Int!
        "{ vehicles { chargingCommands(last: null) { id } } }",
        {},
        "Expected value not to be None.",
    ),
    (  # Viewer
        "{ viewer { ... on Vehicle { name } } }",
        {},
        "Fragment cannot be spread here as these objects can never be of type 'Vehicle'.",
    ),
]


def quoted_names(message: str) -> list[str]:
    return re.findall(r"'([^']+)'", message)


async def test_production_errors_name_nothing_the_client_did_not_write(
    settings: Settings,
) -> None:
    await _truncate(settings.database_url)
    async with run_server(replace(settings, environment="production")) as server:
        _, key = await server.user()
        answers = [
            await server.graphql(document, variables, key=key)
            for document, variables, _ in MISTAKES
        ]
        async with server.gql_client(key, PROTOCOLS[0]) as session:
            with pytest.raises(TransportQueryError) as over_websocket:
                await session.execute(GraphQLRequest("{ vehicle { name } }"))
        async with server.gql_client(key, PROTOCOLS[1]) as session:
            # Legacy graphql-ws serves subscriptions only.
            request = GraphQLRequest(SUBSCRIPTION, variable_values={"id": ["x"]})
            async with aclosing(session.subscribe(request)) as stream:
                with pytest.raises(TransportQueryError) as over_legacy_websocket:
                    await asyncio.wait_for(anext(stream), TIMEOUT)

    for (document, variables, expected), answer in zip(MISTAKES, answers, strict=True):
        messages = [error["message"] for error in answer["errors"]]
        assert messages == [expected], document
        written = document + json.dumps(variables)
        for name in quoted_names(expected):
            assert name in written, (document, name)
    assert over_websocket.value.errors is not None
    assert over_websocket.value.errors[0]["message"] == (
        "A required argument of 'vehicle' was not provided."
    )
    assert over_legacy_websocket.value.errors is not None
    assert over_legacy_websocket.value.errors[0]["message"] == (
        "Variable '$id' has invalid value: Cannot represent value: ['x']"
    )


async def test_development_errors_keep_graphqls_own_messages(server: Server) -> None:
    """The rewriting is production's: development keeps the names that help a developer."""
    _, key = await server.user()
    answer = await server.graphql("{ vehicle { name } }", key=key)
    assert answer["errors"][0]["message"] == (
        "Argument 'Query.vehicle(id:)' of type 'ID!' is required, but it was not provided."
    )
