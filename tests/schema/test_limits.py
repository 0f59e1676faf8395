"""GraphQL limits: depth, tokens, aliases, cost, batched commands, suggestions, introspection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import httpx
import pytest
from gql import Client, gql
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport
from graphql import Lexer, Source, TokenKind, get_introspection_query

from evlink.settings import Settings
from tests.conftest import (
    PROTOCOLS,
    Server,
    _truncate,
    next_result,
    run_server,
    serve_process,
    subscription,
)


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


# Documents that once cost more than linear time to check. Each try uses new names, so
# that neither the parser cache nor the validation cache answers it.
T = TypeVar("T")
REFUSED_IN = 0.05  # seconds: the issue's bound for refusing a hostile document here
TRIES = 8  # timed requests of which the fastest counts (the machine is shared)
# A 2,000-token document may cost this many times a one-field query measured in the same
# test, when that is more than REFUSED_IN: a slower machine slows both (a quadratic check
# cost seconds, hundreds of times the one-field query).
TIMES_A_SMALL_QUERY = 25


def doubling_fragments(count: int, tag: str, on: str = "Query", root: str = "query") -> str:
    """``count`` fragments, each spreading the next one twice: 2**count fields expanded."""
    fragments = [
        f"fragment {tag}{i} on {on} {{ ...{tag}{i + 1} ...{tag}{i + 1} }}" for i in range(count)
    ]
    fragments.append(f"fragment {tag}{count} on {on} {{ __typename }}")
    return f"{root} {{ ...{tag}0 }} " + " ".join(fragments)


async def fastest(requests: list[Callable[[], Awaitable[T]]]) -> tuple[float, T]:
    """The shortest time of ``requests`` (made ready beforehand, each timed alone: the
    machine is shared, and the best time is the one that says what the work costs), and
    the last one's result."""
    best, result = float("inf"), None
    for request in requests:
        started = time.perf_counter()
        result = await request()
        best = min(best, time.perf_counter() - started)
    assert result is not None
    return best, result


