"""Open websockets follow revoked keys, deleted users, tier changes and lost vehicles.

evlink/revocation.py closes the sockets (4401, 4403) and ends the subscriptions;
each operation on a socket is checked again as an HTTP request is
(evlink/schema/context.py, ``Context.recheck``). On one instance, then on two
instances over PostgreSQL and Redis with the real ``evlink`` CLI.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import websockets
from gql import GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from tortoise import Tortoise
from websockets.frames import Close

from evlink.cache import user_tag
from evlink.models import ApiKey, Tier, User, Vehicle
from evlink.resolvers import accounts
from evlink.resolvers.auth import hash_key, issue_key, revoke_key
from evlink.resolvers.auth import key_id as counted_key_id
from evlink.settings import Settings, connection_name
from tests.conftest import (
    PROTOCOLS,
    TIMEOUT,
    Server,
    _truncate,
    enode_settings,
    free_port,
    next_result,
    run_enode_world,
    run_server,
    shared_settings,
    subscription,
)
from tests.test_instances import private_redis

# Seconds within which a change that was published (the server itself, another instance
# or the CLI over Redis) closes the sockets it concerns.
PROMPTLY = 1.0
TRANSPORT_WS, LEGACY_WS = PROTOCOLS
CHARGE_STATE = "subscription($id: ID!) { chargeState(vehicleId: $id) { isPluggedIn } }"
COMMAND = "subscription($id: ID!) { chargingCommand(id: $id) { state } }"
SET_CHARGING = "mutation($id: ID!) { setCharging(vehicleId: $id, action: START) { id } }"
TIER = "{ viewer { tier } }"


class Clock:
    """The read cache's clock, moved by hand: a cached key expires when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def connect(server: Server, key: str, protocol: str) -> websockets.ClientConnection:
    """A websocket past connection_init (acknowledged)."""
    socket = await websockets.connect(
        server.ws_url, subprotocols=[websockets.Subprotocol(protocol)]
    )
    await socket.send(json.dumps({"type": "connection_init", "payload": auth(key)}))
    assert (await receive(socket))["type"] == "connection_ack"
    return socket


async def receive(
    socket: websockets.ClientConnection, operation: str | None = None
) -> dict[str, Any]:
    """The next message (of ``operation``, when given), graphql-ws keep-alives ("ka") and
    the ``complete`` that follows an error skipped."""
    for _ in range(100):  # bounded: a keep-alive comes at most every few seconds
        message: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))
        if message == {"type": "ka"} or message["type"] == "complete":
            continue
        if operation is None or message.get("id") == operation:
            return message
    pytest.fail("only keep-alives came")


async def subscribe_only(
    socket: websockets.ClientConnection, query: str, operation: str, **variables: str
) -> None:
    """Start a subscription on either protocol."""
    legacy = socket.subprotocol == LEGACY_WS
    await socket.send(
        json.dumps(
            {
                "id": operation,
                "type": "start" if legacy else "subscribe",
                "payload": {"query": query, "variables": variables},
            }
        )
    )


async def subscribe(
    socket: websockets.ClientConnection, query: str, operation: str = "1", **variables: str
) -> dict[str, Any]:
    """Start a subscription on either protocol; its first message."""
    await subscribe_only(socket, query, operation, **variables)
    return await receive(socket, operation)


def payload(message: dict[str, Any]) -> dict[str, Any]:
    """The data of a ``next`` (graphql-transport-ws) or ``data`` (graphql-ws) message."""
    assert message["type"] in ("next", "data"), message
    data: dict[str, Any] = message["payload"]["data"]
    return data


def error_code(message: dict[str, Any]) -> str:
    """The code of an operation's error, on either protocol."""
    if message["type"] == "error":  # graphql-transport-ws: a list; graphql-ws: one error
        errors = message["payload"]
        first = errors[0] if isinstance(errors, list) else errors
    else:
        assert message["type"] in ("next", "data"), message
        first = message["payload"]["errors"][0]
    code: str = first["extensions"]["code"]
    return code


async def _until_closed(socket: websockets.ClientConnection) -> None:
    while True:
        await socket.recv()


