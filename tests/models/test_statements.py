"""The hot reads' statements (evlink.models.statements) give what Tortoise's queries give."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from tortoise.exceptions import OperationalError

from evlink.models import ApiKey, ChargeState, User, Vehicle
from evlink.models.backends import (
    TRIPS_AT_ONCE,
    BoundedClient,
    BoundedPostgresClient,
    ManyAtOnce,
    fetch_rows,
    fetch_together,
    transaction,
)
from evlink.models.users import _active_key, active_key_with_user
from evlink.models.vehicles import (
    StoredVehicle,
    VehicleRow,
    _key_with_vehicle,
    _with_state,
    active_key_with_vehicle,
    charge_state_data,
    vehicle_with_charge_state,
)
from evlink.resolvers.auth import hash_key
from tests.conftest import Server


def _fields(model: User | Vehicle | ChargeState | StoredVehicle) -> dict[str, object]:
    names = Vehicle._meta.fields_db_projection if isinstance(model, StoredVehicle) else None
    return {name: getattr(model, name) for name in names or model._meta.fields_db_projection}


async def test_the_hot_reads_give_what_tortoise_s_own_queries_give(server: Server) -> None:
    # Every timestamp set, one with microseconds and one without: SQLite stores them as
    # text, which the statements parse their own way.
    when = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    user, key = await server.user()
    vehicle = await server.vehicle(user, "charging")
    headers = {"Authorization": f"Bearer {key}"}
    assert (await server.http.get(f"/api/status/{vehicle.id}", headers=headers)).is_success
    await Vehicle.filter(id=vehicle.id).update(
        last_seen=when,
        refreshed_at=when.replace(microsecond=0),
        removed_at=when - timedelta(days=1),
        location={"latitude": 59.9, "longitude": 10.7, "lastUpdated": None},
    )
    await ChargeState.filter(vehicle_id=vehicle.id).update(last_updated=when, battery_level=42)
    await ApiKey.filter(hash=hash_key(key)).update(last_used_at=when)

    found = await vehicle_with_charge_state(vehicle.id)
    active = await active_key_with_user(hash_key(key))

    assert found is not None
    assert found[1] is not None
    assert _fields(found[0]) == _fields(await Vehicle.get(id=vehicle.id))
    assert found[1] == charge_state_data(await ChargeState.get(vehicle_id=vehicle.id))
    assert found[0].last_seen == when
    assert found[1].last_updated == when
    assert active is not None
    assert _fields(active.user) == _fields(await User.get(id=user.id))
    stored_key = await ApiKey.get(hash=hash_key(key))
    assert (active.id, active.last_used_at) == (stored_key.id, when)


async def test_the_key_and_the_vehicle_in_one_statement_are_what_each_read_gives(
    server: Server,
) -> None:
    user, key = await server.user()
    other, _ = await server.user()
    vehicle = await server.vehicle(user, "charging")
    theirs = await server.vehicle(other)  # never read: no charge state stored
    gone = await server.vehicle(user)
    headers = {"Authorization": f"Bearer {key}"}
    assert (await server.http.get(f"/api/status/{vehicle.id}", headers=headers)).is_success
    await Vehicle.filter(id=gone.id).update(deleted_at=datetime.now(UTC))
    digest = hash_key(key)
    alone = await active_key_with_user(digest)
    assert alone is not None

    found = await active_key_with_vehicle(digest, vehicle.id)
    assert found is not None
    active, row = found
    assert (active.id, active.last_used_at) == (alone.id, alone.last_used_at)
    assert _fields(active.user) == _fields(alone.user)
    models = row.models()
    read = await vehicle_with_charge_state(vehicle.id)
    assert models is not None
    assert read is not None
    assert models[1] is not None
    assert _fields(models[0]) == _fields(read[0])
    assert charge_state_data(models[1]) == read[1]

    # Another user's vehicle is read as it is (the caller judges it), one without a
    # state has none, a deleted or unknown one is none.
    for vehicle_id, expected in (
        (theirs.id, await vehicle_with_charge_state(theirs.id)),
        (gone.id, None),
        (uuid.uuid4(), None),
    ):
        found = await active_key_with_vehicle(digest, vehicle_id)
        assert found is not None
        models = found[1].models()
        if expected is None:
            assert models is None
        else:
            assert models is not None
            assert models[1] is None
            assert expected[1] is None
            assert _fields(models[0]) == _fields(expected[0])
        assert (found[1].stored() is None) is (expected is None)

    # No active key: nothing, whatever the vehicle.
    await ApiKey.filter(hash=digest).update(revoked_at=datetime.now(UTC))
    assert await active_key_with_vehicle(digest, vehicle.id) is None
    assert await active_key_with_vehicle(hash_key("evl_unknown"), vehicle.id) is None


async def test_fetch_rows_gives_the_rows_execute_query_gives(server: Server) -> None:
    # fetch_rows is the hot reads' lean way; execute_query is its fallback (a
    # transaction, aiosqlite without its private _execute): the same rows, by position.
    user, key = await server.user()
    vehicle = await server.vehicle(user, "charging")
    headers = {"Authorization": f"Bearer {key}"}
    assert (await server.http.get(f"/api/status/{vehicle.id}", headers=headers)).is_success
    db = Vehicle._meta.db
    assert isinstance(db, BoundedClient)  # the server's own client, the lean way
    dialect = db.capabilities.dialect
    vehicle_id = Vehicle._meta.fields_map["id"].to_db_value(vehicle.id, Vehicle)
    digest = hash_key(key)
    for sql, values in (
        (_key_with_vehicle(dialect).read.sql, [digest, vehicle_id]),
        (_active_key(dialect), [digest]),
        (_with_state(dialect).sql, [vehicle_id]),
        (
            _with_state(dialect).sql,
            [Vehicle._meta.fields_map["id"].to_db_value(uuid.uuid4(), Vehicle)],
        ),
    ):
        _, expected = await db.execute_query(sql, values)
        rows = await fetch_rows(db, sql, values)
        assert [tuple(row) for row in rows] == [tuple(row) for row in expected]
    assert len(await fetch_rows(db, _key_with_vehicle(dialect).read.sql, [digest, vehicle_id])) == 1


async def test_fetch_rows_tells_a_statement_s_error_as_tortoise_does(server: Server) -> None:
    db = Vehicle._meta.db
    with pytest.raises(OperationalError):
        await db.execute_query("SELECT * FROM no_such_table", [])
    with pytest.raises(OperationalError):
        await fetch_rows(db, "SELECT * FROM no_such_table", [])
    user, _ = await server.user()
    vehicle = await server.vehicle(user)
    assert await vehicle_with_charge_state(vehicle.id) is not None  # and reads on


async def test_the_hot_reads_inside_a_transaction_read_its_own_writes(server: Server) -> None:
    # Inside a transaction a read is the transaction's (on SQLite the transaction holds
    # the one connection's lock, which a read of its own would wait for until it ran out).
    user, key = await server.user()
    vehicle = await server.vehicle(user)
    async with transaction():
        await Vehicle.filter(id=vehicle.id).update(name="inside")
        found = await vehicle_with_charge_state(vehicle.id)
        assert found is not None
        assert found[0].name == "inside"
        keyed = await active_key_with_vehicle(hash_key(key), vehicle.id)
        assert keyed is not None
        models = keyed[1].models()
        assert models is not None
        assert models[0].name == "inside"
        await User.filter(id=user.id).update(enode_user_id="inside")
        active = await active_key_with_user(hash_key(key))
        assert active is not None
        assert active.user.enode_user_id == "inside"


class _RolledBack(Exception):
    pass


async def test_a_hot_read_never_runs_inside_another_task_s_open_transaction(
    server: Server,
) -> None:
    # SQLite's one connection is shared: a read of another task that ran on it while a
    # transaction is open would see (and be part of) what the transaction has not
    # committed. It waits for the transaction instead, and sees what is committed.
    user, _ = await server.user()
    vehicle = await server.vehicle(user)
    outside = contextvars.copy_context()  # another task's: not in the transaction
    reads: list[asyncio.Task[object]] = []

    async def write_then_roll_back() -> None:
        async with transaction():
            await Vehicle.filter(id=vehicle.id).update(name="uncommitted")
            loop = asyncio.get_running_loop()
            reads.append(loop.create_task(vehicle_with_charge_state(vehicle.id), context=outside))
            # The read's task runs while this statement is in aiosqlite's thread.
            await Vehicle.filter(id=vehicle.id).update(name="still uncommitted")
            raise _RolledBack

    with pytest.raises(_RolledBack):
        await write_then_roll_back()
    (read,) = reads
    found = await read
    assert isinstance(found, tuple)
    assert found[0].name == vehicle.name


async def test_concurrent_hot_reads_each_get_their_own_answer(server: Server) -> None:
    # On SQLite the reads asked while a trip to aiosqlite's thread is under way go
    # together in the next trip: each still gets its own rows, or its own error.
    user, key = await server.user()
    cars = [await server.vehicle(user) for _ in range(3)]
    for car in cars:
        await Vehicle.filter(id=car.id).update(name=f"car {car.id}")
    headers = {"Authorization": f"Bearer {key}"}
    answers = await asyncio.gather(
        *(server.http.get(f"/api/status/{car.id}", headers=headers) for car in cars * 4)
    )
    names = [answer.json()["vehicleName"] for answer in answers]
    assert names == [f"car {car.id}" for car in cars * 4]

    db = Vehicle._meta.db
    sql = _with_state(db.capabilities.dialect).sql
    field = Vehicle._meta.fields_map["id"]
    reads = [fetch_rows(db, sql, [field.to_db_value(car.id, Vehicle)]) for car in cars]
    reads.insert(1, fetch_rows(db, "SELECT * FROM no_such_table", []))
    found = await asyncio.gather(*reads, return_exceptions=True)
    assert isinstance(found[1], OperationalError)
    for car, rows in zip(cars, found[:1] + found[2:], strict=True):
        assert not isinstance(rows, BaseException)
        (row,) = rows
        assert row[_with_state(db.capabilities.dialect).vehicle_columns.index("name")] == (
            f"car {car.id}"
        )


def _key_reads(records: list[logging.LogRecord]) -> list[str]:
    """The statements of active_key_with_vehicle sent, as Tortoise's client logs them."""
    table = ApiKey._meta.db_table
    return [
        message
        for message in (r.getMessage() for r in records if r.name == "tortoise.db_client")
        if f'"{table}" k' in message
    ]


