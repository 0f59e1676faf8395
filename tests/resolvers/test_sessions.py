"""Charging sessions through a real server: opened, grown and closed by recorded states,
read over GraphQL, REST and CSV, priced by the user's tariff, pushed to subscribers."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from tortoise.exceptions import IntegrityError

from evlink.domain import ChargeStateData, VehicleData, format_timestamp
from evlink.events import charging_session_topic
from evlink.models import ChargeState, ChargingCommand, User, Vehicle
from evlink.models.sessions import ChargingSample, ChargingSession
from evlink.providers.simulator import ManualClock, Simulator
from evlink.resolvers import sessions, vehicles
from tests.conftest import (
    PROTOCOLS,
    TIMEOUT,
    Server,
    _truncate,
    next_result,
    run_server,
    subscription,
)

T0 = datetime(2025, 5, 20, 16, 0, tzinfo=UTC)  # the ManualClock's start

SESSION_FIELDS = """
  id active startedAt endedAt endReason startedBy commandId batteryStart batteryEnd
  energyKwh energyMethod energyFromPower energyFromBattery sampleCount peakPower
  averagePower durationSeconds cost currency tariff { pricePerKwh currency }
"""


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _command(server: Server, key: str, vehicle: Vehicle, action: str) -> None:
    response = await server.http.post(
        f"/api/charging/{vehicle.id}", json={"action": action}, headers=_bearer(key)
    )
    assert response.status_code == 200, response.text


async def _tariff(server: Server, key: str, **arguments: Any) -> dict[str, Any]:
    body = await server.graphql(
        """mutation($price: Float!, $currency: String!, $periods: [TariffPeriodInput!],
                    $zone: String) {
             setTariff(pricePerKwh: $price, currency: $currency, periods: $periods,
                       timeZone: $zone) {
               pricePerKwh currency timeZone periods { start end price } } }
        """,
        arguments,
        key=key,
    )
    return body


async def _charge_an_hour(server: Server, key: str, vehicle: Vehicle) -> None:
    """START through REST, 60 simulated minutes in steps of one, STOP."""
    await _command(server, key, vehicle, "START")
    await server.clock.advance(1)  # the action's delay: the car charges
    for _ in range(60):
        await server.clock.advance(60)
    await _command(server, key, vehicle, "STOP")
    await server.clock.advance(1)


async def _graphql_sessions(server: Server, key: str, vehicle: Vehicle) -> list[dict[str, Any]]:
    body = await server.graphql(
        f"""query($id: ID!) {{ vehicle(id: $id) {{
              chargingSessions {{ {SESSION_FIELDS} }}
              currentChargingSession {{ id }} }} }}""",
        {"id": str(vehicle.id)},
        key=key,
    )
    assert "errors" not in body, body
    sessions: list[dict[str, Any]] = body["data"]["vehicle"]["chargingSessions"]
    return sessions


async def test_start_some_minutes_stop_is_one_session_the_same_everywhere(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(
        user, "plugged", battery_level=30.0, charge_rate=11.0, battery_capacity=75.0
    )
    await _tariff(server, key, price=0.30, currency="eur")
    await _charge_an_hour(server, key, vehicle)

    (session,) = await _graphql_sessions(server, key, vehicle)
    command = await ChargingCommand.filter(vehicle_id=vehicle.id, action="START").first()
    assert command is not None
    assert session["active"] is False
    assert session["endReason"] == "STOPPED"
    assert session["startedBy"] == "EVLINK"
    assert session["commandId"] == str(command.id)
    assert session["startedAt"] == "2025-05-20T16:00:01.000Z"
    assert session["batteryStart"] == 30
    assert session["batteryEnd"] == 45  # 11 kWh into 75 kWh: 14.7 %
    assert session["energyMethod"] == "POWER"
    # The rate over the hour (the last trapezoid adds half of a second's charge).
    assert session["energyKwh"] == pytest.approx(11.0, abs=0.01)
    assert session["energyFromBattery"] == pytest.approx(15 / 100 * 75)
    assert session["energyFromBattery"] == pytest.approx(session["energyKwh"], rel=0.03)
    assert session["cost"] == pytest.approx(session["energyKwh"] * 0.30, abs=1e-4)
    assert session["currency"] == "EUR"
    assert session["tariff"] == {"pricePerKwh": 0.30, "currency": "EUR"}
    assert session["peakPower"] == 11.0
    assert session["durationSeconds"] == pytest.approx(3601)
    assert session["averagePower"] == pytest.approx(11.0, rel=0.01)
    assert session["sampleCount"] == 62  # the start, 60 steps, the stop

    rest = await server.http.get(f"/api/ha/sessions/{vehicle.id}", headers=_bearer(key))
    assert rest.status_code == 200
    body = rest.json()
    (listed,) = body["sessions"]
    for name in ("energyKwh", "energyFromBattery", "cost", "batteryEnd", "endReason"):
        assert listed[name] == session[name]
    assert body["total"] == {
        "count": 1,
        "energyKwh": session["energyKwh"],
        "cost": session["cost"],
        "currency": "EUR",
        "durationSeconds": session["durationSeconds"],
    }
    current = await server.http.get(f"/api/ha/sessions/{vehicle.id}/current", headers=_bearer(key))
    assert current.json() == {"active": False}

    for response in (
        await server.http.get(f"/api/ha/sessions/{vehicle.id}?format=csv", headers=_bearer(key)),
        await server.http.get(
            f"/api/ha/sessions/{vehicle.id}", headers={**_bearer(key), "Accept": "text/csv"}
        ),
    ):
        assert response.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert len(rows) == 1
        assert float(rows[0]["energyKwh"]) == session["energyKwh"]
        assert float(rows[0]["cost"]) == session["cost"]
        assert rows[0]["startedAt"] == session["startedAt"]
        assert rows[0]["endedAt"] == session["endedAt"]
        assert rows[0]["active"] == "false"


async def test_a_session_is_live_while_it_runs(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(
        user, "plugged", battery_level=30.0, charge_rate=11.0, battery_capacity=75.0
    )
    await _command(server, key, vehicle, "START")
    await server.clock.advance(1)
    for _ in range(10):
        await server.clock.advance(60)
    current = await server.http.get(f"/api/ha/sessions/{vehicle.id}/current", headers=_bearer(key))
    body = current.json()
    assert body["active"] is True
    assert body["endedAt"] is None
    assert body["energyKwh"] == pytest.approx(11.0 / 6, abs=0.01)
    assert body["cost"] is None  # no tariff
    (session,) = await _graphql_sessions(server, key, vehicle)
    assert session["active"] is True
    assert session["energyKwh"] == body["energyKwh"]


async def test_time_of_use_prices_each_interval_at_the_price_in_force(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(
        user, "plugged", battery_level=30.0, charge_rate=11.0, battery_capacity=75.0
    )
    # 18:30-19:00 in Oslo (UTC+2 in May) is 16:30-17:00 UTC: the second half hour.
    answer = await _tariff(
        server,
        key,
        price=0.30,
        currency="NOK",
        periods=[{"start": "18:30", "end": "19:00", "price": 0.10}],
        zone="Europe/Oslo",
    )
    assert "errors" not in answer, answer
    await _charge_an_hour(server, key, vehicle)
    (session,) = await _graphql_sessions(server, key, vehicle)
    # 30 minutes at 0.30 and 30 at 0.10, each interval priced at its start (a minute wide).
    assert session["cost"] == pytest.approx(5.5 * 0.30 + 5.5 * 0.10, abs=0.01)
    # A later tariff does not rewrite it.
    await _tariff(server, key, price=1.0, currency="NOK")
    (again,) = await _graphql_sessions(server, key, vehicle)
    assert again["cost"] == session["cost"]


async def test_a_car_that_starts_by_itself_and_reaches_its_limit(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(
        user,
        "plugged",
        battery_level=78.0,
        charge_limit=82,
        charge_rate=11.0,
        battery_capacity=75.0,
    )
    assert vehicle.provider_vehicle_id is not None
    server.simulator.update_vehicle(vehicle.provider_vehicle_id, is_charging=True)
    await server.clock.advance(0)  # pushed at once, as the car would report it
    for _ in range(40):
        await server.clock.advance(60)
    (session,) = await _graphql_sessions(server, key, vehicle)
    assert session["startedBy"] == "OTHER"
    assert session["commandId"] is None
    assert session["endReason"] == "COMPLETE"
    assert session["batteryEnd"] == 82
    # Above 80 % the power tapers: the peak is the full rate, the average below it.
    assert session["peakPower"] == 11.0
    rates = [
        s.charge_rate
        for s in await ChargingSample.filter(session_id=session["id"])
        if s.charge_rate is not None
    ]
    assert min(rates) < 11.0 * (1 - 0.7 * 1 / 20)  # past 81 %: tapered by 3.5 % or more
    assert session["energyFromBattery"] == pytest.approx(session["energyKwh"], rel=0.05)


async def test_unplugging_ends_a_session_unplugged(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "charging", battery_level=40.0)
    await _push(server, vehicle, 0, charging=True)
    await _push(server, vehicle, 5, charging=False, plugged=False)
    (session,) = await _graphql_sessions(server, key, vehicle)
    assert session["endReason"] == "UNPLUGGED"


# -- the rules, with states pushed as a provider would -------------------------------------


async def _push(
    server: Server,
    vehicle: Vehicle,
    minute: float,
    *,
    charging: bool,
    plugged: bool = True,
    rate: float | None = 10.0,
    battery: int = 50,
) -> None:
    """A provider's report of ``vehicle`` at T0 + ``minute``, recorded as a webhook is."""
    assert vehicle.provider_vehicle_id is not None
    at = T0 + timedelta(minutes=minute)
    state = ChargeStateData(
        power_delivery_state="PLUGGED_IN:CHARGING" if charging else "PLUGGED_IN:STOPPED",
        battery_level=battery,
        is_plugged_in=plugged,
        is_charging=charging,
        battery_capacity=60.0,
        charge_limit=90,
        charge_rate=rate if charging else None,
        last_updated=at,
    )
    data = VehicleData(id=vehicle.provider_vehicle_id, last_seen=at, charge_state=state)
    await vehicles.ingest_vehicle_update(server.services, data)


