"""GraphQL limits: depth, tokens, aliases, cost, batched commands, suggestions, introspection."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
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
#
# The work is counted, not timed: the Python function calls made in the test's thread
# (where the in-process server answers) while the request is answered. On a shared
# machine a time varies tenfold from run to run; the count is the same on every run, and
# a check that costs more than linear time makes it hundreds of times larger.
SMALL = "{ __typename }"
# A small document that every GraphQL server refuses (no such field).
SMALL_REFUSED = "{ noSuchField }"
T = TypeVar("T")
# A document may cost the calls of a one-field request (what every request costs: HTTP,
# the key, the edge) and this many calls per token of it more: the costliest shape of
# 2,000 tokens here makes about 66, refusing fragments spread twice about 45 (a gql
# client's parsing included); a check of more than linear time makes thousands.
CALLS_PER_TOKEN = 100


def within(calls: int, small: int, document: str) -> bool:
    return calls <= small + CALLS_PER_TOKEN * _tokens(document)


class TooMuchWork(Exception):
    """Raised inside the work being counted once it passes its ceiling, to end it."""


@dataclass
class Calls:
    ceiling: int
    count: int = 0


@contextmanager
def calls_counted(ceiling: int) -> Iterator[Calls]:
    """Counts the Python function calls made in this thread while the block runs; past
    ``ceiling`` the work is stopped (a :class:`TooMuchWork` is raised inside it), so that
    a check that would run for hours fails the test at once."""
    calls = Calls(ceiling)

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            calls.count += 1
            if calls.count > calls.ceiling:
                raise TooMuchWork(f"more than {calls.ceiling} calls")

    sys.setprofile(profile)
    try:
        yield calls
    finally:
        sys.setprofile(None)


async def work(request: Callable[[], Awaitable[T]], ceiling: int = 10_000_000) -> tuple[int, T]:
    """The calls that ``request`` costs, and its result (``None`` if the work was stopped
    at ``ceiling``: the count then says why)."""
    result: T | None = None
    with calls_counted(ceiling) as calls, suppress(TooMuchWork):
        result = await request()
    return calls.count, result  # type: ignore[return-value]


async def small_work(request: Callable[[], Awaitable[Any]]) -> int:
    """The calls of a one-field request, once the first (which pays for first use) is
    done."""
    await request()
    calls, _ = await work(request)
    return calls


def doubling_fragments(count: int, tag: str, on: str = "Query", root: str = "query") -> str:
    """``count`` fragments, each spreading the next one twice: 2**count fields expanded."""
    fragments = [
        f"fragment {tag}{i} on {on} {{ ...{tag}{i + 1} ...{tag}{i + 1} }}" for i in range(count)
    ]
    fragments.append(f"fragment {tag}{count} on {on} {{ __typename }}")
    return f"{root} {{ ...{tag}0 }} " + " ".join(fragments)


def post(
    http: httpx.AsyncClient, document: str, key: str | None = None, **payload: str
) -> Callable[[], Awaitable[httpx.Response]]:
    """A GraphQL POST of ``document``, ready to be sent (and counted) later."""
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
    server: Server, with_key: bool
) -> None:
    _, key = await server.user()
    sent = key if with_key else None
    small = await small_work(post(server.http, SMALL, sent))

    document = doubling_fragments(40, "F0x")

    calls, answer = await work(post(server.http, document, sent))

    assert within(calls, small, document), f"{calls} calls (one field: {small})"
    assert answer.status_code == 200
    assert answer.json()["data"] is None
    assert codes(answer.json()) == ["QUERY_TOO_COMPLEX"]


async def test_many_hostile_documents_at_once_leave_the_server_answering(
    served: tuple[str, str],
) -> None:
    """Ten at once at a server of its own, and a health check meanwhile: each is refused,
    the health check answered (within the client's timeout)."""
    base_url, key = served
    async with httpx.AsyncClient(base_url=base_url, timeout=5.0) as http:
        attacks = [post(http, doubling_fragments(40, f"F{n}x"), key) for n in range(10)]
        health, *answers = await asyncio.gather(
            http.get("/healthz"), *(attack() for attack in attacks)
        )

    assert health.status_code == 200
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
    server: Server, protocol: str
) -> None:
    _, key = await server.user()
    async with ws_client(server.base_url, key, protocol) as session:

        def attack(document: str) -> Callable[[], Awaitable[TransportQueryError]]:
            async def subscribe() -> TransportQueryError:
                with pytest.raises(TransportQueryError) as refused:
                    async with subscription(session, document) as stream:
                        await next_result(stream)
                return refused.value

            return subscribe

        small = await small_work(attack("subscription " + SMALL_REFUSED))
        document = doubling_fragments(40, "S0x", on="Subscription", root="subscription")
        calls, refused = await work(attack(document))

    assert within(calls, small, document), f"{calls} calls (a small refusal: {small})"
    assert refused.errors
    assert refused.errors[0]["extensions"]["code"] == "QUERY_TOO_COMPLEX"