async def test_concurrent_key_and_vehicle_reads_go_together_on_postgresql(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    # On PostgreSQL the reads of a key with its vehicle asked in one turn of the loop go
    # in one statement (unnest of the pairs, WITH ORDINALITY): one round trip for all.
    # Each gets what it would get alone: its own key and car, nothing for an unknown or
    # revoked key, no vehicle for a deleted or unknown id, twice the same pair twice.
    db = ApiKey._meta.db
    user, key = await server.user()
    other, other_key = await server.user()
    _, revoked_key = await server.user()
    await ApiKey.filter(hash=hash_key(revoked_key)).update(revoked_at=datetime.now(UTC))
    mine = [await server.vehicle(user) for _ in range(3)]
    theirs = await server.vehicle(other)
    gone = await server.vehicle(user)
    await Vehicle.filter(id=gone.id).update(deleted_at=datetime.now(UTC))
    for car in [*mine, theirs]:
        await Vehicle.filter(id=car.id).update(name=f"car {car.id}")
    asked = [(key, car.id) for car in mine] + [
        (other_key, theirs.id),
        (other_key, mine[0].id),  # another's car: the row says whose it is
        ("evl_unknown", mine[1].id),
        (revoked_key, theirs.id),
        (key, gone.id),
        (key, uuid.uuid4()),
        (key, mine[2].id),
    ]

    def seen(found: tuple[object, VehicleRow] | None) -> tuple[object, ...] | None:
        if found is None:
            return None
        active, row = found
        stored = row.stored()
        vehicle = None if stored is None else (stored[0].id, stored[0].name, stored[0].user_id)
        return (active.id, active.user.id, vehicle)  # type: ignore[attr-defined]

    alone = [seen(await active_key_with_vehicle(hash_key(k), v)) for k, v in asked]
    with caplog.at_level(logging.DEBUG, logger="tortoise.db_client"):
        together = await asyncio.gather(
            *(active_key_with_vehicle(hash_key(k), v) for k, v in asked)
        )
    assert [seen(found) for found in together] == alone
    assert alone[0] is not None
    assert alone[0][2] == (mine[0].id, f"car {mine[0].id}", user.id)
    assert alone[4] is not None
    assert alone[4][2] == (mine[0].id, f"car {mine[0].id}", user.id)  # whose it is: user's
    assert alone[5] is None  # an unknown key
    assert alone[6] is None  # a revoked key
    assert alone[7] is not None
    assert alone[7][2] is None  # a deleted car
    statements = _key_reads(caplog.records)
    if db.capabilities.dialect == "postgres":
        # All eleven asked in one turn of the loop: one statement.
        assert len(statements) == 1
        assert "unnest" in statements[0]
    else:
        assert len(statements) == len(asked)  # SQLite's go together in aiosqlite's thread


async def test_a_caller_gone_from_a_read_together_leaves_the_others_their_answers(
    server: Server,
) -> None:
    user, key = await server.user()
    cars = [await server.vehicle(user) for _ in range(6)]
    reads = [asyncio.ensure_future(active_key_with_vehicle(hash_key(key), car.id)) for car in cars]
    await asyncio.sleep(0)  # every read asked, their trip not yet started
    gone = 2
    reads[gone].cancel()
    done = await asyncio.gather(*reads, return_exceptions=True)
    assert isinstance(done[gone], asyncio.CancelledError)
    for car, found in zip(cars, done, strict=True):
        if found is done[gone]:
            continue
        assert isinstance(found, tuple)
        stored = found[1].stored()
        assert stored is not None
        assert stored[0].id == car.id


async def test_a_read_together_that_fails_fails_each_of_its_callers(server: Server) -> None:
    db = ApiKey._meta.db
    if db.capabilities.dialect != "postgres":
        pytest.skip("only PostgreSQL's reads go together in one statement")
    # Asked in one turn, the four go together, in a statement that fails: each of them
    # gets the error, as Tortoise tells it. A read alone goes as ``sql`` and is answered.
    read = ManyAtOnce("SELECT $1::int AS n", "SELECT n FROM no_such_table WHERE n = ANY($1::int[])")
    found = await asyncio.gather(
        *(fetch_together(db, read, [n]) for n in range(4)), return_exceptions=True
    )
    assert all(isinstance(error, OperationalError) for error in found), found
    assert [tuple(row) for row in await fetch_together(db, read, [7])] == [(7,)]


async def test_a_slow_database_delays_no_read_that_would_not_wait_for_a_connection(
    server: Server,
) -> None:
    db = ApiKey._meta.db
    if db.capabilities.dialect != "postgres":
        pytest.skip("only PostgreSQL's reads go together in one statement")
    # Each statement takes 0.6 s of a 1 s bound (a slow but working database). A read
    # asked while another's statement runs, and fewer than TRIPS_AT_ONCE are under way,
    # goes at once in a trip of its own, within its own bound, as it did with a pooled
    # connection of its own: it does not wait for the other to end first (0.5 + 0.6 s
    # would be past the bound: 503).
    assert isinstance(db, BoundedPostgresClient)
    assert TRIPS_AT_ONCE > 1
    read = ManyAtOnce(
        "SELECT $1::int AS n, pg_sleep(0.6)",
        "SELECT n, pg_sleep(0.6), o FROM unnest($1::int[]) WITH ORDINALITY AS q(n, o)",
    )

    async def later(n: int) -> Sequence[Any]:
        await asyncio.sleep(0.1)  # the first read's statement is under way
        return await fetch_together(db, read, [n])

    bound, db.timeout = db.timeout, 1.0
    try:
        found = await asyncio.gather(fetch_together(db, read, [0]), later(1))
    finally:
        db.timeout = bound
    assert [[row[0] for row in rows] for rows in found] == [[0], [1]]


async def test_reads_past_the_trips_at_once_go_when_a_trip_ends(server: Server) -> None:
    db = ApiKey._meta.db
    if db.capabilities.dialect != "postgres":
        pytest.skip("only PostgreSQL's reads go together in one statement")
    # TRIPS_AT_ONCE reads asked in turns of their own, each in a trip of its own (0.3 s);
    # the two asked while all of those are under way wait, and go together when the
    # first trip ends.
    assert isinstance(db, BoundedPostgresClient)
    read = ManyAtOnce(
        "SELECT $1::int AS n, pg_sleep(0.3)",
        "SELECT n, pg_sleep(0.3), o FROM unnest($1::int[]) WITH ORDINALITY AS q(n, o)",
    )

    async def asked(n: int) -> Sequence[Any]:
        await asyncio.sleep(0.02 * n)
        return await fetch_together(db, read, [n])

    bound, db.timeout = db.timeout, 2.0
    try:
        found = await asyncio.gather(*(asked(n) for n in range(TRIPS_AT_ONCE + 2)))
    finally:
        db.timeout = bound
    assert [[row[0] for row in rows] for rows in found] == [[n] for n in range(TRIPS_AT_ONCE + 2)]


async def test_the_reads_together_need_no_type_lookup_on_a_new_connection(
    server: Server,
) -> None:
    # asyncpg looks a type up (three more round trips) the first time a connection meets
    # one it has no codec for built in, uuid[] among them; with a slow database that was
    # enough for the first read together on each new connection to run out of its
    # bound (the attacker's trial). The arrays are text[]: one statement.
    if ApiKey._meta.db.capabilities.dialect != "postgres":
        pytest.skip("only PostgreSQL's reads go together in one statement")
    user, key = await server.user()
    car = await server.vehicle(user)
    url = server.settings.database_url.replace("postgres://", "postgresql://", 1)
    connection = await asyncpg.connect(url)
    sent: list[str] = []
    connection.add_query_logger(lambda record: sent.append(record.query))
    try:
        many = _key_with_vehicle("postgres").read.many
        assert many is not None
        rows = await connection.fetch(many, [hash_key(key)] * 2, [str(car.id), str(uuid.uuid4())])
    finally:
        await connection.close()
    assert sent == [many]
    assert [row[-1] for row in rows] == [1, 2]
