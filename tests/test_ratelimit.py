"""Tier quotas and rate limits over real HTTP and websockets, in memory and on Redis.

Windows move with the limiter's own clock (:class:`FakeTime`), never with sleeps.
The Redis tests need ``EVLINK_TEST_REDIS_URL`` (skipped with the reason when it is
unset) or start a private ``redis-server`` on a free port of 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from dataclasses import replace
from typing import Any

import httpx
import pytest
import redis.asyncio
from gql import GraphQLRequest
from gql.transport.exceptions import TransportQueryError

from evlink.models import ChargingCommand, Tier
from evlink.ratelimit import (
    REDIS_RETRY_INTERVAL,
    Limiter,
    MemoryCounters,
    describe,
    parse_rate,
    parse_tier_counts,
    parse_tier_rates,
)
from evlink.resolvers.auth import hash_key, issue_key, key_id, revoke_key
from evlink.settings import Settings, SettingsError
from tests.conftest import PROTOCOLS, TIMEOUT, Server, _truncate, free_port, run_server

ME = "/api/ha/me"
CHARGE_STATE = "subscription($id: ID!) { chargeState(vehicleId: $id) { isPluggedIn } }"
VIEWER = "{ viewer { tier quotas { name limit remaining resetAt } } }"
_ITEM = re.compile(r'"([a-z-]+)"((?:;[a-z]+=[0-9]+)+)')


class FakeTime:
    """The limiter's clock in a test: epoch seconds that move only when told."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fields(value: str | None) -> dict[str, dict[str, int]]:
    """A RateLimit or RateLimit-Policy value, checked item by item, as {name: {param: n}}."""
    assert value, "the header is missing"
    parsed: dict[str, dict[str, int]] = {}
    for item in value.split(", "):
        match = _ITEM.fullmatch(item)
        assert match, f"not a structured-field item: {item!r} in {value!r}"
        params = dict(p.split("=") for p in match[2].lstrip(";").split(";"))
        parsed[match[1]] = {k: int(v) for k, v in params.items()}
    return parsed


