"""The database failing under `evlink serve`: every call bounded, one error, one log line.

A TCP proxy between evlink and PostgreSQL freezes the link (packets dropped, nothing
reset), refuses and resets it; evlink runs as real `evlink serve` processes whose
JSON log lines the tests read. SQLite is failed by a lock another connection holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import asyncpg
import httpx
import pytest
import websockets

from evlink.models import ApiKey, ChargingSample, ChargingSession
from evlink.resolvers.auth import KEY_USE_FLUSH_INTERVAL, issue_key
from evlink.settings import Settings
from tests.conftest import TIMEOUT, _truncate, run_server
from tests.faults.processes import EvlinkProcess
from tests.faults.proxy import TcpProxy
from tests.faults.redis_server import redis_server
from tests.faults.world import account, graphql, status, through, timed, upstream

DB_TIMEOUT = 1.0  # EVLINK_DATABASE_TIMEOUT of the servers under fault
SLACK = 1.0  # what a busy test machine may add to a bounded answer
READY_WITHIN = 2.0  # /readyz answers within this, whatever happens
OUTAGE_STARTS = "database unavailable"
OUTAGE_ENDS = "database answers again"
OUTAGE_LOGGER = "evlink.models.backends"

postgres_only = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


def _environment(database_url: str, **more: str) -> dict[str, str]:
    return {
        "EVLINK_DATABASE_URL": database_url,
        "EVLINK_DATABASE_TIMEOUT": str(DB_TIMEOUT),
        "EVLINK_CACHE_TTL": "0",  # every request reads the database, none is served from memory
        **more,
    }


@asynccontextmanager
async def _evlink_through_proxy(
    database_url: str, **more: str
) -> AsyncIterator[tuple[TcpProxy, EvlinkProcess, httpx.AsyncClient]]:
    async with (
        TcpProxy(*upstream(database_url)).running() as proxy,
        EvlinkProcess(**_environment(through(database_url, proxy.port), **more)).running() as ev,
        httpx.AsyncClient(base_url=ev.base_url, timeout=TIMEOUT) as http,
    ):
        yield proxy, ev, http


def _assert_unavailable_rest(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.json()["code"] == "DATABASE_UNAVAILABLE"
    assert set(answer.json()) == {"detail", "code"}
    assert int(answer.headers["Retry-After"]) >= 1


def _assert_unavailable_graphql(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["Retry-After"]) >= 1
    (error,) = answer.json()["errors"]
    assert set(answer.json()) == {"errors"}  # a request error: no data
    assert error["extensions"] == {"code": "DATABASE_UNAVAILABLE"}
    assert error["message"]


async def _websocket_close(url: str, protocol: str, key: str) -> tuple[int, str]:
    """Open a GraphQL websocket with ``key`` and return how the server closed it."""
    async with websockets.connect(url, subprotocols=[websockets.Subprotocol(protocol)]) as ws:
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}})
        )
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert closed.value.rcvd is not None, "closed without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


def _assert_one_outage_logged(evlink: EvlinkProcess, since: int) -> None:
    assert evlink.count(OUTAGE_STARTS, level="WARNING", since=since) == 1, evlink.records
    assert evlink.count(OUTAGE_ENDS, level="INFO", since=since) == 1, evlink.records
    assert evlink.failures() == []  # no ERROR, no traceback, at any point


@postgres_only
async def test_a_frozen_link_answers_503_within_the_timeout_then_serves_again(
    database_url: str,
) -> None:
    world = await account(database_url, keys=4)
    key, graphql_key, *socket_keys = world.keys
    async with _evlink_through_proxy(database_url) as (proxy, evlink, http):
        assert (await status(http, key, world.vehicle_id)).status_code == 200
        mark = len(evlink.records)
        proxy.freeze()

        # More requests at once than the pool holds (5): waiting for a connection is
        # bounded as well as connecting and each statement.
        rest = [timed(status(http, key, world.vehicle_id)) for _ in range(8)]
        answers = await asyncio.gather(
            *rest,
            timed(graphql(http, graphql_key)),
            timed(http.get("/readyz")),
            *(
                timed(_websocket_close(evlink.ws_url, protocol, socket_key))
                for protocol, socket_key in zip(
                    ("graphql-transport-ws", "graphql-ws"), socket_keys, strict=True
                )
            ),
        )
        *rest_answers, (graphql_answer, _), (ready, ready_took), transport_ws, legacy_ws = answers
        for answer, took in rest_answers:
            _assert_unavailable_rest(answer)
            assert took < DB_TIMEOUT + SLACK
        started = await evlink.wait_for(OUTAGE_STARTS, mark)
        assert f"no answer within {DB_TIMEOUT:g} s" in started["message"]
        _assert_unavailable_graphql(graphql_answer)
        assert ready.status_code == 503
        assert ready.json() == {"status": "unavailable", "database": "unavailable"}
        assert ready_took < READY_WITHIN
        for (code, reason), took in (transport_ws, legacy_ws):
            assert (code, reason) == (1011, "The database is unavailable; try again shortly")
            assert took < DB_TIMEOUT + SLACK

        proxy.thaw()
        # No connection cut short went back to the pool: every request is served again.
        for _ in range(2):
            again = await asyncio.gather(*(status(http, key, world.vehicle_id) for _ in range(8)))
            assert [a.status_code for a in again] == [200] * 8
        assert (await graphql(http, graphql_key)).status_code == 200
        assert (await http.get("/readyz")).status_code == 200
        _assert_one_outage_logged(evlink, mark)


@postgres_only
async def test_postgresql_going_down_answers_503_at_once_then_serves_again(
    database_url: str,
) -> None:
    world = await account(database_url, keys=3)
    in_flight_key, rest_key, graphql_key = world.keys
    # The read cache on (its default): a key it remembers needs no lookup, so GraphQL
    # meets the outage in its fields, not in authentication. No lease scans meanwhile.
    async with _evlink_through_proxy(
        database_url, EVLINK_CACHE_TTL="5", EVLINK_COMMAND_LEASE="600"
    ) as (proxy, evlink, http):
        assert (await graphql(http, graphql_key, "{ viewer { email } }")).status_code == 200
        mark = len(evlink.records)
        proxy.freeze()
        in_flight = asyncio.create_task(timed(status(http, in_flight_key, world.vehicle_id)))
        await proxy.holding()  # its query is on the way
        await proxy.refuse()  # PostgreSQL goes down: its connections reset, its port closed
        proxy.reset()
        proxy.thaw()

        # Lost in the middle, then refused: both known at once, neither waits the bound.
        for answer, took in (
            await in_flight,
            await timed(status(http, rest_key, world.vehicle_id)),
        ):
            _assert_unavailable_rest(answer)
            assert took < DB_TIMEOUT
        _assert_unavailable_graphql(await graphql(http, graphql_key))  # a field failed
        ready = await http.get("/readyz")
        assert (ready.status_code, ready.json()["database"]) == (503, "unavailable")

        proxy.starting_up()  # PostgreSQL starts again: it turns connections away a while
        await proxy.accept()
        answer, took = await timed(status(http, rest_key, world.vehicle_id))
        _assert_unavailable_rest(answer)
        assert took < DB_TIMEOUT

        proxy.started()  # and serves
        assert (await status(http, rest_key, world.vehicle_id)).status_code == 200
        assert (await graphql(http, graphql_key)).status_code == 200
        assert (await http.get("/readyz")).json() == {"status": "ready", "database": "ok"}
        _assert_one_outage_logged(evlink, mark)
        started = next(r for r in evlink.records[mark:] if OUTAGE_STARTS in r["message"])
        assert "ConnectionDoesNotExistError" in started["message"]


@postgres_only
async def test_postgresql_ending_evlinks_sessions_costs_only_the_call_in_flight(
    database_url: str,
) -> None:
    world = await account(database_url, keys=3)
    warm_key, in_flight_key, next_key = world.keys
    async with _evlink_through_proxy(database_url, EVLINK_COMMAND_LEASE="600") as (
        proxy,
        evlink,
        http,
    ):
        assert (await status(http, warm_key, world.vehicle_id)).status_code == 200
        mark = len(evlink.records)
        proxy.freeze()
        in_flight = asyncio.create_task(status(http, in_flight_key, world.vehicle_id))
        await proxy.holding()
        # As a restart (or an administrator) does: every session of evlink ends (57P01).
        assert await _terminate_sessions(database_url) >= 1
        proxy.thaw()

        _assert_unavailable_rest(await in_flight)
        answer = await status(http, next_key, world.vehicle_id)
        assert answer.status_code == 200, [
            r for r in evlink.records[mark:] if r["level"] in ("WARNING", "ERROR")
        ]
        _assert_one_outage_logged(evlink, mark)


async def _terminate_sessions(database_url: str) -> int:
    """End every other session on this test's database; how many there were."""
    connection = await asyncpg.connect(database_url)
    try:
        ended: int = await connection.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await connection.close()
    return ended