async def close_of(socket: websockets.ClientConnection, within: float) -> Close:
    """The close frame the server sends within ``within`` seconds (messages before it
    are skipped)."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(_until_closed(socket), within)
    assert closed.value.rcvd is not None, "the socket closed without a close frame"
    return closed.value.rcvd


async def _run(session: Any, operation: str, variables: dict[str, str]) -> None:
    if operation.startswith("subscription"):
        async with subscription(session, operation, **variables) as stream:
            await next_result(stream)
    else:
        await session.execute(GraphQLRequest(operation, variable_values=variables))


async def refusal(session: Any, operation: str, **variables: str) -> str:
    """The error code a gql session gets for ``operation`` (a subscription: its first
    result)."""
    with pytest.raises(TransportQueryError) as error:
        await _run(session, operation, variables)
    assert error.value.errors is not None
    code: str = error.value.errors[0]["extensions"]["code"]
    return code


async def still_open(socket: websockets.ClientConnection, server: Server, vehicle: Vehicle) -> None:
    """The socket still serves: a new subscription on it gets the vehicle's state, and no
    error came for any other subscription before it."""
    operation = "still-open"
    await subscribe_only(socket, CHARGE_STATE, operation, id=str(vehicle.id))
    for _ in range(20):  # bounded: what other subscriptions send first
        message = await receive(socket)
        assert message["type"] in ("next", "data"), message
        assert not message["payload"].get("errors"), message
        if message["id"] == operation:
            assert "chargeState" in payload(message)
            return
    pytest.fail("no answer to the new subscription")


async def key_id(key: str) -> str:
    return str((await ApiKey.get(hash=hash_key(key))).id)


async def usage(server: Server, user: User, key: str) -> list[int]:
    """What the user and the key have spent of each rate limit."""
    assert server.services.limiter is not None
    states = await server.services.limiter.usage(user, [counted_key_id(hash_key(key))])
    return [state.used for state in states]


def frozen_cache(server: Server) -> Clock:
    """Put the server's read cache on a clock of the test's (see :class:`Clock`)."""
    clock = Clock()
    server.services.cache.clock = clock
    return clock


@pytest.fixture
async def quiet(settings: Settings) -> AsyncIterator[Server]:
    """A server whose timed re-check of every socket (every EVLINK_CACHE_TTL) does not run
    during a test, so that only each operation's own check can refuse it."""
    await _truncate(settings.database_url)
    async with run_server(replace(settings, cache_ttl=600.0)) as server:
        yield server


# -- each operation is checked as an HTTP request is -------------------------------


async def refused_on_open_sockets(
    server: Server,
    user: User,
    key: str,
    car: Vehicle,
    change: Callable[[Any, Clock], Awaitable[None]],
    expected: str,
) -> None:
    """An open socket of each protocol, admitted with ``key`` as PRO, refuses with
    ``expected`` once ``change`` is made (handed the graphql-transport-ws session and the
    cache's clock): a query, a mutation and a subscription on graphql-transport-ws, a
    subscription on graphql-ws; none is charged and no charging starts."""
    clock = frozen_cache(server)
    async with (
        server.gql_client(key, TRANSPORT_WS) as modern,
        server.gql_client(key, LEGACY_WS) as legacy,
    ):
        assert (await modern.execute(GraphQLRequest(TIER)))["viewer"]["tier"] == "PRO"
        await change(modern, clock)
        car_id = str(car.id)
        spent = await usage(server, user, key)
        refused = [
            await refusal(modern, TIER),
            await refusal(modern, SET_CHARGING, id=car_id),
            await refusal(modern, CHARGE_STATE, id=car_id),
            await refusal(legacy, CHARGE_STATE, id=car_id),
        ]
    assert refused == [expected] * 4
    assert await usage(server, user, key) == spent  # refused before they were charged
    assert not [call for call in server.simulator.calls if call.startswith("set_charging")]


async def test_operations_on_a_socket_stop_with_its_revoked_key_as_http_does(quiet: Server) -> None:
    """`evlink key revoke` without Redis: HTTP takes the cached key until the cache's ttl,
    then answers 401; an open socket's operations follow the same rule."""
    server = quiet
    user, key = await server.user()
    car = await server.vehicle(user, "plugged")

    async def revoke(modern: Any, clock: Clock) -> None:
        await revoke_key(await key_id(key))  # as the CLI does, in a process of its own
        assert (await server.graphql(TIER, key=key))["data"]["viewer"]["tier"] == "PRO"
        assert (await modern.execute(GraphQLRequest(TIER)))["viewer"]["tier"] == "PRO"

        clock.now += server.settings.cache_ttl  # the cached key expires
        over_http = await server.http.get(f"/api/status/{car.id}", headers=auth(key))
        assert over_http.status_code == 401

    await refused_on_open_sockets(server, user, key, car, revoke, "UNAUTHENTICATED")