async def _sessions(vehicle: Vehicle) -> list[ChargingSession]:
    return await ChargingSession.filter(vehicle_id=vehicle.id).order_by("started_at")


async def _car(server: Server) -> tuple[User, str, Vehicle]:
    user, key = await server.user()
    return user, key, await server.vehicle(user, "plugged")


async def test_a_state_delivered_twice_or_late_counts_once(server: Server) -> None:
    _, _, vehicle = await _car(server)
    await _push(server, vehicle, 0, charging=True)
    await _push(server, vehicle, 10, charging=True, battery=52)
    before = (await _sessions(vehicle))[0]
    await _push(server, vehicle, 10, charging=True, battery=52)  # the same state again
    await _push(server, vehicle, 5, charging=True, battery=51)  # late: older than counted
    (session,) = await _sessions(vehicle)
    assert session.sample_count == before.sample_count == 2
    assert session.energy_from_power == pytest.approx(10.0 / 6)  # 10 kW for 10 minutes
    assert session.battery_end == 52
    assert await ChargingSample.filter(session_id=session.id).count() == 2


async def test_every_way_through_the_sessions_stores_the_charge_state(server: Server) -> None:
    """The charge state's write is handed to the sessions' ingestion, to share the
    session's database call: whatever the sessions do with the state (nothing, open,
    grow, drop as counted, read first, end stale, close), the state is stored."""
    _, _, vehicle = await _car(server)

    async def stored() -> int | None:
        return (await ChargeState.get(vehicle_id=vehicle.id)).battery_level

    steps: list[tuple[float, bool, int]] = [
        (1, False, 41),  # neither this state nor the one before charges: no session
        (2, True, 42),  # opens one
        (3, True, 43),  # grows the remembered one
        (3, True, 44),  # the same time again: not counted twice
        (4, True, 45),  # read first: this process remembers nothing (cleared below)
        (4 + 31, True, 46),  # past the stale limit: ended UNREACHABLE, a new one opened
        (36, False, 47),  # closes it
    ]
    await _push(server, vehicle, 0, charging=False, battery=40)
    for minute, charging, battery in steps:
        if minute == 4:
            server.services.open_sessions.clear()  # as after a restart
        await _push(server, vehicle, minute, charging=charging, battery=battery)
        assert await stored() == battery, (minute, charging, battery)
    first, second = await _sessions(vehicle)
    assert (first.sample_count, first.end_reason) == (3, "UNREACHABLE")
    assert (second.sample_count, second.end_reason) == (2, "STOPPED")


