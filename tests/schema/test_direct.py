"""Known queries answered without Strawberry's operation (evlink.schema.direct), over HTTP.

A document's first request goes through Strawberry (the document is parsed and
validated, then kept); the same text again is a known query, answered by its plan or
by graphql-core directly. Each test sends a document twice, or a known text and an
unknown variant of it, and compares the answers byte for byte, with the charge of each
(the ``RateLimit-Remaining`` of the burst) and the way /metrics says each request took.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from graphql import parse

from evlink.errors import ProviderUnavailable
from evlink.models import Tier, User
from evlink.resolvers import accounts
from evlink.resolvers.auth import issue_key, revoke_key
from evlink.schema import build_schema
from evlink.schema.direct import KnownQuery, Plans
from evlink.settings import Settings
from tests.conftest import Server, _truncate, run_server

STATUS = (
    "query Status($id: ID!) { vehicle(id: $id) { name lastSeen isReachable "
    "location { latitude longitude } chargeState { batteryLevel range isPluggedIn "
    "isCharging batteryCapacity chargeLimit chargeRate chargeTimeRemaining isFullyCharged "
    "lastUpdated powerDeliveryState maxCurrent } } }"
)
FRAGMENTS = """
query Car($id: ID!) {
  car: vehicle(id: $id) {
    ...Plain
    __typename
    ... on Vehicle { id again: name }
    ... { provider }
    chargeState { ...State isCharging }
    ...Plain
  }
}
fragment Plain on Vehicle {
  id name vendor providerVehicleId lastSeen isReachable
  information { vin brand model year displayName }
  location { latitude longitude lastUpdated }
  odometer { distance lastUpdated }
  smartChargingPolicy { isEnabled deadline minimumChargeLimit }
  capabilities { chargeState { isCapable interventionIds } startCharging { isCapable } }
}
fragment State on ChargeState { __typename batteryLevel powerDeliveryState lastUpdated range }
"""
TWO_OPERATIONS = """
query Names($id: ID!) { vehicle(id: $id) { name } }
query States($id: ID!) { vehicle(id: $id) { id chargeState { batteryLevel } } }
"""
# Two resolvers at the root: graphql-core executes it (the plan does not).
TWO_CARS = "query($a: ID!, $b: ID!) { a: vehicle(id: $a) { name } b: vehicle(id: $b) { name } }"
VEHICLES = "{ vehicles { id chargeState { batteryLevel } } }"
_KNOWN = re.compile(rb'evlink_graphql_known_queries\{way="([^"]+)"\} (\d+)')


class Client:
    def __init__(self, server: Server) -> None:
        self.server = server

    async def post(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        key: str | None = None,
        **extra: Any,
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body: dict[str, Any] = {"query": query, **extra}
        if variables is not None:
            body["variables"] = variables
        return await self.server.http.post("/graphql", json=body, headers=headers)

    async def known(self) -> dict[str, int]:
        found = _KNOWN.findall((await self.server.http.get("/metrics")).content)
        return {way.decode(): int(count) for way, count in found}

    async def twice(self, query: str, *args: Any, **kwargs: Any) -> tuple[httpx.Response, str]:
        """``query`` sent unknown, then known: the second answer, and the way it took
        ("strawberry" when neither known way counted it); both answers alike. A comment
        makes the text one never sent before."""
        query = f"{query}\n# {uuid.uuid4()}"
        before = await self.known()
        first = await self.post(query, *args, **kwargs)
        middle = await self.known()
        second = await self.post(query, *args, **kwargs)
        after = await self.known()
        assert middle == before, "an unknown document went the known way"
        assert_same(first, second)
        ways = [way for way in after if after[way] != middle.get(way, 0)]
        assert len(ways) <= 1, (middle, after)
        return second, ways[0] if ways else "strawberry"


def assert_same(first: httpx.Response, second: httpx.Response) -> None:
    assert second.status_code == first.status_code
    assert second.content == first.content
    volatile = {"date", "x-request-id", "ratelimit"}
    headers = [
        sorted((k, v) for k, v in r.headers.multi_items() if k not in volatile)
        for r in (first, second)
    ]
    assert headers[0] == headers[1]
    if first.status_code != 429:
        # One charge each, of the same policies: each has one less left after the second.
        left = [_remaining(r.headers.get("ratelimit", "")) for r in (first, second)]
        assert set(left[0]) == set(left[1])
        assert {name: left[0][name] - 1 for name in left[0]} == left[1], left


def _remaining(field: str) -> dict[str, int]:
    """``RateLimit``'s remaining count (``r``) per policy."""
    return {name: int(remaining) for name, remaining in re.findall(r'"(\w+)";r=(\d+)', field)}