async def test_operations_on_a_socket_stop_with_a_changed_tier(quiet: Server) -> None:
    """`evlink user set-tier ... FREE` without Redis: once HTTP sees FREE, an open socket
    admitted as PRO answers FORBIDDEN_TIER, and starts no charging."""
    server = quiet
    user, key = await server.user(tier=Tier.PRO)
    car = await server.vehicle(user, "plugged")

    async def set_free(modern: Any, clock: Clock) -> None:
        await accounts.set_tier(user, Tier.FREE)  # as the CLI does, in a process of its own
        clock.now += server.settings.cache_ttl
        assert (await server.graphql(TIER, key=key))["data"]["viewer"]["tier"] == "FREE"

    await refused_on_open_sockets(server, user, key, car, set_free, "FORBIDDEN_TIER")


async def test_a_second_connection_init_does_not_change_whose_key_is_checked(
    quiet: Server,
) -> None:
    """graphql-ws took connection_init again (and acked it, whatever its key); now the
    socket closes with 4429, as on graphql-transport-ws, and is never the other key's."""
    server = quiet
    user, key = await server.user()
    _, other_key = await server.user()
    car = await server.vehicle(user, "plugged")
    socket = await connect(server, key, LEGACY_WS)
    assert payload(await subscribe(socket, CHARGE_STATE, "mine", id=str(car.id)))
    await socket.send(json.dumps({"type": "connection_init", "payload": auth(other_key)}))

    closed = await close_of(socket, PROMPTLY)
    assert (closed.code, closed.reason) == (4429, "Too many initialisation requests")


# -- sockets close when what admitted them changes ---------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_revoking_a_key_closes_its_sockets_with_4401_and_no_others(
    server: Server, protocol: str
) -> None:
    user, key = await server.user()
    other_key = (await issue_key(user, name="other")).secret
    car = await server.vehicle(user, "plugged")
    revoked = await connect(server, key, protocol)
    kept = await connect(server, other_key, protocol)
    for socket in (revoked, kept):
        assert payload(await subscribe(socket, CHARGE_STATE, id=str(car.id)))["chargeState"]

    await revoke_key(await key_id(key), server.services.cache)

    closed = await close_of(revoked, PROMPTLY)
    assert closed.code == 4401
    server.simulator.update_vehicle(car.provider_vehicle_id or "", is_plugged_in=False)
    await server.clock.advance(1)
    assert payload(await receive(kept)) == {"chargeState": {"isPluggedIn": False}}
    await kept.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_tier_change_up_or_down_closes_the_users_sockets_with_4403(
    server: Server, protocol: str
) -> None:
    user, key = await server.user(tier=Tier.PRO)
    other, other_key = await server.user(tier=Tier.PRO)
    car = await server.vehicle(other, "plugged")
    bystander = await connect(server, other_key, protocol)
    for tier in (Tier.FREE, Tier.PRO):  # down, then up
        sockets = [await connect(server, key, protocol) for _ in range(2)]

        await accounts.set_tier(user, tier, server.services.cache)

        for socket in sockets:
            closed = await close_of(socket, PROMPTLY)
            assert closed.code == 4403
            assert closed.reason == f"Tier changed to {tier.value}: reconnect"
    async with server.gql_client(key, TRANSPORT_WS) as reconnected:
        assert (await reconnected.execute(GraphQLRequest(TIER)))["viewer"]["tier"] == "PRO"
    await still_open(bystander, server, car)
    await bystander.close()


UNPUBLISHED = {
    "revoked": lambda user, key: revoke_key(key),
    "tier": lambda user, key: accounts.set_tier(user, Tier.BASIC),
    "deleted": lambda user, key: User.filter(id=user.id).delete(),
}


@pytest.mark.parametrize(
    ("change", "protocol", "cache_ttl", "code"),
    [
        ("revoked", TRANSPORT_WS, 0.3, 4401),
        ("tier", LEGACY_WS, 0.3, 4403),
        ("deleted", TRANSPORT_WS, 0.3, 4401),
        ("revoked", LEGACY_WS, 0.0, 4401),  # the cache off: checked every second
    ],
)
async def test_changes_no_one_published_close_sockets_within_the_ttl(
    settings: Settings, change: str, protocol: str, cache_ttl: float, code: int
) -> None:
    """The CLI without Redis, or a user deleted in the database: nothing tells the server,
    and the timed re-check finds it within EVLINK_CACHE_TTL (a second with the cache off)."""
    await _truncate(settings.database_url)
    async with run_server(replace(settings, cache_ttl=cache_ttl)) as server:
        user, key = await server.user(tier=Tier.PRO)
        socket = await connect(server, key, protocol)
        changed = time.monotonic()

        await UNPUBLISHED[change](user, await key_id(key))

        closed = await close_of(socket, (cache_ttl or 1.0) + PROMPTLY)
        assert closed.code == code
        assert time.monotonic() - changed < (cache_ttl or 1.0) + PROMPTLY