def remaining(response: httpx.Response, policy: str) -> int:
    return fields(response.headers.get("RateLimit"))[policy]["r"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def limiter_of(server: Server) -> Limiter:
    limiter = server.services.limiter
    assert limiter is not None
    return limiter


@contextlib.asynccontextmanager
async def limited(settings: Settings) -> AsyncIterator[tuple[Server, FakeTime]]:
    """A fresh server with these limits, its limiter on a clock the test moves."""
    await _truncate(settings.database_url)
    async with run_server(settings) as server:
        clock = FakeTime()
        limiter_of(server).clock = clock
        yield server, clock


# -- the syntax ----------------------------------------------------------------------


def test_rates_read_as_limits_writes_them() -> None:
    assert describe(parse_rate("60/minute")) == "60/minute"
    assert describe(parse_rate(" 300 / 30days ")) == "300/30days"
    assert describe(parse_rate("5 per hour")) == "5/hour"
    assert parse_rate("300/30days").get_expiry() == 30 * 86400
    assert parse_rate("0/day").amount == 0
    for bad in ("", "lots", "5/fortnight", "5/minute;6/hour"):
        with pytest.raises(ValueError, match="expected"):
            parse_rate(bad)


def test_tiers_left_out_keep_their_defaults_and_unlimited_lifts_a_limit() -> None:
    defaults = parse_tier_rates("free=1/day;basic=2/day;pro=3/day")

    rates = parse_tier_rates("PRO=unlimited; basic = 20/hour", defaults)

    assert {tier: rate and describe(rate) for tier, rate in rates.items()} == {
        Tier.FREE: "1/day",
        Tier.BASIC: "20/hour",
        Tier.PRO: None,
    }
    assert parse_tier_counts("pro=9", {Tier.FREE: 1, Tier.PRO: 5}) == {Tier.FREE: 1, Tier.PRO: 9}
    with pytest.raises(ValueError, match="unknown tier 'gold'"):
        parse_tier_rates("gold=1/day")
    with pytest.raises(ValueError, match="TIER=VALUE"):
        parse_tier_counts("free")
    with pytest.raises(ValueError, match="0 or more"):
        parse_tier_counts("free=-1")


def test_defaults_are_documented_ones_and_bad_values_name_their_variable() -> None:
    settings = Settings.from_env({}, env_file=None)
    assert settings.quotas == "free=300/30days;basic=2000/30days;pro=10000/30days"
    assert settings.command_quotas == "free=0/day;basic=0/day;pro=200/day"
    assert settings.burst == "60/minute"
    assert settings.auth_failures == "20/minute"
    assert settings.vehicle_limits == "free=1;basic=2;pro=5"

    changed = Settings.from_env({"EVLINK_BURST": "10/second"}, env_file=None)
    assert changed.burst == "10/second"
    for variable, value in (
        ("EVLINK_QUOTAS", "free=lots"),
        ("EVLINK_COMMAND_QUOTAS", "platinum=1/day"),
        ("EVLINK_BURST", "sixty"),
        ("EVLINK_AUTH_FAILURES", "20/fortnight"),
        ("EVLINK_VEHICLE_LIMITS", "free=one"),
    ):
        with pytest.raises(SettingsError) as refused:
            Settings.from_env({variable: value}, env_file=None)
        message = str(refused.value)
        assert message.startswith(f"{variable}: "), message
        assert "\n" not in message


async def test_memory_counters_open_and_close_windows_on_their_clock() -> None:
    clock = FakeTime()
    counters = MemoryCounters(clock)

    assert [await counters.incr("k", 60) for _ in range(3)] == [1, 2, 3]
    assert await counters.get_expiry("k") == clock.now + 60
    clock.advance(59.5)
    assert await counters.get("k") == 3
    clock.advance(0.5)
    assert await counters.get("k") == 0
    assert await counters.incr("k", 60) == 1  # a new window from here
    assert await counters.get_expiry("k") == clock.now + 60


# -- limits over HTTP ---------------------------------------------------------------


async def test_the_request_after_the_burst_is_429_and_the_window_resets(make_settings: Any) -> None:
    async with limited(make_settings(burst="3/minute")) as (server, clock):
        _, key = await server.user(tier=Tier.PRO)

        answers = [await server.http.get(ME, headers=bearer(key)) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert [remaining(a, "burst") for a in answers] == [2, 1, 0]
        policy = fields(answers[0].headers["RateLimit-Policy"])
        assert policy["burst"] == {"q": 3, "w": 60}
        assert policy["reads"] == {"q": 1_000_000, "w": 86400}
        assert fields(answers[0].headers["RateLimit"])["burst"]["t"] == 60

        clock.advance(20)
        refused = await server.http.get(ME, headers=bearer(key))
        assert refused.status_code == 429
        assert refused.json() == {"detail": refused.json()["detail"], "code": "RATE_LIMITED"}
        assert "burst" in refused.json()["detail"]
        assert refused.headers["Retry-After"] == "40"
        assert fields(refused.headers["RateLimit"])["burst"] == {"r": 0, "t": 40}
        assert fields(refused.headers["RateLimit-Policy"])["burst"] == {"q": 3, "w": 60}

        clock.advance(40)  # the window closes
        again = await server.http.get(ME, headers=bearer(key))
        assert again.status_code == 200
        assert fields(again.headers["RateLimit"])["burst"] == {"r": 2, "t": 60}


async def test_tiers_have_their_own_read_quotas(make_settings: Any) -> None:
    settings = make_settings(quotas="free=2/day;basic=4/day;pro=unlimited")
    async with limited(settings) as (server, _):
        admitted: dict[Tier, int] = {}
        for tier in Tier:
            _, key = await server.user(tier=tier)
            codes = [(await server.http.get(ME, headers=bearer(key))).status_code for _ in range(7)]
            admitted[tier] = codes.count(200)
            assert codes == sorted(codes)  # all 200s, then all 429s
        assert admitted == {Tier.FREE: 2, Tier.BASIC: 4, Tier.PRO: 7}

        _, key = await server.user(tier=Tier.PRO)
        answer = await server.http.get(ME, headers=bearer(key))
        assert set(fields(answer.headers["RateLimit-Policy"])) == {"burst"}  # no reads quota


async def test_burst_is_per_key_and_reads_per_user(make_settings: Any) -> None:
    async with limited(make_settings(burst="2/minute", quotas="basic=3/day")) as (server, _):
        user, first = await server.user(tier=Tier.BASIC)
        second = (await issue_key(user)).secret

        codes = [(await server.http.get(ME, headers=bearer(first))).status_code for _ in range(3)]
        assert codes == [200, 200, 429]  # the first key's burst
        other = await server.http.get(ME, headers=bearer(second))
        assert other.status_code == 200  # a burst of its own...
        assert remaining(other, "reads") == 0  # ...but the user's reads are shared
        spent = await server.http.get(ME, headers=bearer(second))
        assert spent.status_code == 429
        assert "reads" in spent.json()["detail"]


@pytest.mark.parametrize("cache_ttl", [0.0, 5.0], ids=["cache-off", "cache-on"])
async def test_a_status_read_judges_the_key_then_the_limits_then_the_vehicle(
    make_settings: Any, cache_ttl: float
) -> None:
    # The key and the vehicle may be read in one statement (resolvers.vehicles.StatusRead);
    # what each request is answered and charged stays in this order.
    settings = make_settings(burst="4/minute", auth_failures="100/minute", cache_ttl=cache_ttl)
    async with limited(settings) as (server, _):
        owner, key = await server.user(tier=Tier.PRO)
        other, _ = await server.user()
        mine, theirs = await server.vehicle(owner), await server.vehicle(other)
        revoked = await issue_key(owner)
        await revoke_key(str(revoked.record.id))
        paths = [f"/api/status/{v}" for v in (mine.id, theirs.id, uuid.uuid4(), "not-a-uuid")]

        # A refused key: 401 whatever the vehicle, counted as a failure, charged nothing.
        for n, path in enumerate(paths, 1):
            refused = await server.http.get(path, headers=bearer(revoked.secret))
            assert refused.status_code == 401, path
            counted = fields(refused.headers["RateLimit"])
            assert counted == {"auth-failures": {"r": 100 - n, "t": 60}}
        spent = await limiter_of(server).usage(owner, [key_id(hash_key(revoked.secret))])
        assert {s.policy.name: s.used for s in spent}["burst"] == 0

        answers = [await server.http.get(path, headers=bearer(key)) for path in paths]
        assert [a.status_code for a in answers] == [200, 403, 404, 404]
        assert [remaining(a, "burst") for a in answers] == [3, 2, 1, 0]  # each one charged

        # Past the limit every read is 429, before its vehicle is judged.
        for path in paths:
            late = await server.http.get(path, headers=bearer(key))
            assert late.status_code == 429, path
            assert late.json()["code"] == "RATE_LIMITED"


async def test_every_authenticated_answer_carries_the_headers(make_settings: Any) -> None:
    async with limited(make_settings(burst="100/minute")) as (server, _):
        owner, _ = await server.user()
        theirs = await server.vehicle(owner)
        user, key = await server.user(tier=Tier.FREE)
        mine = await server.vehicle(user)
        answers = {
            "status": await server.http.get(f"/api/status/{mine.id}", headers=bearer(key)),
            "not found": await server.http.get(f"/api/status/{uuid.uuid4()}", headers=bearer(key)),
            "not owner": await server.http.get(f"/api/ha/status/{theirs.id}", headers=bearer(key)),
            "bad body": await server.http.post(
                f"/api/charging/{mine.id}", content=b"{", headers=bearer(key)
            ),
            "tier": await server.http.post(
                f"/api/charging/{mine.id}", json={"action": "START"}, headers=bearer(key)
            ),
            "graphql": await server.http.post(
                "/graphql", json={"query": "{ viewer { id } }"}, headers=bearer(key)
            ),
            "graphql error": await server.http.post(
                "/graphql",
                json={"query": "query($id: ID!) { vehicle(id: $id) { id } }", "variables": {}},
                headers=bearer(key),
            ),
            "graphql invalid": await server.http.post(
                "/graphql", json={"query": "{ nothing }"}, headers=bearer(key)
            ),
        }
        codes = {name: answer.status_code for name, answer in answers.items()}
        assert codes == {
            "status": 200,
            "not found": 404,
            "not owner": 403,
            "bad body": 400,
            "tier": 403,
            "graphql": 200,
            "graphql error": 200,
            "graphql invalid": 200,
        }
        bursts = [fields(a.headers.get("RateLimit"))["burst"]["r"] for a in answers.values()]
        assert bursts == list(range(99, 91, -1))  # each answer counted, in order
        for name, answer in answers.items():
            assert "burst" in fields(answer.headers.get("RateLimit-Policy")), name
        # Reads are REST reads and GraphQL queries; a command is not a read.
        assert "reads" in fields(answers["status"].headers["RateLimit"])
        assert "reads" not in fields(answers["tier"].headers["RateLimit"])
        assert "reads" in fields(answers["graphql"].headers["RateLimit"])


async def test_no_key_no_headers_and_graphql_stays_open(make_settings: Any) -> None:
    async with limited(make_settings(burst="1/minute")) as (server, _):
        rest = await server.http.get(ME)
        assert rest.status_code == 401
        assert "RateLimit" not in rest.headers

        for _ in range(3):  # not counted: nothing to count against
            schema = await server.http.post(
                "/graphql", json={"query": "{ __schema { queryType { name } } }"}
            )
            assert schema.status_code == 200
            assert schema.json()["data"]["__schema"]["queryType"]["name"] == "Query"
            assert "RateLimit" not in schema.headers
        viewer = await server.graphql("{ viewer { id } }")
        assert viewer["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_graphql_over_http_answers_429_before_executing(make_settings: Any) -> None:
    async with limited(make_settings(burst="2/minute")) as (server, clock):
        user, key = await server.user()
        vehicle = await server.vehicle(user, "plugged")
        for _ in range(2):
            ok = await server.http.post("/graphql", json={"query": VIEWER}, headers=bearer(key))
            assert ok.status_code == 200

        refused = await server.http.post(
            "/graphql",
            json={
                "query": "mutation($id: ID!) { setCharging(vehicleId: $id, action: START) { id } }",
                "variables": {"id": str(vehicle.id)},
            },
            headers=bearer(key),
        )

        assert refused.status_code == 429
        assert refused.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
        assert set(refused.json()) == {"errors"}  # GraphQL's shape on /graphql
        assert refused.headers["Retry-After"] == "60"
        assert fields(refused.headers["RateLimit"])["burst"] == {"r": 0, "t": 60}
        assert await ChargingCommand.filter(vehicle_id=vehicle.id).count() == 0  # never ran
        clock.advance(60)
        ok = await server.http.post("/graphql", json={"query": VIEWER}, headers=bearer(key))
        assert ok.status_code == 200


async def test_viewer_tells_its_quotas(make_settings: Any) -> None:
    settings = make_settings(burst="10/minute", quotas="basic=50/day", command_quotas="basic=0/day")
    async with limited(settings) as (server, clock):
        _, key = await server.user(tier=Tier.BASIC)
        await server.http.get(ME, headers=bearer(key))

        body = await server.graphql(VIEWER, key=key)

        viewer = body["data"]["viewer"]
        assert viewer["tier"] == "BASIC"
        quotas = {q["name"]: q for q in viewer["quotas"]}
        assert set(quotas) == {"burst", "reads", "commands"}
        assert (quotas["burst"]["limit"], quotas["burst"]["remaining"]) == (10, 8)
        assert (quotas["reads"]["limit"], quotas["reads"]["remaining"]) == (50, 48)
        assert (quotas["commands"]["limit"], quotas["commands"]["remaining"]) == (0, 0)
        assert quotas["commands"]["resetAt"] is None  # no window open: nothing spent
        assert quotas["burst"]["resetAt"].startswith("2027-01-15T08:01:00")
        assert clock.now == 1_800_000_000.0  # 2027-01-15T08:00:00Z


async def test_a_command_over_its_quota_is_429_and_a_replay_costs_nothing(
    make_settings: Any,
) -> None:
    async with limited(make_settings(command_quotas="pro=1/day")) as (server, _):
        user, key = await server.user(tier=Tier.PRO)
        first, second = await server.vehicle(user, "plugged"), await server.vehicle(user, "plugged")
        headers = {**bearer(key), "Idempotency-Key": "once"}

        sent = await server.http.post(
            f"/api/charging/{first.id}", json={"action": "START"}, headers=headers
        )
        replay = await server.http.post(
            f"/api/charging/{first.id}", json={"action": "START"}, headers=headers
        )
        assert (sent.status_code, replay.status_code) == (200, 200)
        assert replay.json()["command_id"] == sent.json()["command_id"]
        assert fields(sent.headers["RateLimit"])["commands"]["r"] == 0
        assert "commands" not in fields(replay.headers["RateLimit"])  # not charged again

        refused = await server.http.post(
            f"/api/charging/{second.id}", json={"action": "START"}, headers=bearer(key)
        )
        assert refused.status_code == 429
        assert refused.json()["code"] == "RATE_LIMITED"
        assert int(refused.headers["Retry-After"]) > 86000
        assert fields(refused.headers["RateLimit-Policy"])["commands"] == {"q": 1, "w": 86400}
        assert await ChargingCommand.filter(vehicle_id=second.id).count() == 0

        over_graphql = await server.graphql(
            "mutation($id: ID!) { setCharging(vehicleId: $id, action: START) { id } }",
            {"id": str(second.id)},
            key=key,
        )
        assert over_graphql["errors"][0]["extensions"]["code"] == "RATE_LIMITED"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_websocket_operation_over_quota_gets_rate_limited(
    make_settings: Any, protocol: str
) -> None:
    async with limited(make_settings(burst="2/minute")) as (server, clock):
        user, key = await server.user()
        vehicle = await server.vehicle(user, "plugged")
        request = GraphQLRequest(CHARGE_STATE, variable_values={"id": str(vehicle.id)})
        async with server.gql_client(key, protocol) as session:
            for _ in range(2):  # each subscription is one operation
                async with aclosing(session.subscribe(request)) as stream:
                    first = await asyncio.wait_for(anext(stream), TIMEOUT)
                    assert first["chargeState"]["isPluggedIn"] is True
            with pytest.raises(TransportQueryError) as refused:
                async with aclosing(session.subscribe(request)) as stream:
                    await asyncio.wait_for(anext(stream), TIMEOUT)
            assert refused.value.errors is not None
            extensions = refused.value.errors[0]["extensions"]
            assert extensions["code"] == "RATE_LIMITED"
            assert extensions["retryAfter"] == 60

            clock.advance(60)
            async with aclosing(session.subscribe(request)) as stream:
                first = await asyncio.wait_for(anext(stream), TIMEOUT)
                assert first["chargeState"]["isPluggedIn"] is True


# -- Redis -----------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("EVLINK_TEST_REDIS_URL")
    if not url:
        pytest.skip("EVLINK_TEST_REDIS_URL is not set: Redis tests skipped")
    return url


@pytest.fixture
async def shared(settings: Settings, redis_url: str) -> AsyncIterator[Settings]:
    """The test settings on the test Redis, under a key prefix of this test's own
    (runs and tests never share a count), whose keys are deleted at the end."""
    prefix = f"evlink-test:{uuid.uuid4().hex}"
    yield replace(settings, redis_url=redis_url, ratelimit_prefix=prefix)
    client = redis.asyncio.from_url(redis_url)
    try:
        async for name in client.scan_iter(match=f"{prefix}:*", count=1000):
            await client.delete(name)
    finally:
        await client.aclose()


async def test_two_instances_on_one_redis_admit_exactly_the_limit(shared: Settings) -> None:
    both_on_redis = replace(shared, burst="10/minute")
    await _truncate(shared.database_url)
    async with run_server(both_on_redis) as a, run_server(both_on_redis) as b:
        _, key = await a.user()
        warm = await b.http.get(ME, headers=bearer(key))  # one of the ten
        assert limiter_of(a).shared
        assert limiter_of(b).shared

        answers = await asyncio.gather(
            *((a if i % 2 else b).http.get(ME, headers=bearer(key)) for i in range(30))
        )

        codes = [answer.status_code for answer in answers]
        assert warm.status_code == 200
        assert codes.count(200) == 9, codes
        assert codes.count(429) == 21, codes
        both = {answer.url.port for answer in answers if answer.status_code == 429}
        assert len(both) == 2  # each instance refused some: they shared one count
        left = sorted(remaining(answer, "burst") for answer in answers if answer.status_code == 200)
        assert left == list(range(9))  # each admitted request saw its own place


async def test_usage_from_the_cli_reads_the_shared_counts(shared: Settings) -> None:
    shared = replace(
        shared, quotas="basic=100/30days", command_quotas="basic=0/day", burst="60/minute"
    )
    await _truncate(shared.database_url)
    async with run_server(shared) as server:
        _, key = await server.user("usage@example.com", tier=Tier.BASIC)
        for _ in range(3):
            assert (await server.http.get(ME, headers=bearer(key))).status_code == 200

        out = await asyncio.to_thread(_cli, shared, "usage", "--user", "usage@example.com")

    lines = [line.split("\t") for line in out.splitlines()]
    assert lines[0] == ["usage@example.com", "BASIC"]
    rows = {row[0]: row[1:] for row in lines[1:]}
    assert rows["reads"][:2] == ["3/100/30days", "97 left"]
    assert rows["commands"][:2] == ["0/0/day", "0 left"]
    assert rows["commands"][2] == "resets -"
    burst = next(row for name, row in rows.items() if name.startswith("burst key evl_"))
    assert burst[:2] == ["3/60/minute", "57 left"]


def test_usage_without_redis_says_where_the_counts_are(settings: Settings) -> None:
    asyncio.run(_truncate(settings.database_url))
    _cli(settings, "user", "create", "--email", "alone@example.com")

    out = _cli(settings, "usage", "--user", "alone@example.com")

    assert "no EVLINK_REDIS_URL" in out
    assert "reads\t0/1000000/day\t1000000 left\tresets -" in out


def _cli(settings: Settings, *args: str) -> str:
    """The output of ``evlink *args``, which must succeed."""
    result = _run_cli(settings, *args)
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


def _run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``evlink *args`` on the test database with the rate limits of ``settings``
    (and the default vehicle limits)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVLINK_")}
    env.update(
        {
            "EVLINK_DATABASE_URL": settings.database_url,
            "EVLINK_QUOTAS": settings.quotas,
            "EVLINK_COMMAND_QUOTAS": settings.command_quotas,
            "EVLINK_BURST": settings.burst,
            "EVLINK_REDIS_URL": settings.redis_url,
            "EVLINK_RATELIMIT_PREFIX": settings.ratelimit_prefix,
        }
    )
    return subprocess.run(  # noqa: S603 (our own interpreter and module)
        [sys.executable, "-m", "evlink.cli", *args],
        env=env,
        cwd=tempfile.gettempdir(),  # away from any .env of the work tree
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- Redis failing -------------------------------------------------------------------


@contextlib.contextmanager
def private_redis(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A redis-server of this test's own on 127.0.0.1, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    process = subprocess.Popen(  # noqa: S603 (a fixed binary, loopback only)
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(TIMEOUT)


async def _until_redis_answers(url: str) -> None:
    client = redis.asyncio.from_url(url)
    try:
        for _ in range(500):  # bounded: at most 5 s of 10 ms polls of a local process
            with contextlib.suppress(redis.RedisError, OSError):
                if await client.ping():
                    return
            await asyncio.sleep(0.01)
        raise AssertionError(f"redis at {url} did not start")
    finally:
        await client.aclose()


async def test_a_closed_redis_port_leaves_the_limits_in_memory(
    make_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="evlink.ratelimit"):
        async with limited(make_settings(redis_url=url, burst="3/minute")) as (server, _):
            _, key = await server.user()
            codes = [(await server.http.get(ME, headers=bearer(key))).status_code for _ in range(5)]

    assert codes == [200, 200, 200, 429, 429]
    failures = [r for r in caplog.records if "Redis failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]


async def test_redis_stopping_mid_test_keeps_the_api_answering(
    make_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    settings = make_settings(redis_url=url, burst="100/minute", ratelimit_prefix="evlink-test")
    with (
        caplog.at_level(logging.INFO, logger="evlink.ratelimit"),
        private_redis(port) as process,
    ):
        await _until_redis_answers(url)
        async with limited(settings) as (server, clock):
            _, key = await server.user()
            before = await server.http.get(ME, headers=bearer(key))
            assert before.status_code == 200
            assert limiter_of(server).shared

            process.terminate()  # Redis goes away: connections are refused
            await asyncio.to_thread(process.wait, TIMEOUT)
            during = [await server.http.get(ME, headers=bearer(key)) for _ in range(3)]
            assert [a.status_code for a in during] == [200, 200, 200]
            assert not limiter_of(server).shared
            # The instance counts on in its memory (a window of its own from here).
            assert [remaining(a, "burst") for a in during] == [99, 98, 97]

            with private_redis(port):  # Redis is back (empty: no persistence)
                await _until_redis_answers(url)
                still = await server.http.get(ME, headers=bearer(key))
                assert remaining(still, "burst") == 96  # not tried again yet
                clock.advance(REDIS_RETRY_INTERVAL)
                back = await server.http.get(ME, headers=bearer(key))
                assert back.status_code == 200
                assert limiter_of(server).shared
                assert remaining(back, "burst") == 99  # Redis's count, restarted empty

    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert sum("Redis failed" in m for _, m in messages) == 1, messages
    # Recovery is good news: INFO, so that an alert on WARNING does not fire on it.
    assert [level for level, m in messages if "Redis answers again" in m] == ["INFO"]