async def _end_elsewhere(database_url: str, session_id: UUID) -> None:
    """Another writer (another instance) ends the session, behind this one's back."""
    sql = "UPDATE charging_sessions SET ended_at = last_sample_at, end_reason = 'STOPPED'"
    if database_url.startswith("sqlite://"):
        path = database_url.removeprefix("sqlite://")
        with contextlib.closing(sqlite3.connect(path)) as other, other:
            other.execute(f"{sql} WHERE id = ?", (str(session_id),))
        return
    other = await asyncpg.connect(database_url)
    try:
        await other.execute(f"{sql} WHERE id = $1", session_id)
    finally:
        await other.close()


async def test_a_state_is_stored_when_its_remembered_session_was_moved_elsewhere(
    server: Server,
) -> None:
    """The charge state's write goes in the database call of the remembered session's
    compare-and-set; when that fails (another writer ended the session), the state is
    stored all the same, and counted once, in a new session."""
    _, _, vehicle = await _car(server)
    await _push(server, vehicle, 0, charging=True)
    await _push(server, vehicle, 10, charging=True, battery=52)
    assert vehicle.id in server.services.open_sessions  # its next state goes in one call
    (first,) = await _sessions(vehicle)
    await _end_elsewhere(server.settings.database_url, first.id)
    await _push(server, vehicle, 20, charging=True, battery=54)
    assert (await ChargeState.get(vehicle_id=vehicle.id)).battery_level == 54
    ended, opened = await _sessions(vehicle)
    assert (ended.id, ended.sample_count, ended.end_reason) == (first.id, 2, "STOPPED")
    assert (opened.sample_count, opened.battery_start, opened.ended_at) == (1, 54, None)
    await _push(server, vehicle, 30, charging=True, battery=56)  # remembered again: one call
    assert (await ChargeState.get(vehicle_id=vehicle.id)).battery_level == 56
    (_, grown) = await _sessions(vehicle)
    assert grown.sample_count == 2