@pytest.mark.parametrize("change", ["revoked", "tier"])
async def test_a_client_that_reconnects_at_once_is_not_let_in_on_a_cached_key(
    settings: Settings, change: str
) -> None:
    """The timed check that closes a socket also drops what this server had cached of its
    user: the client's next connection_init sees the change, however young the cache."""
    await _truncate(settings.database_url)
    async with run_server(replace(settings, cache_ttl=0.3)) as server:
        frozen_cache(server)  # what is cached stays until something drops it
        user, key = await server.user(tier=Tier.PRO)
        socket = await connect(server, key, TRANSPORT_WS)

        await UNPUBLISHED[change](user, await key_id(key))

        assert (await close_of(socket, 0.3 + PROMPTLY)).code in (4401, 4403)
        if change == "revoked":
            with pytest.raises(websockets.ConnectionClosed) as refused:
                await connect(server, key, TRANSPORT_WS)
            assert refused.value.rcvd is not None
            assert refused.value.rcvd.code == 4401  # connection_init refused: the key
        else:
            async with server.gql_client(key, TRANSPORT_WS) as again:
                assert (await again.execute(GraphQLRequest(TIER)))["viewer"]["tier"] == "BASIC"


class _Logged(logging.Handler):
    """Sets an event when a record of at least WARNING comes."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.set()


async def test_checks_go_on_after_the_database_failed_one(quiet: Server) -> None:
    """A check that meets a database fault is logged, and the next one runs."""
    server = quiet
    user, key = await server.user()
    socket = await connect(server, key, TRANSPORT_WS)
    await revoke_key(await key_id(key))  # nothing published: no check ran
    connection = Tortoise.get_connection(connection_name(server.settings.database_url))
    logged = _Logged()
    logging.getLogger("evlink.revocation").addHandler(logged)
    await connection.execute_script("ALTER TABLE api_keys RENAME TO api_keys_away")
    try:
        await server.services.cache.invalidate(user_tag(user.id))  # a check, which fails
        await asyncio.wait_for(logged.seen.wait(), TIMEOUT)
    finally:
        await connection.execute_script("ALTER TABLE api_keys_away RENAME TO api_keys")
        logging.getLogger("evlink.revocation").removeHandler(logged)

    await server.services.cache.invalidate(user_tag(user.id))

    assert (await close_of(socket, PROMPTLY)).code == 4401


async def test_checks_go_on_after_the_event_stream_broke(settings: Settings) -> None:
    """Redis goes away (every local subscription is told): sockets are still checked."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    await _truncate(settings.database_url)
    shared = replace(settings, redis_url=f"redis://127.0.0.1:{port}/0", cache_ttl=600.0)
    async with private_redis(port) as redis_process, run_server(shared) as server:
        user, key = await server.user()
        car = await server.vehicle(user, "plugged")
        socket = await connect(server, key, TRANSPORT_WS)
        assert payload(await subscribe(socket, CHARGE_STATE, id=str(car.id)))
        redis_process.kill()
        broken = await receive(socket)  # every local subscription was interrupted
        assert error_code(broken) == "STREAM_INTERRUPTED"

        await revoke_key(await key_id(key), server.services.cache)  # told here, at least

        assert (await close_of(socket, PROMPTLY)).code == 4401