def post(
    http: httpx.AsyncClient, document: str, key: str | None = None, **payload: str
) -> Callable[[], Awaitable[httpx.Response]]:
    """A GraphQL POST of ``document``, ready to be sent (and timed) later."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"query": document, **payload}
    return lambda: http.post("/graphql", json=body, headers=headers)


@pytest.fixture
async def served(server: Server) -> AsyncIterator[tuple[str, str]]:
    """evlink in a process of its own on the test's database, and a key: a document that
    freezes that server's event loop cannot freeze the test's timeouts with it."""
    _, key = await server.user()
    async with serve_process(server.settings.database_url) as base_url:
        yield base_url, key


@pytest.mark.parametrize("with_key", [False, True], ids=["no key", "key"])
async def test_fragments_spread_twice_are_refused_at_once_over_http(
    served: tuple[str, str], with_key: bool
) -> None:
    base_url, key = served
    documents = [doubling_fragments(40, f"F{number}x") for number in range(TRIES + 10)]
    async with httpx.AsyncClient(base_url=base_url, timeout=5.0) as http:
        attacks = [post(http, d, key if with_key else None) for d in documents]
        took, answer = await fastest(attacks[:TRIES])
        # Ten more at once, and a health check meanwhile: the server keeps answering.
        health_started = time.perf_counter()
        health, *answers = await asyncio.gather(
            http.get("/healthz"), *(attack() for attack in attacks[TRIES:])
        )
        health_took = time.perf_counter() - health_started

    assert answer.status_code == 200
    assert answer.json()["data"] is None
    assert codes(answer.json()) == ["QUERY_TOO_COMPLEX"]
    assert took < REFUSED_IN, f"refused in {took * 1000:.1f} ms"
    assert health.status_code == 200
    assert health_took < 1.0
    assert all(codes(a.json()) == ["QUERY_TOO_COMPLEX"] for a in answers)


def ws_client(base_url: str, key: str, protocol: str) -> Client:
    transport = WebsocketsTransport(
        url=base_url.replace("http://", "ws://") + "/graphql",
        subprotocols=[protocol],
        init_payload={"Authorization": f"Bearer {key}"},
    )
    return Client(transport=transport, fetch_schema_from_transport=False)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_fragments_spread_twice_are_refused_at_once_over_websockets(
    served: tuple[str, str], protocol: str
) -> None:
    base_url, key = served
    documents = [
        doubling_fragments(40, f"S{n}x", on="Subscription", root="subscription")
        for n in range(TRIES)
    ]
    async with ws_client(base_url, key, protocol) as session:

        def attack(document: str) -> Callable[[], Awaitable[TransportQueryError]]:
            async def subscribe() -> TransportQueryError:
                with pytest.raises(TransportQueryError) as refused:
                    async with subscription(session, document) as stream:
                        await next_result(stream)
                return refused.value

            return subscribe

        took, refused = await fastest([attack(d) for d in documents])
        async with httpx.AsyncClient(base_url=base_url, timeout=5.0) as http:
            health = await http.get("/healthz")

    assert refused.errors
    assert refused.errors[0]["extensions"]["code"] == "QUERY_TOO_COMPLEX"
    assert took < REFUSED_IN, f"refused in {took * 1000:.1f} ms"
    assert health.status_code == 200


async def test_a_query_of_doubling_fragments_is_refused_at_once_over_graphql_transport_ws(
    served: tuple[str, str],
) -> None:
    base_url, key = served
    documents = [gql(doubling_fragments(40, f"Q{n}x")) for n in range(TRIES)]
    async with ws_client(base_url, key, WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL) as session:

        def attack(document: Any) -> Callable[[], Awaitable[TransportQueryError]]:
            async def execute() -> TransportQueryError:
                with pytest.raises(TransportQueryError) as refused:
                    await session.execute(document)
                return refused.value

            return execute

        took, refused = await fastest([attack(d) for d in documents])

    assert refused.errors
    assert refused.errors[0]["extensions"]["code"] == "QUERY_TOO_COMPLEX"
    assert took < REFUSED_IN, f"refused in {took * 1000:.1f} ms"


async def test_fragments_that_branch_are_measured_once_each(served: tuple[str, str]) -> None:
    """Each fragment selects two fields that each spread the next: no name repeats, and
    2**40 selection sets lie under the first. Measured once per fragment, the depth is
    known at once."""
    base_url, _ = served

    def branching(tag: str) -> str:
        fragments = [
            f"fragment {tag}{i} on Query {{ a {{ ...{tag}{i + 1} }} b {{ ...{tag}{i + 1} }} }}"
            for i in range(40)
        ]
        return (
            f"query {{ ...{tag}0 }} " + " ".join(fragments) + f" fragment {tag}40 on Query {{ c }}"
        )

    async with httpx.AsyncClient(base_url=base_url, timeout=5.0) as http:
        took, answer = await fastest([post(http, branching(f"B{n}x")) for n in range(TRIES)])

    assert codes(answer.json()) == ["QUERY_TOO_COMPLEX"]
    assert "exceeds maximum operation depth of 10" in answer.json()["errors"][0]["message"]
    assert took < REFUSED_IN, f"refused in {took * 1000:.1f} ms"


def _tokens(document: str) -> int:
    lexer = Lexer(Source(document))
    count = 0
    while lexer.advance().kind != TokenKind.EOF:
        count += 1
    return count


def _largest(make: Callable[[int, str], str], tag: str, tokens: int = 1990) -> str:
    """The largest document ``make`` builds within ``tokens`` tokens."""
    size = 1
    while _tokens(make(size * 2, tag)) <= tokens:
        size *= 2
    step = size // 2
    while step:
        if _tokens(make(size + step, tag)) <= tokens:
            size += step
        step //= 2
    return make(size, tag)


SHAPES: dict[str, Callable[[int, str], str]] = {
    # One field again and again: GraphQL compares every pair of fields named alike.
    "one field repeated": lambda n, tag: f"query {tag} {{ " + "__typename " * n + "}",
    "one object repeated": lambda n, tag: f"query {tag} {{ " + "viewer { id } " * n + "}",
    "objects of repeated fields": lambda n, tag: (
        f"query {tag} {{ " + ("viewer { " + "id " * 50 + "} ") * n + "}"
    ),
    # A variable: GraphQL's variable rules then walk the operation too.
    "objects of repeated fields with a variable": lambda n, tag: (
        f"query {tag}($v: ID!) {{ vehicle(id: $v) {{ id }} "
        + ("viewer { " + "id " * 50 + "} ") * n
        + "}"
    ),
    "lists repeated": lambda n, tag: (
        f"query {tag} {{ vehicles {{ " + "chargeState { batteryLevel } " * n + "} }"
    ),
    "a field repeated through inline fragments": lambda n, tag: (
        f"query {tag} {{ " + "... on Query { __typename } " * n + "}"
    ),
    "wide fragments": lambda n, tag: (
        f"query {tag} {{ ...{tag}A }} fragment {tag}A on Query {{ "
        + " ".join(f"...{tag}B{i}" for i in range(n))
        + " } "
        + " ".join(f"fragment {tag}B{i} on Query {{ viewer {{ id }} }}" for i in range(n))
    ),
    "one fragment spread widely": lambda n, tag: (
        f"query {tag} {{ " + f"...{tag}A " * n + f"}} fragment {tag}A on Query {{ __typename }}"
    ),
    "nested inline fragments": lambda n, tag: (
        f"query {tag} {{ " + "... on Query { " * n + "__typename" + " }" * n + " }"
    ),
    "nested fields": lambda n, tag: (
        f"query {tag} {{ "
        + "viewer { vehicles { chargingCommands { vehicle { " * n
        + "id"
        + " } } } }" * n
        + " }"
    ),
    "many operations": lambda n, tag: " ".join(
        f"query {tag}{i} {{ __typename }}" for i in range(n)
    ),
    "many variables": lambda n, tag: (
        f"query {tag}("
        + ", ".join(f"$v{i}: ID" for i in range(n))
        + ") { "
        + " ".join(f"a{i}: vehicle(id: $v{i}) {{ id }}" for i in range(min(n, 10)))
        + " }"
    ),
    "long arguments": lambda n, tag: (
        f"query {tag} {{ viewer {{ id }} "
        + " ".join(f'v{i}: vehicle(id: "{i}") {{ id }}' for i in range(n))
        + " }"
    ),
}


@pytest.mark.parametrize("shape", SHAPES)
async def test_documents_of_2000_tokens_of_any_shape_are_checked_at_once(
    served: tuple[str, str], shape: str
) -> None:
    base_url, key = served
    documents = [_largest(SHAPES[shape], f"T{number}x") for number in range(TRIES)]
    assert _tokens(documents[0]) > 1000, "the shape should fill the token limit"
    async with httpx.AsyncClient(base_url=base_url, timeout=5.0) as http:
        checks = [
            post(http, d, key, operationName=f"T{n}x0")
            if shape == "many operations"
            else post(http, d, key)
            for n, d in enumerate(documents)
        ]
        took, answer = await fastest(checks)
        small, _ = await fastest([post(http, "{ __typename }", key) for _ in range(TRIES)])

    assert answer.status_code == 200
    assert answer.json().get("errors") or answer.json()["data"] is not None
    bound = max(REFUSED_IN, TIMES_A_SMALL_QUERY * small)
    assert took < bound, f"checked in {took * 1000:.1f} ms (one field: {small * 1000:.1f} ms)"


LIMIT_CASES = {
    # name: (document at the limit, document just past it, what the refusal says)
    "fragment spreads": (
        "{ " + "...Q " * 50 + "viewer { " + "...W " * 50 + "} } "
        "fragment Q on Query { __typename } fragment W on Viewer { id }",
        "{ " + "...Q " * 50 + "viewer { " + "...W " * 51 + "} } "
        "fragment Q on Query { __typename } fragment W on Viewer { id }",
        "101 fragment spreads, more than the limit of 100",
    ),
    "operations": (
        " ".join(f"query Q{i} {{ __typename }}" for i in range(20)),
        " ".join(f"query Q{i} {{ __typename }}" for i in range(21)),
        "21 operations, more than the limit of 20",
    ),
    "repeats": (
        "{ " + "__typename " * 40 + "... on Query { " + "__typename " * 10 + "} }",
        "{ " + "__typename " * 40 + "... on Query { " + "__typename " * 11 + "} }",
        "'__typename' is selected 51 times in one selection set, more than the limit of 50",
    ),
}


@pytest.mark.parametrize("limit", LIMIT_CASES)
async def test_each_document_limit_refuses_one_past_it(server: Server, limit: str) -> None:
    _, key = await server.user()
    within, past, message = LIMIT_CASES[limit]
    operation = {"operationName": "Q0"} if limit == "operations" else {}

    accepted = await server.http.post(
        "/graphql", json={"query": within, **operation}, headers={"Authorization": f"Bearer {key}"}
    )
    refused = await server.http.post(
        "/graphql", json={"query": past, **operation}, headers={"Authorization": f"Bearer {key}"}
    )

    assert accepted.json().get("errors") is None
    assert accepted.json()["data"]
    assert codes(refused.json()) == ["QUERY_TOO_COMPLEX"]
    assert message in refused.json()["errors"][0]["message"]


async def test_the_standard_introspection_query_is_within_the_limits(server: Server) -> None:
    """GraphiQL and code generators send it: its ``ofType`` chain is deeper than the
    depth limit, which counts no introspection field."""
    body = await server.graphql(get_introspection_query(descriptions=True))

    assert body.get("errors") is None
    assert body["data"]["__schema"]["queryType"]["name"] == "Query"


async def test_variables_are_still_checked_when_a_document_has_some(server: Server) -> None:
    """A document without ``$`` skips GraphQL's variable rules; one with them does not."""
    _, key = await server.user()

    undefined = await server.graphql("query { vehicle(id: $v) { id } }", key=key)
    unused = await server.graphql("query($v: ID) { viewer { id } }", key=key)
    misplaced = await server.graphql("query($v: Int) { vehicle(id: $v) { id } }", key=key)

    assert "Variable '$v' is not defined." in undefined["errors"][0]["message"]
    assert "Variable '$v' is never used." in unused["errors"][0]["message"]
    assert "used in position expecting type 'ID!'" in misplaced["errors"][0]["message"]