@contextlib.asynccontextmanager
async def _samples_refused(database_url: str) -> AsyncIterator[None]:
    """The database refuses every new sample (a trigger) until the block ends."""
    if database_url.startswith("sqlite://"):
        with sqlite3.connect(database_url.removeprefix("sqlite://")) as other:
            other.execute(
                "CREATE TRIGGER refuse_samples BEFORE INSERT ON charging_samples "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        try:
            yield
        finally:
            with sqlite3.connect(database_url.removeprefix("sqlite://")) as other:
                other.execute("DROP TRIGGER refuse_samples")
        return
    other = await asyncpg.connect(database_url)
    try:
        await other.execute(
            "CREATE FUNCTION refuse_samples() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'refused by the test' USING ERRCODE = 'check_violation'; END $$; "
            "CREATE TRIGGER refuse_samples BEFORE INSERT ON charging_samples "
            "FOR EACH ROW EXECUTE FUNCTION refuse_samples()"
        )
        try:
            yield
        finally:
            await other.execute(
                "DROP TRIGGER refuse_samples ON charging_samples; DROP FUNCTION refuse_samples()"
            )
    finally:
        await other.close()


async def test_a_state_whose_sample_is_refused_leaves_nothing_of_it_written(
    server: Server,
) -> None:
    """The car, its charge state, the session and its sample are written in one
    transaction: the last refused, none of them is."""
    _, _, vehicle = await _car(server)
    await _push(server, vehicle, 0, charging=True)
    await _push(server, vehicle, 10, charging=True, battery=52)
    async with _samples_refused(server.settings.database_url):
        with pytest.raises(IntegrityError):
            await _push(server, vehicle, 20, charging=True, battery=54)
    (session,) = await _sessions(vehicle)
    assert session.sample_count == 2
    assert await ChargingSample.filter(session_id=session.id).count() == 2
    assert (await ChargeState.get(vehicle_id=vehicle.id)).battery_level == 52
    await vehicle.refresh_from_db()
    assert vehicle.last_seen == T0 + timedelta(minutes=10)
    await _push(server, vehicle, 20, charging=True, battery=54)  # delivered again: taken
    (session,) = await _sessions(vehicle)
    assert session.sample_count == 3


@contextlib.asynccontextmanager
async def _commits_refused(database_url: str) -> AsyncIterator[None]:
    """Every transaction that stores a sample fails as it commits (a constraint checked
    at commit: a deferred foreign key on SQLite, a deferred trigger on PostgreSQL), so
    it is rolled back after all its statements succeeded, until the block ends."""
    if database_url.startswith("sqlite://"):
        path = database_url.removeprefix("sqlite://")
        with contextlib.closing(sqlite3.connect(path)) as other, other:
            other.executescript(
                "CREATE TABLE refused_parent (id INTEGER PRIMARY KEY);"
                "CREATE TABLE refused_child (parent INTEGER REFERENCES refused_parent (id) "
                "DEFERRABLE INITIALLY DEFERRED);"
                "CREATE TRIGGER refuse_at_commit AFTER INSERT ON charging_samples "
                "BEGIN INSERT INTO refused_child VALUES (1); END;"
            )
        try:
            yield
        finally:
            with contextlib.closing(sqlite3.connect(path)) as other, other:
                other.executescript(
                    "DROP TRIGGER refuse_at_commit; DROP TABLE refused_child; "
                    "DROP TABLE refused_parent;"
                )
        return
    other = await asyncpg.connect(database_url)
    try:
        await other.execute(
            "CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'refused by the test' USING ERRCODE = 'check_violation'; END $$; "
            "CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON charging_samples "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit()"
        )
        try:
            yield
        finally:
            await other.execute(
                "DROP TRIGGER refuse_at_commit ON charging_samples; "
                "DROP FUNCTION refuse_at_commit()"
            )
    finally:
        await other.close()


def _committed_sample_count(database_url: str) -> Callable[[str], int | None]:
    """A reader of a session's sample count as another connection finds it committed,
    read at once while evlink's event loop waits: what a subscriber that reads the
    database on an event would find then."""
    if database_url.startswith("sqlite://"):
        path = database_url.removeprefix("sqlite://")

        def read_sqlite(session_id: str) -> int | None:
            with contextlib.closing(sqlite3.connect(path)) as other:
                row = other.execute(
                    "SELECT sample_count FROM charging_sessions WHERE id = ?", (session_id,)
                ).fetchone()
            return None if row is None else int(row[0])

        return read_sqlite

    async def fetch(session_id: str) -> int | None:
        other = await asyncpg.connect(database_url)
        try:
            count = await other.fetchval(
                "SELECT sample_count FROM charging_sessions WHERE id = $1", UUID(session_id)
            )
        finally:
            await other.close()
        return None if count is None else int(count)

    def read_postgres(session_id: str) -> int | None:
        with ThreadPoolExecutor(1) as reader:  # its own event loop, in its own thread
            found: int | None = reader.submit(asyncio.run, fetch(session_id)).result(TIMEOUT)
        return found

    return read_postgres


async def test_a_session_change_is_published_once_committed_and_never_when_rolled_back(
    server: Server,
) -> None:
    """A subscriber of a car's sessions that reads the session as each event reaches it
    finds the change the event tells of committed; a change whose transaction failed as
    it committed (rolled back after the session's statements succeeded) is never told."""
    _, _, vehicle = await _car(server)
    read = _committed_sample_count(server.settings.database_url)
    found: list[int | None] = []  # per event, the session's sample count committed then
    interrupted: list[Exception] = []
    async with server.services.events.subscribe(charging_session_topic(vehicle.id)) as events:
        events.forward(lambda message: found.append(read(message["id"])), interrupted.append)
        await _push(server, vehicle, 0, charging=True)
        await _push(server, vehicle, 10, charging=True, battery=52)
        assert found == [1, 2]
        async with _commits_refused(server.settings.database_url):
            with pytest.raises(
                (IntegrityError, sqlite3.IntegrityError, asyncpg.IntegrityConstraintViolationError)
            ):
                await _push(server, vehicle, 20, charging=True, battery=54)
        assert found == [1, 2]  # rolled back: not told
        (session,) = await _sessions(vehicle)
        assert session.sample_count == 2
        await _push(server, vehicle, 20, charging=True, battery=54)  # delivered again: taken
        assert found == [1, 2, 3]
    assert interrupted == []


async def test_a_gap_past_the_stale_limit_ends_the_session_unreachable(server: Server) -> None:
    _, _, vehicle = await _car(server)
    await _push(server, vehicle, 0, charging=True)
    await _push(server, vehicle, 10, charging=True)
    await _push(server, vehicle, 10 + 31, charging=True)  # 31 minutes later (limit: 30)
    first, second = await _sessions(vehicle)
    assert first.end_reason == "UNREACHABLE"
    assert first.ended_at == T0 + timedelta(minutes=10)
    assert first.energy_from_power == pytest.approx(10.0 / 6)
    assert second.ended_at is None
    assert second.started_at == T0 + timedelta(minutes=41)


async def test_a_session_nothing_was_heard_of_ends_unreachable_when_read(server: Server) -> None:
    _, key, vehicle = await _car(server)
    await _push(server, vehicle, 0, charging=True)
    stale = datetime.now(UTC) - timedelta(seconds=server.settings.session_stale_after + 1)
    await ChargingSession.filter(vehicle_id=vehicle.id).update(last_recorded_at=stale)
    current = await server.http.get(f"/api/ha/sessions/{vehicle.id}/current", headers=_bearer(key))
    assert current.json() == {"active": False}
    (session,) = await _sessions(vehicle)
    assert session.end_reason == "UNREACHABLE"
    assert session.ended_at == T0


async def test_one_or_no_rated_sample_falls_back_to_the_battery(server: Server) -> None:
    _, key, vehicle = await _car(server)
    await _push(server, vehicle, 0, charging=True, rate=None, battery=50)
    await _push(server, vehicle, 30, charging=True, rate=None, battery=60)
    (session,) = await _graphql_sessions(server, key, vehicle)
    assert session["energyMethod"] == "BATTERY"
    assert session["energyKwh"] == pytest.approx(6.0)  # 10 % of 60 kWh
    assert session["energyFromPower"] == 0


async def test_end_reasons_follow_the_closing_state(server: Server) -> None:
    _, _, vehicle = await _car(server)
    await _push(server, vehicle, 0, charging=True)
    await _push(server, vehicle, 1, charging=False, battery=60)
    await _push(server, vehicle, 2, charging=True, battery=60)
    await _push(server, vehicle, 3, charging=False, battery=90)  # at the charge limit
    reasons = [s.end_reason for s in await _sessions(vehicle)]
    assert reasons == ["STOPPED", "COMPLETE"]


async def test_samples_of_sessions_older_than_the_keep_days_are_pruned(server: Server) -> None:
    _, _, vehicle = await _car(server)
    await _push(server, vehicle, 0, charging=True)
    await _push(server, vehicle, 1, charging=False)
    (old,) = await _sessions(vehicle)
    keep = server.settings.session_samples_keep_days
    await ChargingSession.filter(id=old.id).update(
        ended_at=datetime.now(UTC) - timedelta(days=keep, minutes=1)
    )
    await _push(server, vehicle, 2, charging=True)  # a new session opens: the old is pruned
    assert await ChargingSample.filter(session_id=old.id).count() == 0
    await old.refresh_from_db()
    assert old.sample_count == 2  # the session itself is kept


# -- the API's rules ---------------------------------------------------------------------


async def test_another_users_car_and_session_are_refused(server: Server) -> None:
    _, _, vehicle = await _car(server)
    _, stranger = await server.user()
    await _push(server, vehicle, 0, charging=True)
    (session,) = await _sessions(vehicle)
    for path in (f"/api/ha/sessions/{vehicle.id}", f"/api/ha/sessions/{vehicle.id}/current"):
        response = await server.http.get(path, headers=_bearer(stranger))
        assert response.status_code == 403, path  # as the status: FORBIDDEN_OWNER
        assert response.json()["code"] == "FORBIDDEN_OWNER"
    body = await server.graphql(
        "query($id: ID!) { chargingSession(id: $id) { id } }", {"id": str(session.id)}, key=stranger
    )
    assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    unauthenticated = await server.http.get(f"/api/ha/sessions/{vehicle.id}")
    assert unauthenticated.status_code == 401


async def test_limit_since_and_bad_parameters(server: Server) -> None:
    _, key, vehicle = await _car(server)
    for minute in (0, 10, 20):
        await _push(server, vehicle, minute, charging=True)
        await _push(server, vehicle, minute + 1, charging=False)
    url = f"/api/ha/sessions/{vehicle.id}"
    body = (await server.http.get(f"{url}?limit=2", headers=_bearer(key))).json()
    starts = [s["startedAt"] for s in body["sessions"]]
    assert starts == [format_timestamp(T0 + timedelta(minutes=m)) for m in (20, 10)]
    since = format_timestamp(T0 + timedelta(minutes=10))
    body = (await server.http.get(url, params={"since": since}, headers=_bearer(key))).json()
    assert body["total"]["count"] == 2
    bad = (
        "limit=0",
        "limit=x",
        "limit=101",
        "since=yesterday",
        "format=xml",
        "since=9999-12-31T23:59:59-23:59",  # past year 9999 in UTC
        "since=0001-01-01T00:00:00%2B23:59",  # before year 1 in UTC
    )
    for query in bad:
        response = await server.http.get(f"{url}?{query}", headers=_bearer(key))
        assert response.status_code == 400, query
        assert response.json()["code"] == "BAD_REQUEST"


async def test_statistics_sum_sessions_per_bucket(server: Server) -> None:
    _, key, vehicle = await _car(server)
    await _tariff(server, key, price=0.5, currency="EUR")
    for minute in (0, 60 * 24):  # two days
        await _push(server, vehicle, minute, charging=True)
        await _push(server, vehicle, minute + 30, charging=True)
        await _push(server, vehicle, minute + 31, charging=False)
    query = """query($id: ID!, $from: DateTime!, $to: DateTime!, $by: StatisticsGroupBy!) {
      vehicle(id: $id) { chargingStatistics(from: $from, to: $to, groupBy: $by) {
        start energyKwh cost currency sessionCount durationSeconds } } }"""
    variables = {
        "id": str(vehicle.id),
        "from": "2025-05-01T00:00:00Z",
        "to": "2025-06-01T00:00:00Z",
    }
    days = await server.graphql(query, {**variables, "by": "DAY"}, key=key)
    buckets = days["data"]["vehicle"]["chargingStatistics"]
    assert [b["start"] for b in buckets] == ["2025-05-20T00:00:00.000Z", "2025-05-21T00:00:00.000Z"]
    energy = 10.0 * 30 / 60 + 10.0 / 2 / 60  # 30 min at 10 kW, then a minute ramping down
    assert buckets[0]["energyKwh"] == pytest.approx(energy, abs=1e-4)
    assert buckets[0]["cost"] == pytest.approx(energy * 0.5, abs=1e-4)
    months = await server.graphql(query, {**variables, "by": "MONTH"}, key=key)
    (month,) = months["data"]["vehicle"]["chargingStatistics"]
    assert month["start"] == "2025-05-01T00:00:00.000Z"
    assert month["sessionCount"] == 2
    assert month["durationSeconds"] == pytest.approx(2 * 31 * 60)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"price": -1.0, "currency": "EUR"}, "pricePerKwh"),
        ({"price": 0.3, "currency": "EURO"}, "currency"),
        ({"price": 0.3, "currency": "EUR", "zone": "Mars/Olympus"}, "timeZone"),
        (
            {
                "price": 0.3,
                "currency": "EUR",
                "periods": [
                    {"start": "22:00", "end": "06:00", "price": 0.1},
                    {"start": "05:00", "end": "07:00", "price": 0.2},
                ],
            },
            "overlaps",
        ),
        (
            {
                "price": 0.3,
                "currency": "EUR",
                "periods": [{"start": "25:00", "end": "06:00", "price": 0.1}],
            },
            "25:00",
        ),
        # A finite bound: energy times 1e308 would be an infinite cost, which JSON cannot carry.
        ({"price": 1e308, "currency": "EUR"}, "from 0 to 1000"),
        (
            {
                "price": 0.3,
                "currency": "EUR",
                "periods": [{"start": "22:00", "end": "06:00", "price": 1000.5}],
            },
            "from 0 to 1000",
        ),
    ],
)
async def test_set_tariff_refuses_bad_input(
    server: Server, arguments: dict[str, Any], message: str
) -> None:
    _, key = await server.user()
    body = await _tariff(server, key, **arguments)
    error = body["errors"][0]
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert message in error["message"]