# -- subscriptions end when the vehicle is no longer the user's ---------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_subscription_ends_when_its_vehicle_is_deleted(enode: Any, protocol: str) -> None:
    """Enode reports the car deleted (webhook): its subscriptions end with NOT_FOUND at
    once; the socket and its other subscriptions go on."""
    user, key = await enode.linked_user()
    deleted = await enode.vehicle(user, isPluggedIn=True)
    kept = await enode.vehicle(user, isPluggedIn=True)
    socket = await connect(enode.server, key, protocol)
    assert payload(await subscribe(socket, CHARGE_STATE, "deleted", id=str(deleted.id)))
    assert payload(await subscribe(socket, CHARGE_STATE, "kept", id=str(kept.id)))

    gone = enode.fake.vehicle_event(deleted.provider_vehicle_id or "", "user:vehicle:deleted")
    await enode.deliver([gone])

    ended = await asyncio.wait_for(receive(socket), PROMPTLY)
    assert ended["id"] == "deleted"
    assert error_code(ended) == "NOT_FOUND"
    await still_open(socket, enode.server, kept)
    await socket.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_subscriptions_end_when_the_vehicle_moves_to_another_user(
    settings: Settings, protocol: str
) -> None:
    """A car moved to another user in the database (nothing published): the timed
    re-check ends its charge-state and command subscriptions with FORBIDDEN_OWNER."""
    await _truncate(settings.database_url)
    async with run_server(replace(settings, cache_ttl=0.3)) as server:
        user, key = await server.user(tier=Tier.PRO)
        other, _ = await server.user()
        car = await server.vehicle(user, "plugged")
        command = await server.graphql(SET_CHARGING, {"id": str(car.id)}, key=key)
        command_id = command["data"]["setCharging"]["id"]
        socket = await connect(server, key, protocol)
        assert payload(await subscribe(socket, CHARGE_STATE, "state", id=str(car.id)))
        assert payload(await subscribe(socket, COMMAND, "command", id=command_id))

        await Vehicle.filter(id=car.id).update(user_id=other.id)

        ended = {}
        for _ in range(2):
            message = await asyncio.wait_for(receive(socket), 0.3 + PROMPTLY)
            ended[message["id"]] = error_code(message)
        assert ended == {"state": "FORBIDDEN_OWNER", "command": "FORBIDDEN_OWNER"}
        await socket.close()


# -- several instances over PostgreSQL and Redis ------------------------------------


@pytest.fixture
def shared(settings: Settings) -> Settings:
    """Settings for instances that share the database and Redis."""
    return shared_settings(settings)


async def cli(settings: Settings, cwd: Path, *args: str) -> None:
    """Run the real ``evlink`` command in a process of its own, with Redis configured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVLINK_")}
    env |= {"EVLINK_DATABASE_URL": settings.database_url, "EVLINK_REDIS_URL": settings.redis_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "evlink.cli", *args, env=env, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, (out, err)


@pytest.mark.parametrize(
    ("command", "code"),
    [(("key", "revoke"), 4401), (("user", "set-tier"), 4403)],
)
async def test_the_cli_over_redis_closes_sockets_on_every_instance_within_a_second(
    shared: Settings, tmp_path: Path, command: tuple[str, str], code: int
) -> None:
    await _truncate(shared.database_url)
    async with run_server(shared) as a, run_server(shared) as b:
        user, key = await a.user(tier=Tier.PRO)
        on_a = await connect(a, key, TRANSPORT_WS)
        on_b = await connect(b, key, LEGACY_WS)
        if command == ("key", "revoke"):
            await cli(shared, tmp_path, *command, await key_id(key))
        else:
            await cli(shared, tmp_path, *command, "--email", user.email, "--tier", "FREE")
        for socket in (on_a, on_b):
            assert (await close_of(socket, PROMPTLY)).code == code


async def test_a_deleted_user_s_sockets_close_on_every_instance(shared: Settings) -> None:
    await _truncate(shared.database_url)
    shared = replace(shared, cache_ttl=0.3)
    async with run_server(shared) as a, run_server(shared) as b:
        user, key = await a.user()
        on_a = await connect(a, key, LEGACY_WS)
        on_b = await connect(b, key, TRANSPORT_WS)

        await User.filter(id=user.id).delete()

        for socket in (on_a, on_b):
            assert (await close_of(socket, 0.3 + PROMPTLY)).code == 4401


async def test_a_vehicle_deleted_through_one_instance_ends_subscriptions_on_another(
    shared: Settings,
) -> None:
    async with run_enode_world(shared) as world:
        b = world.server
        async with run_server(enode_settings(shared, world.fake.base_url or "")) as a:
            user, key = await world.linked_user()
            car = await world.vehicle(user, isPluggedIn=True)
            socket = await connect(a, key, TRANSPORT_WS)
            assert payload(await subscribe(socket, CHARGE_STATE, id=str(car.id)))

            gone = world.fake.vehicle_event(car.provider_vehicle_id or "", "user:vehicle:deleted")
            await world.deliver([gone])  # to B, which publishes the change over Redis

            ended = await asyncio.wait_for(receive(socket), PROMPTLY)
            assert error_code(ended) == "NOT_FOUND"
            assert b is not a
            await socket.close()