@postgres_only
async def test_work_in_the_background_meets_the_outage_quietly_and_resumes(
    database_url: str,
) -> None:
    # The charging car reports a new state on every step of the simulator.
    world = await account(database_url, keys=2, profiles=("plugged", "charging"))
    key, spare = world.keys
    async with _evlink_through_proxy(
        database_url,
        EVLINK_SIMULATOR_TICK="0.1",  # the charging car is recorded every 0.1 s
        EVLINK_SIMULATOR_ACTION_DELAY="3600",  # the command stays PENDING, followed
        EVLINK_CHARGING_POLL_INTERVAL="0.05",
        EVLINK_CHARGING_POLL_MAX_INTERVAL="0.2",  # the watcher reads it every 0.2 s at most
        EVLINK_COMMAND_LEASE="0.9",  # and renews its lease every 0.3 s
    ) as (proxy, evlink, http):
        started = await http.post(
            f"/api/charging/{world.vehicle_id}",
            json={"action": "START"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert started.status_code == 200, started.text
        command_id = started.json()["command_id"]
        charging_car = world.vehicle_ids[1]  # read once: the simulator steps it from now on
        assert (await status(http, key, charging_car)).json()["isCharging"] is True
        mark = len(evlink.records)
        proxy.freeze()
        # Only the background reads the database now: the simulator recording the car,
        # the watcher following the command, the lease keeper. The outage is logged once
        # the first of them runs out of time; each of them started a call within 0.3 s of
        # the freeze, so by the time a request sent after that log line has run out of
        # time too, every one of them has met the outage.
        await evlink.wait_for(OUTAGE_STARTS, mark)
        _assert_unavailable_rest(await status(http, spare, world.vehicle_id))
        proxy.thaw()

        # The command's follower died with the outage; the next lease scan follows it again.
        await evlink.wait_for(f"command {command_id}: following it", mark)
        assert (await status(http, key, world.vehicle_id)).status_code == 200
        _assert_one_outage_logged(evlink, mark)


@postgres_only
async def test_readyz_answers_within_2_s_whatever_the_database_and_redis_do(
    database_url: str,
) -> None:
    await account(database_url)
    async with (
        redis_server() as redis,
        TcpProxy("127.0.0.1", redis.port).running() as redis_link,
        # The default database timeout (5 s): readiness bounds its own checks tighter.
        _evlink_through_proxy(
            database_url,
            EVLINK_DATABASE_TIMEOUT="5",
            EVLINK_REDIS_URL=f"redis://127.0.0.1:{redis_link.port}/0",
        ) as (database_link, evlink, http),
    ):
        await evlink.wait_for("events: reading Redis pub/sub")
        ready = await http.get("/readyz")
        assert ready.json() == {"status": "ready", "database": "ok", "redis": "ok"}

        database_link.freeze()
        redis_link.freeze()
        ready, took = await timed(http.get("/readyz"))

        assert took < READY_WITHIN
        assert ready.status_code == 503
        assert ready.json() == {
            "status": "unavailable",
            "database": "unavailable",
            "redis": "degraded",
        }
        database_link.thaw()  # so that the server shuts down at once
        redis_link.thaw()


@postgres_only
async def test_a_redis_outage_keeps_every_instance_ready_and_serving(database_url: str) -> None:
    world = await account(database_url, keys=2)
    async with redis_server() as redis:
        environment = _environment(database_url, EVLINK_REDIS_URL=redis.url)
        async with (
            EvlinkProcess(**environment).running() as a,
            EvlinkProcess(**environment).running() as b,
        ):
            instances = list(zip((a, b), world.keys, strict=True))
            for evlink, _ in instances:
                await evlink.wait_for("events: reading Redis pub/sub")
            mark = [len(evlink.records) for evlink, _ in instances]
            await redis.stop()

            for (evlink, key), since in zip(instances, mark, strict=True):
                await evlink.wait_for("events: Redis pub/sub unavailable", since)
                async with httpx.AsyncClient(base_url=evlink.base_url, timeout=TIMEOUT) as http:
                    ready = await http.get("/readyz")
                    served = await status(http, key, world.vehicle_id)
                    queried = await graphql(http, key)
                assert ready.status_code == 200
                assert ready.json() == {"status": "ready", "database": "ok", "redis": "degraded"}
                assert served.status_code == 200
                assert "burst" in served.headers["RateLimit-Policy"]  # counted, in memory
                assert queried.status_code == 200
                await evlink.wait_for("rate limits: Redis failed", since)

            await redis.start()
            for (evlink, _), since in zip(instances, mark, strict=True):
                await evlink.wait_for("events: reading Redis pub/sub", since)
                async with httpx.AsyncClient(base_url=evlink.base_url, timeout=TIMEOUT) as http:
                    ready = await http.get("/readyz")
                assert ready.json() == {"status": "ready", "database": "ok", "redis": "ok"}
                assert evlink.failures() == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_locked_sqlite_database_answers_503_within_the_timeout(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    await _truncate(settings.database_url)
    bounded = replace(settings, database_timeout=DB_TIMEOUT, cache_ttl=0.0)
    async with run_server(bounded) as server:
        user, _ = await server.user()
        vehicle = await server.vehicle(user, "plugged")
        spare = (await issue_key(user)).secret  # its first use writes last_used_at
        path = settings.database_url.removeprefix("sqlite://")
        other = sqlite3.connect(path, isolation_level=None)  # as a backup or the CLI would
        try:
            other.execute("BEGIN EXCLUSIVE")  # holds the write lock
            with caplog.at_level(logging.INFO, logger=OUTAGE_LOGGER):
                answer, took = await timed(status(server.http, spare, str(vehicle.id)))
                _assert_unavailable_rest(answer)
                assert took < DB_TIMEOUT + SLACK
                other.execute("ROLLBACK")

                again, took = await timed(status(server.http, spare, str(vehicle.id)))
            assert again.status_code == 200, again.text
            assert took < DB_TIMEOUT
        finally:
            other.close()
    told = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == OUTAGE_LOGGER]
    assert [level for level, _ in told] == ["WARNING", "INFO"]
    assert "SQLite: database is locked" in told[0][1]  # SQLite's own wait ran out first


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_write_in_tortoises_own_transaction_is_bounded_too(settings: Settings) -> None:
    # setTariff stores with update_or_create, which opens Tortoise's own transaction: it
    # answered INTERNAL_ERROR (the lock's OperationalError, unbounded) under a held lock.
    await _truncate(settings.database_url)
    bounded = replace(settings, database_timeout=DB_TIMEOUT, cache_ttl=0.0)
    mutation = 'mutation { setTariff(pricePerKwh: 0.3, currency: "EUR") { currency } }'
    async with run_server(bounded) as server:
        _, key = await server.user()
        assert (await graphql(server.http, key)).status_code == 200
        path = settings.database_url.removeprefix("sqlite://")
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")  # holds the write lock
            answer, took = await timed(graphql(server.http, key, mutation))
            _assert_unavailable_graphql(answer)
            assert took < DB_TIMEOUT + SLACK
            other.execute("ROLLBACK")
            again = await graphql(server.http, key, mutation)
        finally:
            other.close()
        assert again.status_code == 200, again.text
        assert again.json() == {"data": {"setTariff": {"currency": "EUR"}}}


@asynccontextmanager
async def _holding_the_car(database_url: str, vehicle_id: str) -> AsyncIterator[None]:
    """Another connection holds what a refresh of the car writes until the block ends:
    PostgreSQL, the car's row (the refresh's transaction waits on its first update);
    SQLite, the database's write lock (the transaction waits at its start)."""
    if database_url.startswith("sqlite://"):
        other = sqlite3.connect(database_url.removeprefix("sqlite://"), isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            yield
            other.execute("ROLLBACK")
        finally:
            other.close()
        return
    connection = await asyncpg.connect(database_url)
    try:
        async with connection.transaction():
            await connection.execute(
                "SELECT 1 FROM vehicles WHERE id = $1 FOR UPDATE", uuid.UUID(vehicle_id)
            )
            yield
    finally:
        await connection.close()


async def _sessions_consistent(vehicle_id: str) -> None:
    """Every session of the car counts exactly the samples stored for it."""
    for session in await ChargingSession.filter(vehicle_id=vehicle_id):
        assert session.sample_count == await ChargingSample.filter(session=session).count()


def _refreshing_settings(settings: Settings) -> Settings:
    """Every read refreshes the car (max age 0), within a read budget longer than the
    database's bound: the refresh's failure is the answer."""
    return replace(
        settings,
        database_timeout=DB_TIMEOUT,
        cache_ttl=0.0,
        status_max_age=0.0,
        provider_read_budget=DB_TIMEOUT + TIMEOUT,
    )


async def test_a_database_hung_inside_a_transaction_answers_503_within_the_timeout(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    await _truncate(settings.database_url)
    bounded = _refreshing_settings(settings)
    async with run_server(bounded) as server:
        user, key = await server.user()
        vehicle = await server.vehicle(user, "charging")
        vehicle_id = str(vehicle.id)
        assert (await status(server.http, key, vehicle_id)).status_code == 200
        await server.clock.advance(60)  # a new charging state: a session and its samples
        with caplog.at_level(logging.INFO, logger=OUTAGE_LOGGER):
            async with _holding_the_car(settings.database_url, vehicle_id):
                answer, took = await timed(status(server.http, key, vehicle_id))
                _assert_unavailable_rest(answer)
                assert took < DB_TIMEOUT + SLACK
            # Nothing of it stayed, nor any connection it held: the next ones are served.
            for _ in range(3):
                await server.clock.advance(60)
                again = await status(server.http, key, vehicle_id)
                assert again.status_code == 200, again.text
        await _sessions_consistent(vehicle_id)
    told = [r.levelname for r in caplog.records if r.name == OUTAGE_LOGGER]
    assert told == ["WARNING", "INFO"]


async def _a_statement_waits_for_a_lock(database_url: str) -> None:
    """Return once a session of this database waits for a lock (polled: PostgreSQL
    tells no one), within the test's TIMEOUT."""
    connection = await asyncpg.connect(database_url)
    try:
        async with asyncio.timeout(TIMEOUT):
            while not await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ):
                pass
    finally:
        await connection.close()


@postgres_only
async def test_a_transaction_cut_short_on_a_frozen_link_leaves_no_connection_behind(
    settings: Settings,
) -> None:
    """The link freezes while a refresh's transaction waits for the car's row: its
    connection is terminated, not pooled (asyncpg would wait for the frozen server to
    acknowledge a cancel, and the answer with it)."""
    await _truncate(settings.database_url)
    async with TcpProxy(*upstream(settings.database_url)).running() as proxy:
        bounded = replace(
            _refreshing_settings(settings),
            database_url=through(settings.database_url, proxy.port),
        )
        async with run_server(bounded) as server:
            user, key = await server.user()
            vehicle_id = str((await server.vehicle(user, "charging")).id)
            assert (await status(server.http, key, vehicle_id)).status_code == 200
            async with _holding_the_car(settings.database_url, vehicle_id):
                request = asyncio.create_task(timed(status(server.http, key, vehicle_id)))
                await _a_statement_waits_for_a_lock(settings.database_url)
                proxy.freeze()
                answer, took = await request
            _assert_unavailable_rest(answer)
            assert took < DB_TIMEOUT + SLACK
            proxy.thaw()
            for _ in range(2):
                again = await asyncio.gather(
                    *(status(server.http, key, vehicle_id) for _ in range(8))
                )
                assert [a.status_code for a in again] == [200] * 8


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_key_uses_a_locked_database_refused_are_written_by_a_later_batch(
    settings: Settings,
) -> None:
    """A batch of key uses that the database refuses is kept, and the batches go on."""
    await _truncate(settings.database_url)
    async with run_server(replace(settings, database_timeout=DB_TIMEOUT)) as server:
        uses = server.services.key_uses
        assert uses is not None
        user, _ = await server.user()
        vehicle = await server.vehicle(user, "plugged")
        spare = await issue_key(user)
        assert (await status(server.http, spare.secret, str(vehicle.id))).status_code == 200
        path = settings.database_url.removeprefix("sqlite://")
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")  # the next batch finds the database locked
            await asyncio.wait_for(uses.flushed(), KEY_USE_FLUSH_INTERVAL + TIMEOUT)
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert (await ApiKey.get(id=spare.record.id)).last_used_at is None
        await asyncio.wait_for(uses.flushed(), KEY_USE_FLUSH_INTERVAL + TIMEOUT)
        assert (await ApiKey.get(id=spare.record.id)).last_used_at is not None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_what_a_locked_database_refuses_at_shutdown_is_logged_and_the_rest_closes(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    await _truncate(settings.database_url)
    path = settings.database_url.removeprefix("sqlite://")
    other = sqlite3.connect(path, isolation_level=None)
    try:
        with caplog.at_level(logging.WARNING, logger="evlink.app"):
            async with run_server(replace(settings, database_timeout=DB_TIMEOUT)) as server:
                user, key = await server.user()
                vehicle = await server.vehicle(user, "plugged")
                assert (await status(server.http, key, str(vehicle.id))).status_code == 200
                other.execute("BEGIN EXCLUSIVE")  # held while the server shuts down
        other.execute("ROLLBACK")
    finally:
        other.close()
    told = [r.getMessage() for r in caplog.records if r.name == "evlink.app"]
    assert told == [
        "key uses not written at shutdown (DATABASE_UNAVAILABLE)",
        "command leases not released at shutdown (DATABASE_UNAVAILABLE); they lapse on their own",
    ]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@postgres_only
async def test_redis_connections_reset_under_a_served_instance_cost_no_request(
    database_url: str,
) -> None:
    """`evlink serve` runs on uvloop, which refuses to write on a connection reset under
    redis-py with a RuntimeError rather than an OSError: every pooled connection then
    failed its next request with a 500, and the event reader could die for good."""
    world = await account(database_url, keys=1)
    (key,) = world.keys
    async with (
        redis_server() as redis,
        TcpProxy("127.0.0.1", redis.port).running() as redis_link,
        EvlinkProcess(
            **_environment(database_url, EVLINK_REDIS_URL=f"redis://127.0.0.1:{redis_link.port}/0")
        ).running() as evlink,
        httpx.AsyncClient(base_url=evlink.base_url, timeout=TIMEOUT) as http,
    ):
        await evlink.wait_for("events: reading Redis pub/sub")
        for round_ in range(3):
            # Pooled connections for the rate limits and for publishing exist now.
            assert (await status(http, key, world.vehicle_id)).status_code == 200
            started = await http.post(
                f"/api/charging/{world.vehicle_id}",
                json={"action": "STOP" if round_ % 2 else "START"},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert started.status_code == 200, started.text
            mark = len(evlink.records)
            redis_link.reset()

            answers = [await status(http, key, world.vehicle_id) for _ in range(3)]
            ready = await http.get("/readyz")
            queried = await graphql(http, key)
            assert [a.status_code for a in answers] == [200, 200, 200], answers[0].text
            assert ready.json()["redis"] == "ok", ready.text
            assert queried.status_code == 200
            assert "errors" not in queried.json(), queried.text
            await evlink.wait_for("events: reading Redis pub/sub", mark)  # the reader is back
            assert evlink.failures(mark) == []
            # A reset connection is tried again, not taken for Redis gone (counts stay shared).
            assert evlink.count("rate limits: Redis failed", level="WARNING", since=mark) == 0