@pytest.fixture(params=["development", "production"])
async def client(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Client]:
    await _truncate(settings.database_url)
    changed: dict[str, Any] = {
        "cache_ttl": 0.0,
        "environment": request.param,
        "burst": "1000/minute",
        "graphql_max_depth": 3,
        "graphql_max_cost": 100,
    }
    if request.param == "production":
        changed["graphql_introspection"] = False
    async with run_server(replace(settings, **changed)) as server:
        yield Client(server)


async def _car(client: Client) -> tuple[User, str, str]:
    user, key = await client.server.user()
    vehicle = await client.server.vehicle(user, "charging")
    return user, key, str(vehicle.id)


async def test_the_polled_query_is_answered_by_its_plan_as_strawberry_answers(
    client: Client,
) -> None:
    _, key, car = await _car(client)

    answer, way = await client.twice(STATUS, {"id": car}, key)

    assert way == "plan"
    assert set(_remaining(answer.headers["ratelimit"])) == {"burst", "reads"}
    assert answer.json()["data"]["vehicle"]["chargeState"]["isCharging"] is True
    # Again and again, with the same answer (the simulator's clock stands still).
    assert_same(answer, await client.post(STATUS, {"id": car}, key))


async def test_fragments_aliases_typenames_and_literals_take_the_plan(client: Client) -> None:
    _, key, car = await _car(client)

    answer, way = await client.twice(FRAGMENTS, {"id": car}, key)
    assert way == "plan"
    data = answer.json()["data"]["car"]
    assert data["__typename"] == "Vehicle"
    assert data["again"] == data["name"]
    assert data["capabilities"]["chargeState"]["interventionIds"] == []
    assert data["chargeState"]["__typename"] == "ChargeState"

    literal = f'{{ vehicle(id: "{car}") {{ id name }} }}'
    assert (await client.twice(literal, None, key))[1] == "plan"
    for text, name in ((TWO_OPERATIONS, "Names"), (TWO_OPERATIONS + "\n", "States")):
        _, way = await client.twice(text, {"id": car}, key, operationName=name)
        assert way == "plan"


async def test_resolver_errors_are_graphql_cores_own(client: Client) -> None:
    _, key, car = await _car(client)
    stranger, other_key = await client.server.user()
    theirs = str((await client.server.vehicle(stranger, "plugged")).id)
    unlinked = await accounts.add_vehicle(
        stranger, provider="simulator", provider_vehicle_id=None, name="Unlinked"
    )

    for query, variables, code in (
        (STATUS, {"id": theirs}, "FORBIDDEN_OWNER"),  # someone else's car
        (STATUS, {"id": str(uuid.uuid4())}, "NOT_FOUND"),
        (FRAGMENTS, {"id": "not-a-uuid"}, "NOT_FOUND"),
        (STATUS, {"id": 5}, "NOT_FOUND"),  # an Int for an ID: coerced by graphql-core
    ):
        answer, way = await client.twice(query, variables, key)
        assert way == "graphql-core", code
        assert answer.json()["data"] is None
        assert answer.json()["errors"][0]["extensions"]["code"] == code

    # An error of the nullable chargeState: the vehicle's data stays, with the error.
    answer, way = await client.twice(FRAGMENTS, {"id": str(unlinked.id)}, other_key)
    assert way == "graphql-core"
    body = answer.json()
    assert body["data"]["car"]["chargeState"] is None
    assert body["data"]["car"]["name"]
    assert body["errors"][0]["path"] == ["car", "chargeState"]
    assert body["errors"][0]["extensions"]["code"] == "PROVIDER_LINK_MISSING"

    # Variables graphql-core refuses, before any resolver runs.
    for variables in ({}, {"id": None}, {"id": {"x": 1}}):
        answer, way = await client.twice(STATUS, variables, key)
        assert way == "graphql-core"
        assert answer.json()["data"] is None
    assert car


async def test_what_the_plan_does_not_do_graphql_core_does(client: Client) -> None:
    user, key, car = await _car(client)
    other = str((await client.server.vehicle(user, "plugged")).id)

    answer, way = await client.twice(TWO_CARS, {"a": car, "b": other}, key)
    assert way == "graphql-core"
    assert set(answer.json()["data"]) == {"a", "b"}
    answer, way = await client.twice(VEHICLES, None, key)
    assert way == "graphql-core"
    assert len(answer.json()["data"]["vehicles"]) == 2
    skipped = "query($id: ID!, $no: Boolean!) { vehicle(id: $id) { id name @skip(if: $no) } }"
    answer, way = await client.twice(skipped, {"id": car, "no": True}, key)
    assert way == "graphql-core"
    assert answer.json()["data"]["vehicle"] == {"id": car}