async def test_a_query_of_doubling_fragments_is_refused_at_once_over_graphql_transport_ws(
    server: Server,
) -> None:
    _, key = await server.user()
    protocol = WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL
    async with ws_client(server.base_url, key, protocol) as session:

        def attack(document: str) -> Callable[[], Awaitable[TransportQueryError]]:
            async def execute() -> TransportQueryError:
                with pytest.raises(TransportQueryError) as refused:
                    await session.execute(gql(document))
                return refused.value

            return execute

        small = await small_work(attack(SMALL_REFUSED))
        document = doubling_fragments(40, "Q0x")
        calls, refused = await work(attack(document))

    assert within(calls, small, document), f"{calls} calls (a small refusal: {small})"
    assert refused.errors
    assert refused.errors[0]["extensions"]["code"] == "QUERY_TOO_COMPLEX"


async def test_fragments_that_branch_are_measured_once_each(server: Server) -> None:
    """Each fragment selects two fields that each spread the next: no name repeats, and
    2**40 selection sets lie under the first. Measured once per fragment, the depth is
    known at once."""

    def branching(tag: str) -> str:
        fragments = [
            f"fragment {tag}{i} on Query {{ a {{ ...{tag}{i + 1} }} b {{ ...{tag}{i + 1} }} }}"
            for i in range(40)
        ]
        return (
            f"query {{ ...{tag}0 }} " + " ".join(fragments) + f" fragment {tag}40 on Query {{ c }}"
        )

    small = await small_work(post(server.http, SMALL))
    document = branching("B0x")
    calls, answer = await work(post(server.http, document))

    assert within(calls, small, document), f"{calls} calls (one field: {small})"
    assert codes(answer.json()) == ["QUERY_TOO_COMPLEX"]
    assert "exceeds maximum operation depth of 10" in answer.json()["errors"][0]["message"]


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
    server: Server, shape: str
) -> None:
    _, key = await server.user()
    document = _largest(SHAPES[shape], "T0x")
    tokens = _tokens(document)
    assert tokens > 1000, "the shape should fill the token limit"
    operation = {"operationName": "T0x0"} if shape == "many operations" else {}
    small = await small_work(post(server.http, SMALL, key))

    calls, answer = await work(post(server.http, document, key, **operation))

    assert within(calls, small, document), f"{calls} calls for {tokens} tokens (one field: {small})"
    assert answer.status_code == 200
    assert answer.json().get("errors") or answer.json()["data"] is not None


async def test_graphql_variable_rules_cost_a_fraction_of_a_large_document(
    server: Server,
) -> None:
    """GraphQL's variable rules walk the whole operation: evlink skips them for a document
    without a ``$`` (they can find nothing), and keys their caches by node identity
    (graphql-core hashes a node's whole subtree at every lookup)."""
    _, key = await server.user()
    plain = _largest(SHAPES["objects of repeated fields"], "P0x")
    with_variable = _largest(SHAPES["objects of repeated fields with a variable"], "V0x")
    await small_work(post(server.http, SMALL, key))

    plain_calls, _ = await work(post(server.http, plain, key))
    variable_calls, answer = await work(post(server.http, with_variable, key))

    assert answer.status_code == 200
    assert plain_calls < 0.8 * variable_calls, (plain_calls, variable_calls)
    assert variable_calls < 1.75 * plain_calls, (plain_calls, variable_calls)


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


def _kept_answers(metrics: str) -> float:
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith("evlink_graphql_introspection_kept_answers ")
    )
    return float(line.split()[1])


async def test_introspection_without_a_key_is_answered_from_its_kept_result(
    server: Server,
) -> None:
    """The schema is fixed: a keyless introspection's answer is made once per document
    and kept (a full one costs about 28 ms of CPU, and a request without a key has no
    rate limit). With a key, or with other fields at the root, it runs as any query."""
    _, key = await server.user()
    full = get_introspection_query(descriptions=True)
    before = _kept_answers((await server.http.get("/metrics")).text)

    first = await server.graphql(full)
    again = await server.graphql(full)
    named = await server.graphql("{ __type(name: $n) { name } }".replace("$n", '"Vehicle"'))
    typed = await server.graphql(
        "query($n: String!) { __type(name: $n) { name } }", {"n": "ChargeState"}
    )
    other = await server.graphql("query($n: String!) { __type(name: $n) { name } }", {"n": "Query"})
    # With a key (over GET, which takes Strawberry's way, as an unknown document does).
    with_key = (
        await server.http.get(
            "/graphql",
            params={"query": full, "variables": "{}"},
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
        )
    ).json()
    mixed = await server.graphql("{ __typename viewer { id } }")
    mixed_again = await server.graphql("{ __typename viewer { id } }")
    # Neither kept: a mutation (not introspection alone), an answer with errors.
    mutation = [await server.graphql("mutation { __typename }") for _ in range(2)]
    unset = "query($n: String!) { __type(name: $n) { name } }"
    missing = [await server.graphql(unset) for _ in range(2)]
    after = _kept_answers((await server.http.get("/metrics")).text)

    assert first == again == with_key
    assert first["data"]["__schema"]["queryType"]["name"] == "Query"
    assert named["data"] == {"__type": {"name": "Vehicle"}}
    assert (typed["data"], other["data"]) == (
        {"__type": {"name": "ChargeState"}},
        {"__type": {"name": "Query"}},
    )
    assert mixed["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert mixed_again == mixed
    assert mutation[0] == mutation[1] == {"data": {"__typename": "Mutation"}}
    assert missing[0] == missing[1]
    assert missing[0]["errors"]
    assert after - before == 1  # only the second full introspection was a kept answer
