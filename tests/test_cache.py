"""The read cache: what the hot paths answer from memory, and how it stays true.

The cache itself (tags, overlapping reads, ttl, size), then through a running
server: statuses, keys and GraphQL answers served again from memory, and every
way they must not be (a change, a revoked key, another user, quotas, errors).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import parse

from evlink.cache import CACHE_TOPIC, ReadCache, user_tag, vehicle_tag
from evlink.events import MemoryEventBus
from evlink.models import ApiKey, Tier
from evlink.resolvers import accounts
from evlink.resolvers.auth import hash_key, revoke_key
from evlink.schema import build_schema
from evlink.schema.results import CACHEABLE, is_cacheable
from evlink.settings import Settings
from tests.conftest import TIMEOUT, Server, _truncate, run_server

STATUS = "query($id: ID!) { vehicle(id: $id) { name chargeState { isPluggedIn batteryLevel } } }"
QUOTAS = "{ viewer { quotas { name remaining } } }"
# Fields a cached answer must never hold: what they show changes without a vehicle tag.
# Sessions also change with time (one ends UNREACHABLE when read): never cached.
NEVER_CACHED = {
    "Vehicle": {
        "chargingCommands",
        "chargingSessions",
        "currentChargingSession",
        "chargingStatistics",
    }
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the cache itself --------------------------------------------------------------


def test_an_entry_is_served_until_one_of_its_tags_is_invalidated() -> None:
    cache = ReadCache(5.0)
    assert cache.put("answer", b"42", tags=[vehicle_tag("a"), user_tag(1)], began=cache.begin())
    assert cache.get("answer") == b"42"
    cache.drop(vehicle_tag("b"), user_tag(2))  # others' tags
    assert cache.get("answer") == b"42"
    cache.drop(vehicle_tag("a"))
    assert cache.get("answer") is None
    assert cache.put("answer", b"43", tags=[vehicle_tag("a")], began=cache.begin())
    assert cache.get("answer") == b"43"  # stored again after the change, with the new version


def test_a_read_that_overlapped_an_invalidation_is_not_stored() -> None:
    cache = ReadCache(5.0)
    began = cache.begin()
    cache.drop(vehicle_tag("elsewhere"))  # any write while the value was being read
    assert not cache.put("answer", b"old", tags=[vehicle_tag("a")], began=began)
    assert cache.get("answer") is None


def test_no_entry_outlives_its_max_age_or_the_ttl() -> None:
    clock = Clock()
    cache = ReadCache(5.0, clock=clock)
    cache.put("short", 1, tags=[], began=cache.begin(), max_age=2.0)
    cache.put("long", 2, tags=[], began=cache.begin(), max_age=60.0)
    clock.now += 1.9
    assert (cache.get("short"), cache.get("long")) == (1, 2)
    clock.now += 0.2
    assert cache.get("short") is None
    clock.now += 2.8
    assert cache.get("long") == 2
    clock.now += 0.2  # the ttl (5 s) caps the 60 s asked for
    assert cache.get("long") is None
    assert not cache.put("stale", 3, tags=[], began=cache.begin(), max_age=0.0)


def test_the_oldest_entries_make_room_past_the_size_bound() -> None:
    cache = ReadCache(5.0, max_entries=3)
    for n in range(4):
        cache.put(n, n, tags=[], began=cache.begin())
    assert len(cache) == 3
    assert [cache.get(n) for n in range(4)] == [None, 1, 2, 3]


def test_sized_values_are_held_to_the_byte_budget() -> None:
    cache = ReadCache(5.0, max_bytes=1000)
    for n in range(4):
        assert cache.put(n, b"x" * 100, tags=[], began=cache.begin(), size=100)
    assert cache.bytes == 400
    assert cache.put("big", b"y" * 100, tags=[], began=cache.begin(), size=100)
    assert not cache.put("huge", b"z" * 101, tags=[], began=cache.begin(), size=101)
    for n in range(4, 10):  # past 1,000 bytes: the oldest make room
        cache.put(n, b"x" * 100, tags=[], began=cache.begin(), size=100)
    assert cache.bytes <= 1000
    assert cache.get(0) is None
    assert cache.get(9) == b"x" * 100
    cache.clear()
    assert cache.bytes == 0


def test_a_ttl_of_zero_turns_the_cache_off() -> None:
    cache = ReadCache(0.0)
    assert not cache.enabled
    assert not cache.put("answer", 1, tags=[], began=cache.begin())
    assert cache.get("answer") is None


def test_clear_forgets_everything() -> None:
    cache = ReadCache(5.0)
    cache.put("answer", 1, tags=[], began=cache.begin())
    cache.clear()
    assert cache.get("answer") is None


def test_every_lookup_is_counted_once_as_a_hit_or_a_miss() -> None:
    clock = Clock()
    cache = ReadCache(5.0, clock=clock)
    assert (cache.hits, cache.misses) == (0, 0)
    assert cache.get("absent") is None
    cache.put("answer", 1, tags=[vehicle_tag("a")], began=cache.begin())
    assert cache.get("answer") == 1
    assert cache.get("answer") == 1
    cache.drop(vehicle_tag("a"))
    assert cache.get("answer") is None  # its tag moved
    cache.put("answer", 1, tags=[], began=cache.begin())
    clock.now += 5.0
    assert cache.get("answer") is None  # expired
    assert cache.get("absent") is None
    assert (cache.hits, cache.misses) == (2, 4)


def test_an_entry_expires_at_its_time_exactly_and_may_live_under_a_second() -> None:
    clock = Clock()
    cache = ReadCache(5.0, clock=clock)
    assert cache.put("half", 1, tags=[], began=cache.begin(), max_age=0.5)
    assert cache.put("ttl", 2, tags=[], began=cache.begin())
    clock.now += 0.5
    assert cache.get("half") is None
    clock.now += 4.5
    assert cache.get("ttl") is None


def test_a_stale_entry_is_removed_and_its_bytes_given_back() -> None:
    cache = ReadCache(5.0)
    cache.put("a", b"a" * 10, tags=[vehicle_tag("a")], began=cache.begin(), size=10)
    cache.put("b", b"b" * 20, tags=[vehicle_tag("b")], began=cache.begin(), size=20)
    cache.put("free", 0, tags=[], began=cache.begin())  # no size given: no bytes counted
    assert (len(cache), cache.bytes) == (3, 30)
    cache.drop(vehicle_tag("a"))
    assert cache.get("a") is None
    assert (len(cache), cache.bytes) == (2, 20)


def test_storing_a_key_again_replaces_its_entry_and_its_bytes() -> None:
    cache = ReadCache(5.0)
    cache.put("answer", b"x" * 10, tags=[], began=cache.begin(), size=10)
    cache.put("answer", b"y" * 10, tags=[], began=cache.begin(), size=10)
    assert (len(cache), cache.bytes, cache.get("answer")) == (1, 10, b"y" * 10)


def test_the_byte_budget_may_be_filled_exactly() -> None:
    cache = ReadCache(5.0, max_bytes=100)
    for n in range(10):
        assert cache.put(n, n, tags=[], began=cache.begin(), size=10)
    assert (len(cache), cache.bytes) == (10, 100)
    assert cache.get(0) == 0
    cache.put(10, 10, tags=[], began=cache.begin(), size=10)
    assert (len(cache), cache.bytes, cache.get(0)) == (10, 100, None)


def test_every_invalidation_refuses_the_reads_that_began_before_it() -> None:
    cache = ReadCache(5.0)
    cache.drop(vehicle_tag("a"))
    began = cache.begin()  # after one invalidation, before a clear
    cache.clear()
    assert not cache.put("answer", 1, tags=[], began=began)
    cache.drop(vehicle_tag("a"))
    began = cache.begin()  # after the first invalidation, before the second
    cache.drop(vehicle_tag("a"))
    assert not cache.put("answer", 1, tags=[], began=began)
    began = cache.begin()
    cache.clear()
    assert not cache.put("answer", 1, tags=[], began=began)
    # A clear then a drop (or a drop then a clear) never bring a read's token back.
    began = cache.begin()
    cache.clear()
    cache.drop(vehicle_tag("b"))
    assert not cache.put("answer", 1, tags=[], began=began)
    began = cache.begin()
    cache.drop(vehicle_tag("b"))
    cache.clear()
    assert not cache.put("answer", 1, tags=[], began=began)


def test_each_invalidation_of_a_tag_drops_what_was_stored_since_the_last_one() -> None:
    cache = ReadCache(5.0)
    for _ in range(3):
        assert cache.put("answer", 1, tags=[vehicle_tag("a")], began=cache.begin())
        assert cache.get("answer") == 1
        cache.drop(vehicle_tag("b"), vehicle_tag("a"))
        assert cache.get("answer") is None


async def test_invalidate_drops_here_and_publishes_the_tags_to_every_instance() -> None:
    alone = ReadCache(5.0)  # no event bus: this process only
    alone.put("answer", 1, tags=[user_tag(1)], began=alone.begin())
    await alone.invalidate(user_tag(1))
    assert alone.get("answer") is None

    bus = MemoryEventBus()
    cache = ReadCache(5.0)
    cache.events = bus
    async with bus.subscribe(CACHE_TOPIC) as published:
        began = cache.begin()
        await cache.invalidate()  # nothing to invalidate: nothing happens
        await cache.invalidate(user_tag(1), vehicle_tag("a"))
        assert await published.get(timeout=TIMEOUT) == {"tags": ["user:1", "vehicle:a"]}
    assert cache.put("answer", 1, tags=[], began=began) is False
    began = cache.begin()
    await cache.invalidate()
    assert cache.put("answer", 1, tags=[], began=began)


# -- which GraphQL documents may be cached ------------------------------------------


def test_only_queries_of_vehicle_data_are_cacheable() -> None:
    schema = build_schema()._schema
    cacheable = [
        STATUS,
        "{ vehicles { id __typename capabilities { startCharging { isCapable } } } }",
        "query A { vehicles { ...car } } fragment car on Vehicle { location { latitude } }",
    ]
    not_cacheable = [
        QUOTAS,
        "{ vehicles { chargingCommands { state } } }",
        "query A { vehicles { ...c } } fragment c on Vehicle { chargingCommands { state } }",
        "query($id: ID!) { chargingCommand(id: $id) { state } } query B { vehicles { id } }",
        "{ __schema { types { name } } }",
        'mutation { setCharging(vehicleId: "x", action: START) { id } }',
    ]
    assert all(is_cacheable(schema, parse(query)) for query in cacheable)
    assert not any(is_cacheable(schema, parse(query)) for query in not_cacheable)


def test_every_field_of_a_cacheable_type_was_decided() -> None:
    """A field added to a cacheable type must be listed in CACHEABLE or in NEVER_CACHED."""
    schema = build_schema()._schema
    for type_name, fields in CACHEABLE.items():
        graphql_type: Any = schema.get_type(type_name)
        declared = set(graphql_type.fields)
        if type_name == "Query":
            assert fields <= declared
            continue
        decided = fields | NEVER_CACHED.get(type_name, set())
        assert declared == decided, f"{type_name}: decide on {declared ^ decided}"


# -- through a server ------------------------------------------------------------------


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _status(server: Server, key: str, vehicle_id: object) -> httpx.Response:
    response = await server.http.get(f"/api/status/{vehicle_id}", headers=_bearer(key))
    return response


async def _post_graphql(server: Server, key: str, body: bytes) -> httpx.Response:
    headers = {**_bearer(key), "Content-Type": "application/json"}
    return await server.http.post("/graphql", content=body, headers=headers)


async def test_a_status_read_again_is_served_from_memory_and_a_change_shows_at_once(
    server: Server,
) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    # The first read refreshes from the provider (a write: nothing read alongside it is
    # stored); the second reads the database and stores; the third is from memory.
    first = await _status(server, key, vehicle.id)
    assert first.json()["isPluggedIn"] is True
    assert (await _status(server, key, vehicle.id)).content == first.content
    hits = server.services.cache.hits
    again = await _status(server, key, vehicle.id)
    assert again.content == first.content
    assert server.services.cache.hits == hits + 2  # the key and the status
    metrics = (await server.http.get("/metrics")).text
    assert f'evlink_read_cache_lookups{{outcome="hit"}} {float(hits + 2)}' in metrics
    server.simulator.update_vehicle(vehicle.provider_vehicle_id or "", is_plugged_in=False)
    await server.clock.advance(1)  # the simulator pushes the change, as a webhook would
    after = await _status(server, key, vehicle.id)
    assert after.json()["isPluggedIn"] is False
    assert after.json()["chargeState"]["isPluggedIn"] is False


async def test_a_cached_status_is_still_refused_to_another_user(server: Server) -> None:
    owner, owner_key = await server.user()
    _, other_key = await server.user()
    vehicle = await server.vehicle(owner, "plugged")
    # The first read refreshes from the provider (not stored); the second stores.
    for _ in range(2):
        assert (await _status(server, owner_key, vehicle.id)).status_code == 200
    cache = server.services.cache
    assert cache.get(("status", str(vehicle.id))) is not None
    hits = cache.hits
    refused = await _status(server, other_key, vehicle.id)
    assert refused.status_code == 403
    assert refused.json()["code"] == "FORBIDDEN_OWNER"
    assert cache.hits == hits + 1  # the status, from memory (the other key was a miss)


async def test_a_revoked_key_stops_at_once_when_the_cache_is_told(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    assert (await _status(server, key, vehicle.id)).status_code == 200  # now cached
    record = await ApiKey.get(hash=hash_key(key))
    await revoke_key(str(record.id), server.services.cache)
    refused = await _status(server, key, vehicle.id)
    assert refused.status_code == 401
    assert refused.json()["code"] == "UNAUTHENTICATED"


async def test_a_key_revoked_by_another_process_stops_within_the_ttl(server: Server) -> None:
    """Without Redis the CLI cannot tell the server: the cached key lives out its ttl."""
    clock = Clock()
    server.services.cache.clock = clock
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    assert (await _status(server, key, vehicle.id)).status_code == 200
    record = await ApiKey.get(hash=hash_key(key))
    await revoke_key(str(record.id))  # as `evlink key revoke` does, in its own process
    assert (await _status(server, key, vehicle.id)).status_code == 200
    clock.now += server.settings.cache_ttl
    assert (await _status(server, key, vehicle.id)).status_code == 401


async def test_a_tier_change_reaches_the_cached_user(server: Server) -> None:
    user, key = await server.user(tier=Tier.FREE)
    tier = "{ viewer { tier } }"
    assert (await server.graphql(tier, key=key))["data"]["viewer"]["tier"] == "FREE"
    await accounts.set_tier(user, Tier.PRO, server.services.cache)
    assert (await server.graphql(tier, key=key))["data"]["viewer"]["tier"] == "PRO"


async def test_a_graphql_query_asked_again_is_answered_from_memory(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    body = json.dumps({"query": STATUS, "variables": {"id": str(vehicle.id)}}).encode()
    first = await _post_graphql(server, key, body)  # reads the provider: not stored
    assert first.json()["data"]["vehicle"]["chargeState"]["isPluggedIn"] is True
    assert (await _post_graphql(server, key, body)).content == first.content  # stored
    entries = len(server.services.cache)
    again = await _post_graphql(server, key, body)
    assert again.status_code == 200
    assert again.content == first.content
    assert len(server.services.cache) == entries  # answered, not stored anew
    assert again.headers["content-type"] == "application/json"
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    assert '"reads"' in again.headers["ratelimit-policy"]  # charged as the query would be
    server.simulator.update_vehicle(vehicle.provider_vehicle_id or "", is_plugged_in=False)
    await server.clock.advance(1)
    changed = await _post_graphql(server, key, body)
    assert changed.json()["data"]["vehicle"]["chargeState"]["isPluggedIn"] is False


async def test_a_cached_answer_is_never_given_to_another_user(server: Server) -> None:
    owner, owner_key = await server.user()
    _, other_key = await server.user()
    vehicle = await server.vehicle(owner, "plugged")
    body = json.dumps({"query": STATUS, "variables": {"id": str(vehicle.id)}}).encode()
    for _ in range(2):
        assert (await _post_graphql(server, owner_key, body)).json()["data"]["vehicle"]
    theirs = (await _post_graphql(server, other_key, body)).json()
    assert theirs["data"] is None
    assert theirs["errors"][0]["extensions"]["code"] == "FORBIDDEN_OWNER"


async def test_quotas_and_failed_queries_are_never_cached(server: Server) -> None:
    user, key = await server.user()
    quotas = json.dumps({"query": QUOTAS}).encode()
    remaining = []
    for _ in range(2):
        answer = (await _post_graphql(server, key, quotas)).json()
        reads = [q for q in answer["data"]["viewer"]["quotas"] if q["name"] == "reads"]
        remaining.append(reads[0]["remaining"])
    assert remaining[1] == remaining[0] - 1  # each answer is worked out afresh
    missing = json.dumps({"query": STATUS, "variables": {"id": str(user.id)}}).encode()
    entries = len(server.services.cache)
    for _ in range(2):
        failed = (await _post_graphql(server, key, missing)).json()
        assert failed["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    assert len(server.services.cache) == entries


async def test_rate_limits_hold_for_answers_from_memory(settings: Settings) -> None:
    await _truncate(settings.database_url)
    async with run_server(replace(settings, burst="3/minute")) as server:
        user, key = await server.user()
        vehicle = await server.vehicle(user, "plugged")
        body = json.dumps({"query": STATUS, "variables": {"id": str(vehicle.id)}}).encode()
        answers = [await _post_graphql(server, key, body) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[3].json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert int(answers[3].headers["retry-after"]) >= 1


async def test_with_the_cache_off_every_read_goes_to_the_database(settings: Settings) -> None:
    await _truncate(settings.database_url)
    async with run_server(replace(settings, cache_ttl=0.0)) as server:
        user, key = await server.user()
        vehicle = await server.vehicle(user, "plugged")
        body = json.dumps({"query": STATUS, "variables": {"id": str(vehicle.id)}}).encode()
        for _ in range(2):
            assert (await _status(server, key, vehicle.id)).status_code == 200
            assert (await _post_graphql(server, key, body)).status_code == 200
        assert len(server.services.cache) == 0
        assert server.services.cache.hits == 0


async def test_an_instance_drops_what_another_instance_invalidated(settings: Settings) -> None:
    redis_url = os.environ.get("EVLINK_TEST_REDIS_URL")
    if settings.is_sqlite:
        pytest.skip("several instances share PostgreSQL; this backend is SQLite")
    if not redis_url:
        pytest.skip("EVLINK_TEST_REDIS_URL is not set: Redis tests skipped")
    await _truncate(settings.database_url)
    shared = replace(settings, redis_url=redis_url)
    async with run_server(shared) as a, run_server(shared) as b:
        user, key = await a.user()
        vehicle = await a.vehicle(user, "plugged")
        assert (await _status(b, key, vehicle.id)).status_code == 200  # cached in B
        record = await ApiKey.get(hash=hash_key(key))
        async with b.services.events.subscribe(CACHE_TOPIC) as seen:
            await revoke_key(str(record.id), a.services.cache)  # told through A
            assert await seen.get(timeout=5.0) == {"tags": [user_tag(user.id)]}
        # B applied the message before it reads this request off its socket.
        assert (await _status(b, key, vehicle.id)).status_code == 401


async def test_a_key_revoked_by_the_cli_with_redis_stops_at_once(
    settings: Settings, tmp_path: Path
) -> None:
    """`evlink key revoke` in a process of its own publishes the invalidation on Redis."""
    redis_url = os.environ.get("EVLINK_TEST_REDIS_URL")
    if not redis_url:
        pytest.skip("EVLINK_TEST_REDIS_URL is not set: Redis tests skipped")
    await _truncate(settings.database_url)
    shared = replace(settings, redis_url=redis_url)
    async with run_server(shared) as server:
        user, key = await server.user()
        vehicle = await server.vehicle(user, "plugged")
        assert (await _status(server, key, vehicle.id)).status_code == 200  # cached
        record = await ApiKey.get(hash=hash_key(key))
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVLINK_")}
        env |= {"EVLINK_DATABASE_URL": shared.database_url, "EVLINK_REDIS_URL": redis_url}
        async with server.services.events.subscribe(CACHE_TOPIC) as seen:
            revoke = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "evlink.cli", "key", "revoke", str(record.id),
                env=env, cwd=tmp_path,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(revoke.communicate(), 60)
            assert revoke.returncode == 0, (out, err)
            assert await seen.get(timeout=5.0) == {"tags": [user_tag(user.id)]}
        assert (await _status(server, key, vehicle.id)).status_code == 401