async def test_viewer_tariff_answers_what_was_set(server: Server) -> None:
    _, key = await server.user()
    none = await server.graphql("{ viewer { tariff { currency } } }", key=key)
    assert none["data"]["viewer"]["tariff"] is None
    await _tariff(
        server,
        key,
        price=0.3,
        currency="EUR",
        periods=[{"start": "22:00", "end": "06:00", "price": 0.12}],
        zone="Europe/Oslo",
    )
    body = await server.graphql(
        "{ viewer { tariff { pricePerKwh currency timeZone periods { start end price } } } }",
        key=key,
    )
    assert body["data"]["viewer"]["tariff"] == {
        "pricePerKwh": 0.3,
        "currency": "EUR",
        "timeZone": "Europe/Oslo",
        "periods": [{"start": "22:00", "end": "06:00", "price": 0.12}],
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_subscription_pushes_the_session_as_it_grows_and_when_it_ends(
    server: Server, protocol: str
) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    query = """subscription($id: ID!) { chargingSession(vehicleId: $id) {
      active sampleCount endReason } }"""
    await _push(server, vehicle, 0, charging=True)
    async with (
        server.gql_client(key, protocol) as client,
        subscription(client, query, id=str(vehicle.id)) as stream,
    ):
        first = await next_result(stream)  # the open session, as it is now
        await _push(server, vehicle, 1, charging=True)
        grown = await next_result(stream)
        await _push(server, vehicle, 2, charging=False)
        ended = await next_result(stream)
    assert first["chargingSession"] == {"active": True, "sampleCount": 1, "endReason": None}
    assert grown["chargingSession"]["sampleCount"] == 2
    assert ended["chargingSession"] == {"active": False, "sampleCount": 3, "endReason": "STOPPED"}


async def test_at_simulator_speed_60_a_minute_is_an_hour_of_charge(settings: Any) -> None:
    """EVLINK_SIMULATOR_SPEED: the car's own time runs 60 times the clock's, so a minute of
    the clock makes a session that reads (and charges) as an hour."""
    clock = ManualClock()
    fast = Simulator(clock, action_delay=1.0, speed=60.0)
    await _truncate(settings.database_url)
    async with run_server(settings, clock=clock, simulator=fast) as server:
        user, key = await server.user()
        vehicle = await server.vehicle(
            user, "plugged", battery_level=30.0, charge_rate=11.0, battery_capacity=75.0
        )
        await _command(server, key, vehicle, "START")
        await server.clock.advance(1)
        for _ in range(60):
            await server.clock.advance(1)  # a simulated minute each
        await _command(server, key, vehicle, "STOP")
        await server.clock.advance(1)
        (session,) = await _graphql_sessions(server, key, vehicle)
    assert session["endReason"] == "STOPPED"
    assert session["durationSeconds"] == pytest.approx(3660, abs=61)
    assert session["energyFromBattery"] == pytest.approx(session["energyKwh"], rel=0.05)
    assert session["energyKwh"] == pytest.approx(11.0 * session["durationSeconds"] / 3600, rel=0.03)


@pytest.mark.parametrize(
    "argument",
    ['before: "abc"', "before: 123", 'before: "0001-01-01T00:00:00+23:59"'],
)
async def test_a_bad_datetime_literal_is_a_validation_error_not_an_internal_error(
    server: Server, argument: str
) -> None:
    _, key, vehicle = await _car(server)
    query = f'{{ vehicle(id: "{vehicle.id}") {{ chargingSessions({argument}) {{ id }} }} }}'
    body = await server.graphql(query, key=key)
    assert body.get("data") is None
    (error,) = body["errors"]
    assert "extensions" not in error, error  # GraphQL's own validation error, as for any
    assert error["message"].startswith("DateTime cannot represent")  # bad argument


async def test_a_process_remembers_the_open_sessions_of_a_bounded_number_of_cars(
    server: Server,
) -> None:
    """Past ``MAX_REMEMBERED`` cars the one remembered longest ago is forgotten (it is
    read from the database at its next state)."""
    made = [ChargingSession(vehicle_id=uuid4()) for _ in range(sessions.MAX_REMEMBERED + 1)]
    for session in made:
        sessions._remember(server.services, session)
    memory = server.services.open_sessions
    assert len(memory) == sessions.MAX_REMEMBERED
    assert made[0].vehicle_id not in memory
    assert memory[made[-1].vehicle_id] is made[-1]


async def test_the_total_duration_is_rounded_as_each_sessions_is(server: Server) -> None:
    """Three sessions of 0.2, 0.4 and 0.3 s more than a whole minute: their durations
    sum, in floating point and in either order, to a number with a tail of digits; the
    total is rounded, in REST's ``total`` and in GraphQL's statistics bucket alike."""
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged", battery_level=30.0, charge_rate=11.0)
    for extra in (0.2, 0.4, 0.3):
        await _command(server, key, vehicle, "START")
        await server.clock.advance(1)
        await server.clock.advance(60 + extra)
        await _command(server, key, vehicle, "STOP")
        await server.clock.advance(1)

    body = (await server.http.get(f"/api/ha/sessions/{vehicle.id}", headers=_bearer(key))).json()

    durations = [s["durationSeconds"] for s in body["sessions"]]
    assert len(durations) == 3
    assert body["total"]["durationSeconds"] == round(sum(durations), 6)
    assert repr(body["total"]["durationSeconds"]) == repr(
        round(body["total"]["durationSeconds"], 6)
    )
    query = """query($id: ID!, $from: DateTime!, $to: DateTime!) {
      vehicle(id: $id) { chargingStatistics(from: $from, to: $to, groupBy: MONTH) {
        sessionCount durationSeconds } } }"""
    window = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
    stats = await server.graphql(query, {"id": str(vehicle.id), **window}, key=key)
    (bucket,) = stats["data"]["vehicle"]["chargingStatistics"]
    assert bucket["sessionCount"] == 3
    assert repr(bucket["durationSeconds"]) == repr(body["total"]["durationSeconds"])