async def test_what_strawberry_must_answer_stays_strawberrys(client: Client) -> None:
    _, key, car = await _car(client)

    for args, kwargs in (
        ((STATUS, {"id": car}), {}),  # no key: UNAUTHENTICATED
        ((STATUS, {"id": car}, "not-a-key"), {}),
        ((STATUS + "\n", {"id": car}, key), {"operationName": "Nope"}),
        ((TWO_OPERATIONS, {"id": car}, key), {}),  # which operation?
        ((STATUS + "\n\n", {"id": car}, key), {"extensions": {"x": 1}}),
        (('mutation { linkVehicleAccount(redirectUri: "x") }', None, key), {}),
    ):
        _, way = await client.twice(*args, **kwargs)
        assert way == "strawberry", (args, kwargs)

    # Without a declared length the body is not read ahead: Strawberry's way.
    body = json.dumps({"query": STATUS, "variables": {"id": car}}).encode()
    assert (await client.post(STATUS, {"id": car}, key)).status_code == 200  # known now
    before = await client.known()

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    chunked = await client.server.http.post(
        "/graphql",
        content=chunks(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 200
    assert chunked.json()["data"]["vehicle"]["chargeState"]
    assert await client.known() == before

    # Documents over the limits are never known: each is refused by Strawberry.
    deep = '{ chargingCommand(id: "x") { vehicle { capabilities { chargeState { isCapable } } } } }'
    costly = "{ vehicles { chargingCommands { id } } }"
    aliased = "{ " + " ".join(f"a{n}: __typename" for n in range(16)) + " }"
    for query, code in (
        (deep, "QUERY_TOO_COMPLEX"),
        (costly, "QUERY_TOO_COSTLY"),
        (aliased, "QUERY_TOO_COMPLEX"),
    ):
        answer, way = await client.twice(query, None, key)
        assert way == "strawberry"
        assert answer.json()["errors"][0]["extensions"]["code"] == code


async def test_a_known_query_past_its_burst_is_refused_as_strawberry_refuses_it(
    settings: Settings,
) -> None:
    await _truncate(settings.database_url)
    limited = replace(settings, cache_ttl=0.0, burst="2/minute")
    async with run_server(limited) as server:
        client = Client(server)
        user, key = await server.user(tier=Tier.PRO)
        car = str((await server.vehicle(user, "plugged")).id)
        variant = STATUS + " "  # the same query, an unknown text

        assert (await client.post(STATUS, {"id": car}, key)).status_code == 200
        assert (await client.post(variant, {"id": car}, key)).status_code == 200
        known = await client.post(STATUS, {"id": car}, key)  # known: the direct way
        unknown = await client.post(variant + " ", {"id": car}, key)  # Strawberry's
        assert known.status_code == unknown.status_code == 429
        assert (await client.known()) == {"plan": 0, "graphql-core": 0}
        for name in ("content-type", "ratelimit-policy"):
            assert known.headers.get(name) == unknown.headers.get(name)
        assert known.headers.get("retry-after")
        assert unknown.headers.get("retry-after")
        assert known.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
        without_retry = re.compile(rb"\d+")
        assert without_retry.sub(b"N", known.content) == without_retry.sub(b"N", unknown.content)


async def test_a_resolver_that_failed_runs_once(settings: Settings) -> None:
    """graphql-core answers the plan's error with the resolver's outcome, not a new run:
    the provider reads that fail are as many per request as on Strawberry's way."""
    await _truncate(settings.database_url)
    async with run_server(replace(settings, cache_ttl=0.0, status_max_age=0.001)) as server:
        client = Client(server)
        user, key = await server.user()
        car = str((await server.vehicle(user, "plugged")).id)
        server.simulator.outage = ProviderUnavailable("The simulated provider is down")
        before = len(server.simulator.calls)

        answer, way = await client.twice(STATUS, {"id": car}, key)

        assert way == "graphql-core"
        error = answer.json()["errors"][0]
        assert error["path"] == ["vehicle", "chargeState"]
        assert error["extensions"]["code"] == "PROVIDER_UNAVAILABLE"
        assert answer.json()["data"]["vehicle"]["chargeState"] is None
        # Never read: the vehicle's first read, then chargeState's, each once per request.
        assert len(server.simulator.calls) == before + 4


# A known vehicle(id:) query whose key is not in the read cache: the key, its user, the
# vehicle and its charge state in one statement (resolvers.vehicles.StatusRead), judged
# in the order Strawberry's way judges them.
_TABLES = ("api_keys", "users", "vehicles", "charge_states")


def _reads(records: list[logging.LogRecord]) -> list[str]:
    """The SELECTs Tortoise ran (its debug log) on the key's and the vehicle's tables."""
    messages = [r.getMessage() for r in records if r.name == "tortoise.db_client"]
    return [m for m in messages if "SELECT" in m and any(f'"{table}"' in m for table in _TABLES)]


async def test_a_known_vehicle_query_reads_the_key_and_the_vehicle_in_one_statement(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    _, key, car = await _car(client)
    literal = f'{{ vehicle(id: "{car}") {{ id name chargeState {{ batteryLevel }} }} }}'
    for query, variables in ((STATUS, {"id": car}), (literal, None)):
        first = await client.post(query, variables, key)  # unknown: Strawberry's way
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="tortoise.db_client"):
            second = await client.post(query, variables, key)  # known: its plan
        assert_same(first, second)
        assert second.json()["data"]["vehicle"]["chargeState"]["batteryLevel"] is not None
        assert len(_reads(caplog.records)) == 1, _reads(caplog.records)

    # An id that is no UUID reads the key alone (NOT_FOUND after the charge, as before).
    await client.post(FRAGMENTS, {"id": "not-a-uuid"}, key)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="tortoise.db_client"):
        answer = await client.post(FRAGMENTS, {"id": "not-a-uuid"}, key)
    assert answer.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    reads = _reads(caplog.records)
    assert len(reads) == 1, reads
    assert '"vehicles"' not in reads[0], reads


async def test_a_known_vehicle_query_judges_the_key_then_the_limits_then_the_vehicle(
    settings: Settings,
) -> None:
    """Each answer of the known way (one statement) is the unknown way's, byte for byte,
    with the same charge: a refused key is refused whatever the vehicle and counted as a
    failure; an accepted one is charged, then told about the vehicle; past its limit
    every read is the same 429, whatever the vehicle."""
    await _truncate(settings.database_url)
    limited = replace(settings, cache_ttl=0.0, burst="8/minute", auth_failures="100/minute")
    async with run_server(limited) as server:
        client = Client(server)
        owner, key = await server.user(tier=Tier.PRO)
        stranger, _ = await server.user()
        mine = str((await server.vehicle(owner, "charging")).id)
        theirs = str((await server.vehicle(stranger, "plugged")).id)
        revoked = await issue_key(owner)
        await revoke_key(str(revoked.record.id))
        ids = [mine, theirs, str(uuid.uuid4()), "not-a-uuid"]

        for n, car in enumerate(ids, 1):
            answer, way = await client.twice(STATUS, {"id": car}, revoked.secret)
            assert way == "strawberry", car  # a refusal goes Strawberry's way, as before
            assert answer.status_code == 200
            assert answer.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
            assert _failures_left(answer) == 100 - 2 * n  # two refusals counted, one each

        codes = []
        for car in ids:
            answer, _ = await client.twice(STATUS, {"id": car}, key)
            body = answer.json()
            codes.append(body["errors"][0]["extensions"]["code"] if "errors" in body else None)
        assert codes == [None, "FORBIDDEN_OWNER", "NOT_FOUND", "NOT_FOUND"]
        assert _remaining(answer.headers["ratelimit"])["burst"] == 0  # each one charged

        before = await client.known()
        without_retry = re.compile(rb"\d+")
        for car in ids:
            known = await client.post(STATUS, {"id": car}, key)
            unknown = await client.post(f"{STATUS}\n# {uuid.uuid4()}", {"id": car}, key)
            assert known.status_code == unknown.status_code == 429, car
            assert without_retry.sub(b"N", known.content) == without_retry.sub(
                b"N", unknown.content
            )
        assert await client.known() == before  # refused before any execution


def _failures_left(answer: httpx.Response) -> int:
    found = re.fullmatch(r'"auth-failures";r=(\d+);t=\d+', answer.headers["ratelimit"])
    assert found, answer.headers["ratelimit"]
    return int(found[1])


async def test_a_key_revoked_is_refused_on_the_next_known_query(client: Client) -> None:
    owner, _, car = await _car(client)
    issued = await issue_key(owner)
    _, way = await client.twice(STATUS, {"id": car}, issued.secret)
    assert way == "plan"

    await revoke_key(str(issued.record.id))  # no cache to tell: EVLINK_CACHE_TTL=0

    refused = await client.post(STATUS, {"id": car}, issued.secret)
    assert refused.json()["data"] is None
    assert refused.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


def test_plans_are_bounded_by_count_and_by_their_documents_text() -> None:
    """A plan keeps its document alive: plans are bounded as the valid documents are."""
    schema = build_schema()

    def known(n: int, padding: int = 0) -> KnownQuery:
        text = f'query Q{n} {{ vehicle(id: "x") {{ id }} }}' + " " * padding
        return KnownQuery(text, parse(text), None, None)

    few = Plans(count=3, text_bytes=10_000)
    for n in range(5):
        assert few.plan(schema, known(n)) is not None
    assert len(few) == 3

    small = Plans(count=100, text_bytes=1_000)
    for n in range(10):
        small.plan(schema, known(n, padding=300))  # 336 characters each
    assert len(small) == 2
