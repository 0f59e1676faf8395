"""API keys: their format and checksum, how they are stored, revoked and checked; and
requests authenticated (authenticate_request) on every path, with refused keys limited
per client address."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

import pytest
import websockets
from gql import GraphQLRequest

from evlink.errors import NotFound, Unauthenticated
from evlink.models import ApiKey, Vehicle
from evlink.models.database import open_database
from evlink.resolvers.auth import (
    _ALPHABET,
    KEY_USE_BATCH,
    KEY_USE_FLUSH_INTERVAL,
    KeyUses,
    _checksum,
    authenticate,
    authenticate_request,
    check_key_format,
    hash_key,
    issue_key,
    key_from_authorization,
    key_id,
    new_key,
    revoke_key,
)
from evlink.settings import Settings
from tests.conftest import PROTOCOLS, TIMEOUT, Server, _truncate, run_server
from tests.test_ratelimit import ME, bearer, fields, limited

KEY_SHAPE = re.compile(r"evl_[0-9A-Za-z]{33}_[0-9A-Za-z]{6}")


def _with_checksum(random_part: str) -> str:
    """A key around ``random_part`` whose checksum holds, whatever its length."""
    return f"evl_{random_part}_{_checksum(random_part)}"


# -- Format: no database needed ---------------------------------------------


def test_a_new_key_has_the_documented_shape_and_passes_its_own_check() -> None:
    key = new_key()

    assert KEY_SHAPE.fullmatch(key), key
    assert check_key_format(key)


def test_keys_are_unique_and_well_formed_across_many_draws() -> None:
    keys = [new_key() for _ in range(1000)]

    assert len(set(keys)) == 1000
    assert len({key[:12] for key in keys}) > 990  # the public prefix carries randomness too
    assert all(KEY_SHAPE.fullmatch(key) and check_key_format(key) for key in keys)


def test_the_checksum_catches_any_one_character_changed_in_the_random_part() -> None:
    key = new_key()
    for position in range(4, 4 + 33):
        original = key[position]
        replacement = _ALPHABET[(_ALPHABET.index(original) + 1) % len(_ALPHABET)]
        typo = key[:position] + replacement + key[position + 1 :]
        assert KEY_SHAPE.fullmatch(typo)  # still looks like a key...
        assert not check_key_format(typo), position  # ...but the checksum refuses it


def test_a_changed_checksum_is_refused() -> None:
    key = new_key()
    last = key[-1]
    other = "0" if last != "0" else "1"

    assert not check_key_format(key[:-1] + other)


def test_swapped_neighbours_in_the_random_part_are_refused() -> None:
    key = new_key()
    position = next(i for i in range(4, 36) if key[i] != key[i + 1])
    swapped = key[:position] + key[position + 1] + key[position] + key[position + 2 :]

    assert not check_key_format(swapped)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda k: "evk_" + k[4:], id="wrong-prefix"),
        pytest.param(lambda k: "EVL_" + k[4:], id="upper-prefix"),
        pytest.param(lambda k: k[4:], id="no-prefix"),
        pytest.param(lambda k: k.replace("_", "-"), id="wrong-separators"),
        pytest.param(lambda k: _with_checksum(k[4:36]), id="random-32-chars"),
        pytest.param(lambda k: _with_checksum(k[4:37] + "A"), id="random-34-chars"),
        pytest.param(lambda k: k[:-1], id="checksum-5-chars"),
        pytest.param(lambda k: k + "0", id="checksum-7-chars"),
        pytest.param(lambda k: k + "\n", id="trailing-newline"),
        pytest.param(lambda k: " " + k, id="leading-space"),
        pytest.param(lambda k: _with_checksum(k[4:36] + "-"), id="non-alphanumeric"),
        pytest.param(lambda k: _with_checksum(k[4:36] + "é"), id="non-ascii"),
        pytest.param(lambda k: "", id="empty"),
    ],
)
def test_malformed_keys_are_refused(make: object) -> None:
    key = make(new_key())  # type: ignore[operator]

    assert not check_key_format(key)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer evl_abc", "evl_abc"),
        ("bearer   evl_abc  ", "evl_abc"),
        ("Basic evl_abc", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("", None),
        (None, None),
    ],
)
def test_the_key_is_taken_from_a_bearer_authorization_header(
    header: str | None, expected: str | None
) -> None:
    assert key_from_authorization(header) == expected


# -- Stored keys: need the database the server fixture migrates --------------


async def test_only_the_hash_and_a_short_prefix_are_stored(server: Server) -> None:
    user, _ = await server.user()

    issued = await issue_key(user, name="laptop")

    secret = issued.secret
    assert check_key_format(secret)
    rows = await ApiKey.filter(id=issued.record.id).values()
    assert len(rows) == 1
    row = rows[0]
    assert row["hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert row["prefix"] == secret[:12]
    assert len(row["prefix"]) == 12
    assert row["prefix"].startswith("evl_")
    assert row["name"] == "laptop"
    for column, value in row.items():
        assert value != secret, column
        assert secret not in str(value), column
        assert secret[4:37] not in str(value), column  # nor the random part alone


async def test_an_issued_key_authenticates_its_user(server: Server) -> None:
    user, _ = await server.user()
    issued = await issue_key(user)
    assert issued.record.last_used_at is None

    found = await authenticate(issued.secret)

    assert found.id == user.id
    stored = await ApiKey.get(id=issued.record.id)
    assert stored.last_used_at is not None


async def test_revoke_by_prefix(server: Server) -> None:
    user, _ = await server.user()
    kept = await issue_key(user)
    revoked = await issue_key(user)

    record = await revoke_key(revoked.record.prefix)

    assert record.id == revoked.record.id
    assert record.revoked_at is not None
    assert (await ApiKey.get(id=revoked.record.id)).revoked_at is not None
    with pytest.raises(Unauthenticated):
        await authenticate(revoked.secret)
    assert (await authenticate(kept.secret)).id == user.id


async def test_revoke_by_prefix_as_key_list_prints_it(server: Server) -> None:
    user, _ = await server.user()
    issued = await issue_key(user)

    await revoke_key(f"{issued.record.prefix}…")

    with pytest.raises(Unauthenticated):
        await authenticate(issued.secret)


async def test_revoke_by_id(server: Server) -> None:
    user, _ = await server.user()
    kept = await issue_key(user)
    revoked = await issue_key(user)

    record = await revoke_key(str(revoked.record.id))

    assert record.id == revoked.record.id
    with pytest.raises(Unauthenticated):
        await authenticate(revoked.secret)
    assert (await authenticate(kept.secret)).id == user.id


async def test_a_key_cannot_be_revoked_twice_or_unknown(server: Server) -> None:
    user, _ = await server.user()
    issued = await issue_key(user)
    await revoke_key(str(issued.record.id))

    with pytest.raises(NotFound):
        await revoke_key(str(issued.record.id))
    with pytest.raises(NotFound):
        await revoke_key(issued.record.prefix)
    with pytest.raises(NotFound):
        await revoke_key("999999999")
    with pytest.raises(NotFound):
        await revoke_key("evl_00000000")


async def test_an_ambiguous_prefix_revokes_nothing(server: Server) -> None:
    user, _ = await server.user()
    first = await ApiKey.create(user=user, prefix="evl_SAMEPREF", hash="a" * 64)
    second = await ApiKey.create(user=user, prefix="evl_SAMEPREF", hash="b" * 64)

    with pytest.raises(NotFound):
        await revoke_key("evl_SAMEPREF")

    assert (await ApiKey.get(id=first.id)).revoked_at is None
    assert (await ApiKey.get(id=second.id)).revoked_at is None


async def test_missing_malformed_and_unknown_keys_do_not_authenticate(server: Server) -> None:
    user, _ = await server.user()
    issued = await issue_key(user)
    typo = issued.secret[:10] + ("A" if issued.secret[10] != "A" else "B") + issued.secret[11:]

    for key in (None, "", "nonsense", typo, new_key()):
        with pytest.raises(Unauthenticated):
            await authenticate(key)


@pytest.mark.parametrize("key_id", ["99999999999999999999", "²", "0"])
async def test_revoking_an_id_that_cannot_exist_is_not_found(server: Server, key_id: str) -> None:
    with pytest.raises(NotFound):
        await revoke_key(key_id)


# -- Requests: authenticate_request, on every path ----------------------------------


async def test_a_request_is_authenticated_as_the_key_s_user_with_its_key_id(
    server: Server,
) -> None:
    user, key = await server.user()

    caller = await authenticate_request(server.services, f"Bearer {key}", "192.0.2.1")

    assert caller.user.id == user.id
    assert caller.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert caller.key_id == key_id(hash_key(key)) == caller.key_hash[:16]
    other = key[:-1] + ("y" if key[-1] == "x" else "x")  # never the key itself
    for authorization in (None, "", f"Basic {key}", "Bearer ", f"Bearer {other}"):
        with pytest.raises(Unauthenticated):
            await authenticate_request(server.services, authorization, "192.0.2.1")


async def test_failed_keys_are_limited_per_address_but_never_a_valid_key(
    make_settings: Any,
) -> None:
    async with limited(make_settings(auth_failures="3/minute")) as (server, clock):
        _, key = await server.user()
        revoked = await server.user()
        await revoke_key(revoked[1][:12])
        wrong = [revoked[1], "evl_not-a-key", key[:-1] + ("A" if key[-1] != "A" else "B")]

        codes = [(await server.http.get(ME, headers=bearer(k))).status_code for k in wrong]
        assert codes == [401, 401, 401]
        for guess in (revoked[1], "junk"):  # well-formed or not: 429 from now on
            refused = await server.http.get(ME, headers=bearer(guess))
            assert refused.status_code == 429
            assert refused.json()["code"] == "RATE_LIMITED"
            assert refused.headers["Retry-After"] == "60"
            assert fields(refused.headers["RateLimit"])["auth-failures"] == {"r": 0, "t": 60}
        graphql = await server.http.post(
            "/graphql", json={"query": "{ viewer { id } }"}, headers=bearer("junk")
        )
        assert graphql.status_code == 429

        owner = await server.http.get(ME, headers=bearer(key))  # same address, valid key
        assert owner.status_code == 200
        assert "auth-failures" not in fields(owner.headers["RateLimit"])
        assert (await server.http.get(ME)).status_code == 401  # no key is no attempt

        clock.advance(60)
        assert (await server.http.get(ME, headers=bearer("junk"))).status_code == 401


async def test_forwarded_addresses_count_only_from_the_proxies_configured(
    make_settings: Any,
) -> None:
    """uvicorn alone believes X-Forwarded-For from 127.0.0.1: a local client could then
    pick a new address for each guess. evlink believes it from EVLINK_FORWARDED_ALLOW_IPS
    only (none by default)."""

    async def guesses(server: Server, forwarded_for: list[str]) -> list[int]:
        return [
            (
                await server.http.get(ME, headers={**bearer("junk"), "X-Forwarded-For": a})
            ).status_code
            for a in forwarded_for
        ]

    spoofed = [f"203.0.113.{n}" for n in range(1, 5)]
    async with limited(make_settings(auth_failures="3/minute")) as (server, _):
        assert await guesses(server, spoofed) == [401, 401, 401, 429]
    behind_a_proxy = make_settings(auth_failures="3/minute", forwarded_allow_ips="127.0.0.1")
    async with limited(behind_a_proxy) as (server, _):
        # The proxy's header names the client: each address has its own count.
        assert await guesses(server, spoofed) == [401, 401, 401, 401]
        assert await guesses(server, ["198.51.100.7"] * 4) == [401, 401, 401, 429]


async def test_a_bad_key_on_a_websocket_counts_as_a_failure(make_settings: Any) -> None:
    async with limited(make_settings(auth_failures="1/minute")) as (server, _):
        _, key = await server.user()
        for expected in ("UNAUTHENTICATED", "RATE_LIMITED"):
            async with websockets.connect(
                server.ws_url, subprotocols=[websockets.Subprotocol("graphql-ws")]
            ) as ws:
                await ws.send(
                    '{"type": "connection_init", "payload": {"Authorization": "Bearer x"}}'
                )
                answer = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert answer["type"] == "connection_error"
            assert answer["payload"]["code"] == expected
        async with server.gql_client(key, PROTOCOLS[0]) as session:
            assert (await session.execute(GraphQLRequest("{ viewer { id } }")))["viewer"]


async def test_the_graphql_answer_cache_answers_only_an_authenticated_key_once_checked(
    make_settings: Any,
) -> None:
    """On the answer cache's path (a JSON POST, the cache on) each request is
    authenticated before the cache is asked, and once: the owner's key gets the answer
    from memory, a revoked key of the same user does not, and a refused key counts one
    failure, not one there and one in Strawberry."""
    query = json.dumps({"query": "{ vehicles { id name } }"}).encode()
    async with limited(make_settings(auth_failures="3/minute")) as (server, _):
        server.services.cache.clock = lambda: 1000.0  # nothing expires during the test
        user, key = await server.user()
        vehicle = await server.vehicle(user, "plugged")
        revoked = await issue_key(user)
        await revoke_key(revoked.record.prefix)  # as the CLI does: the server is not told
        headers = {"Content-Type": "application/json"}

        async def post(key: str) -> Any:
            answer = await server.http.post(
                "/graphql", content=query, headers={**headers, **bearer(key)}
            )
            return answer

        for _ in range(2):  # the first read refreshes from the provider: not stored
            stored = (await post(key)).json()
        await Vehicle.filter(id=vehicle.id).update(name="renamed, unseen by the cache")
        assert (
            (await post(key)).json()
            == stored
            == {"data": {"vehicles": [{"id": str(vehicle.id), "name": vehicle.name}]}}
        )
        refused = (await post(revoked.secret)).json()
        assert refused["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"

        wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
        answers = [await post(wrong) for _ in range(3)]  # the revoked key was the first
        codes = [a.json()["errors"][0]["extensions"]["code"] for a in answers]
        assert codes == ["UNAUTHENTICATED"] * 2 + ["RATE_LIMITED"]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert fields(answers[2].headers["RateLimit"])["auth-failures"] == {"r": 0, "t": 60}


# last_used_at in batches (KeyUses): a running app notes a use and writes it later.


async def test_a_used_keys_last_used_at_is_written_by_the_next_batch(server: Server) -> None:
    user, _ = await server.user()
    issued = await issue_key(user)
    uses = server.services.key_uses
    assert uses is not None
    flushed = asyncio.ensure_future(uses.flushed())
    began = datetime.now(UTC)

    answer = await server.http.get("/api/ha/me", headers=bearer(issued.secret))
    await asyncio.wait_for(flushed, KEY_USE_FLUSH_INTERVAL + TIMEOUT)

    assert answer.status_code == 200
    stored = await ApiKey.get(id=issued.record.id)
    assert stored.last_used_at is not None
    assert began <= stored.last_used_at <= datetime.now(UTC)


async def test_key_uses_not_yet_written_are_written_at_shutdown(settings: Settings) -> None:
    await _truncate(settings.database_url)
    async with run_server(settings) as server:
        user, _ = await server.user()
        issued = await issue_key(user)
        answer = await server.http.get("/api/ha/me", headers=bearer(issued.secret))
        # Noted, not written: the request made no write of its own.
        assert (await ApiKey.get(id=issued.record.id)).last_used_at is None

    assert answer.status_code == 200
    async with open_database(settings.database_url):
        stored = await ApiKey.get(id=issued.record.id)
    assert stored.last_used_at is not None


async def test_a_flush_writes_at_most_a_batch_of_keys_per_statement(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    user, _ = await server.user()
    issued = await issue_key(user)
    uses = KeyUses()
    began = datetime.now(UTC)
    # Ids of keys that do not exist match no row; they only fill the batches.
    for unknown in range(10**6, 10**6 + 2 * KEY_USE_BATCH):
        uses.note(unknown, began)
    uses.note(issued.record.id, began)

    with caplog.at_level(logging.DEBUG, logger="tortoise.db_client"):
        await uses.flush()

    updates = [
        r.getMessage()
        for r in caplog.records
        if r.name == "tortoise.db_client" and r.getMessage().startswith("UPDATE")
    ]
    assert len(updates) == 3
    assert (await ApiKey.get(id=issued.record.id)).last_used_at == began