async def test_an_int_literal_too_long_for_graphql_is_refused_in_its_own_words(
    server: Server,
) -> None:
    _, key = await server.user()
    huge = "9" * 5000

    body = await server.graphql(f"{{ vehicles {{ chargingCommands(last: {huge}) {{ id }} }} }}")
    nested = await server.graphql(
        f"{{ vehicles {{ chargingCommands(last: [1, {{a: {huge}}}]) {{ id }} }} }}", key=key
    )

    assert body["data"] is None
    assert body["errors"][0]["message"] == "An Int of 5000 digits: GraphQL's Int has 32 bits"
    assert codes(body) == ["BAD_REQUEST"]
    assert codes(nested) == ["BAD_REQUEST"]


async def metric(server: Server, name: str) -> float:
    text = (await server.http.get("/metrics")).text
    (line,) = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


async def test_only_valid_documents_are_kept_parsed_and_within_bounds(server: Server) -> None:
    """Unique invalid documents of 2,000 tokens, sent without a key, once filled the
    parser's cache (about 1 MiB each: 1.7 GB and seconds-long pauses). Now only valid
    documents are kept, at most 256 and 256 KiB of text."""
    _, key = await server.user()
    wide = " ".join(f"f{i}" for i in range(1990))

    for number in range(30):
        refused = await server.graphql(f"query Q{number} {{ vehicles {{ {wide} }} }}")
        assert refused["errors"]
    assert await metric(server, "evlink_graphql_documents_kept") == 0

    for _ in range(2):
        assert (await server.graphql("{ viewer { id } }", key=key))["data"]
    assert await metric(server, "evlink_graphql_documents_kept") == 1

    too_large = "{ __typename } #" + "x" * 20_000  # valid, but more than 16 KiB of text
    assert (await server.graphql(too_large))["data"]
    assert await metric(server, "evlink_graphql_documents_kept") == 1

    for number in range(40):  # 10 KiB each: 256 KiB of text hold 25 of them
        assert await server.graphql(f"query P{number} {{ __typename }} #" + "x" * 10_000)
    assert 20 <= await metric(server, "evlink_graphql_documents_kept") <= 26

    for number in range(300):
        assert (await server.graphql(f"query Q{number} {{ __typename }}"))["data"]
    assert await metric(server, "evlink_graphql_documents_kept") == 256
