"""The simulator is one set of cars, however many instances drive it.

Each instance has its own :class:`Simulator` (as each `evlink serve` process or
worker does); they share the cars through the database (``DatabaseCars``). The
tests run two in-process servers on one database, each with its simulator, and
`evlink serve` processes; waits are on events or the server's own ``?wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from evlink.domain import ChargingAction, VehicleData
from evlink.events import charge_state_topic
from evlink.models import ChargingCommand, CommandState, SimulatorCar, Tier, Vehicle
from evlink.providers.simulator import (
    MAX_RESOLVED_ACTIONS,
    ManualClock,
    MemoryCars,
    SimulatedCar,
    Simulator,
    SystemClock,
)
from evlink.providers.simulator_db import DatabaseCars
from evlink.resolvers import accounts
from evlink.resolvers.follow import wait_for_command
from evlink.settings import Settings
from tests.conftest import TIMEOUT, Server, _truncate, run_server, serve_process, user_with_car


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def shared(settings: Settings) -> Settings:
    """Settings for instances that share one PostgreSQL database (events stay local to
    each: the watcher polls the provider often, and no read is served from memory)."""
    if settings.is_sqlite:
        pytest.skip("several instances share PostgreSQL; this backend is SQLite")
    return replace(settings, cache_ttl=0.0)


async def simulated_car(server: Server, profile: str = "plugged") -> tuple[str, Vehicle]:
    """A PRO user's key and its simulated car (made on first use, in the database)."""
    user, key = await server.user(tier=Tier.PRO)
    vehicle = await accounts.add_vehicle(
        user,
        provider="simulator",
        provider_vehicle_id=f"sim-{profile}-{uuid.uuid4().hex[:12]}",
        name=f"Shared {profile}",
    )
    return key, vehicle


async def charge(server: Server, key: str, vehicle: Vehicle, action: str) -> ChargingCommand:
    answer = await server.http.post(
        f"/api/charging/{vehicle.id}", json={"action": action}, headers=auth(key)
    )
    assert answer.status_code == 200, answer.text
    return await ChargingCommand.get(id=answer.json()["command_id"])


async def is_charging(server: Server, key: str, vehicle: Vehicle) -> bool:
    status = await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))
    assert status.status_code == 200, status.text
    charging: bool = status.json()["isCharging"]
    return charging


async def test_start_through_one_instance_then_stop_through_the_other_both_confirmed(
    shared: Settings,
) -> None:
    await _truncate(shared.database_url)
    clock = ManualClock()
    async with (
        run_server(shared, clock, Simulator(clock, action_delay=1.0, store=DatabaseCars())) as a,
        run_server(shared, clock, Simulator(clock, action_delay=1.0, store=DatabaseCars())) as b,
    ):
        key, vehicle = await simulated_car(a)
        assert not await is_charging(a, key, vehicle)

        started = await charge(b, key, vehicle, "START")
        await clock.advance(2)  # the car starts
        started = await wait_for_command(b.services, started, TIMEOUT)
        seen_started = [await is_charging(a, key, vehicle), await is_charging(b, key, vehicle)]

        stopped = await charge(a, key, vehicle, "STOP")
        await clock.advance(2)  # the car stops
        stopped = await wait_for_command(a.services, stopped, TIMEOUT)
        seen_stopped = [await is_charging(a, key, vehicle), await is_charging(b, key, vehicle)]

    assert started.state == CommandState.CONFIRMED
    assert seen_started == [True, True]
    assert stopped.state == CommandState.CONFIRMED, stopped.failure_reason
    assert seen_stopped == [False, False]


class Race:
    """Holds every load until ``racers`` loads are in: each racer then changes the car as
    it was, as instances changing one car at the same moment do."""

    def __init__(self, racers: int) -> None:
        self.left = racers
        self.all_in = asyncio.Event()

    async def hold(self) -> None:
        if self.left > 0:  # the first round only: a call run again goes on at once
            self.left -= 1
            if self.left == 0:
                self.all_in.set()
            await asyncio.wait_for(self.all_in.wait(), TIMEOUT)


class RacingCars(DatabaseCars):
    """Cars in the database, loaded in a :class:`Race`."""

    def __init__(self, race: Race) -> None:
        super().__init__()
        self.race = race

    async def load(self, vehicle_id: str) -> SimulatedCar | None:
        car = await super().load(vehicle_id)
        await self.race.hold()
        return car


async def test_a_car_changed_through_two_instances_at_once_loses_no_change(
    server: Server,
) -> None:
    _, vehicle = await simulated_car(server)
    provider_id = vehicle.provider_vehicle_id or ""
    clock = ManualClock()
    await Simulator(clock, store=DatabaseCars()).get_vehicle(provider_id)  # the car, stored
    race = Race(10)
    instances = [Simulator(clock, action_delay=1.0, store=RacingCars(race)) for _ in range(2)]

    actions = await asyncio.gather(
        *(instances[i % 2].set_charging(provider_id, ChargingAction.START) for i in range(10))
    )

    # One START was made; every other call found it pending and returned it.
    assert len({action.id for action in actions}) == 1
    row = await SimulatorCar.get(id=provider_id)
    car = SimulatedCar.from_json(row.state, version=row.version)
    assert [action.id for action in car.pending()] == [actions[0].id]
    assert car.vehicle.attempts == 1
    found = await instances[1].get_action(actions[0].id)
    assert found.state == "PENDING"


class Deliveries:
    """Charge-state events of one car on each instance's own event bus, in arrival order."""

    def __init__(self) -> None:
        self.arrived: asyncio.Queue[str] = asyncio.Queue()

    @contextlib.asynccontextmanager
    async def following(self, name: str, server: Server, vehicle: Vehicle) -> AsyncIterator[None]:
        async with server.services.events.subscribe(charge_state_topic(vehicle.id)) as messages:
            reader = asyncio.create_task(self._read(name, messages))
            try:
                yield
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def _read(self, name: str, messages: Any) -> None:
        async for _ in messages:
            self.arrived.put_nowait(name)

    async def next(self, count: int) -> list[str]:
        return [await asyncio.wait_for(self.arrived.get(), TIMEOUT) for _ in range(count)]

    async def next_from(self, name: str, count: int) -> list[str]:
        """The next ``count`` arrivals from ``name``, after any from elsewhere still queued."""
        seen: list[str] = []
        while seen.count(name) < count:
            seen.append(await asyncio.wait_for(self.arrived.get(), TIMEOUT))
        return seen[seen.index(name) :]


async def test_each_car_is_stepped_by_one_instance_and_another_takes_over_when_it_stops(
    shared: Settings,
) -> None:
    await _truncate(shared.database_url)

    def ticking() -> Simulator:  # on real time: each tick moves a charging car on
        # A lease longer than the test: only the stopping instance's hand-back frees it.
        return Simulator(SystemClock(), tick=0.05, speed=60, store=DatabaseCars(lease=60.0))

    deliveries = Deliveries()
    instances: dict[str, contextlib.AsyncExitStack] = {}
    # The first app of a process opens the database for every app after it (app._database):
    # a third one holds it, so that either instance may stop first.
    async with run_server(shared):
        try:
            servers = {}
            for name in ("a", "b"):
                instances[name] = contextlib.AsyncExitStack()
                servers[name] = await instances[name].enter_async_context(
                    run_server(shared, simulator=ticking())
                )
            key, vehicle = await simulated_car(servers["a"], "charging")
            assert await is_charging(servers["a"], key, vehicle)  # made now; the ticks move it
            for name, server in servers.items():
                await instances[name].enter_async_context(
                    deliveries.following(name, server, vehicle)
                )

            first = await deliveries.next(10)
            stepping = first[0]
            other = "b" if stepping == "a" else "a"
            await instances.pop(stepping).aclose()  # it stops, and hands its cars back
            then = await deliveries.next_from(other, 3)
        finally:
            for stack in instances.values():
                await stack.aclose()

    # Every change was pushed by one instance (its own event bus), then by the other.
    assert first == [stepping] * 10
    assert then == [other] * 3


async def test_a_lapsed_step_lease_is_taken_over(server: Server) -> None:
    _, vehicle = await simulated_car(server)
    provider_id = vehicle.provider_vehicle_id or ""
    alive, dead = DatabaseCars(lease=60.0), DatabaseCars(lease=-1.0)
    await Simulator(ManualClock(), store=alive).get_vehicle(provider_id)  # the car, stored

    assert await dead.stepping("dead") == [provider_id]  # taken, with a lease already over
    assert await alive.stepping("alive") == [provider_id]  # lapsed: taken over
    assert await dead.stepping("dead") == []  # held by the live one now


async def test_two_evlink_serve_processes_drive_one_car(settings: Settings) -> None:
    if settings.is_sqlite:
        pytest.skip("several instances share PostgreSQL; this backend is SQLite")
    await _truncate(settings.database_url)
    key, vehicle = await user_with_car(settings.database_url, "Shared car")
    quick = {
        "EVLINK_SIMULATOR_ACTION_DELAY": "0",
        "EVLINK_SIMULATOR_TICK": "0.05",
        "EVLINK_CHARGING_POLL_INTERVAL": "0.1",
        "EVLINK_CHARGING_POLL_MAX_INTERVAL": "0.5",
        "EVLINK_CACHE_TTL": "0",
    }
    async with (
        serve_process(settings.database_url, **quick) as a_url,
        serve_process(settings.database_url, **quick) as b_url,
        httpx.AsyncClient(base_url=a_url, timeout=TIMEOUT * 2) as a,
        httpx.AsyncClient(base_url=b_url, timeout=TIMEOUT * 2) as b,
    ):
        started = await b.post(
            f"/api/charging/{vehicle}?wait={TIMEOUT}", json={"action": "START"}, headers=auth(key)
        )
        stopped = await a.post(
            f"/api/charging/{vehicle}?wait={TIMEOUT}", json={"action": "STOP"}, headers=auth(key)
        )
        statuses = [
            (await instance.get(f"/api/status/{vehicle}", headers=auth(key))).json()
            for instance in (a, b)
        ]

    assert started.status_code == 200, started.text
    assert started.json()["state"] == "CONFIRMED"
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["state"] == "CONFIRMED", stopped.json()["failure_reason"]
    assert [status["isCharging"] for status in statuses] == [False, False]


async def test_one_instance_keeps_its_cars_across_a_restart(settings: Settings) -> None:
    await _truncate(settings.database_url)
    key, vehicle = await user_with_car(settings.database_url, "Shared car")
    quick = {"EVLINK_SIMULATOR_ACTION_DELAY": "0", "EVLINK_SIMULATOR_TICK": "0.05"}
    answers = []
    for action in ("START", "STOP"):  # one process each: the second starts afresh
        async with (
            serve_process(settings.database_url, **quick) as url,
            httpx.AsyncClient(base_url=url, timeout=TIMEOUT * 2) as client,
        ):
            answers.append(
                await client.post(
                    f"/api/charging/{vehicle}?wait={TIMEOUT}",
                    json={"action": action},
                    headers=auth(key),
                )
            )

    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == "CONFIRMED", answer.json()["failure_reason"]


async def test_a_stopped_instance_steps_nothing_though_its_clock_still_ticks(
    shared: Settings,
) -> None:
    await _truncate(shared.database_url)
    clock = ManualClock()
    deliveries = Deliveries()
    async with run_server(shared):  # holds the database for the two below (see above)
        stopping = contextlib.AsyncExitStack()
        a = await stopping.enter_async_context(
            run_server(shared, clock, Simulator(clock, store=DatabaseCars()))
        )
        async with run_server(shared, clock, Simulator(clock, store=DatabaseCars())) as b:
            key, vehicle = await simulated_car(b, "charging")
            assert await is_charging(a, key, vehicle)
            await stopping.aclose()  # A's simulator still listens to the clock
            async with deliveries.following("b", b, vehicle):
                await clock.advance(60)  # the car charges on: B pushes it
                arrived = await deliveries.next(1)

    assert arrived == ["b"]


def parked_car(now: datetime) -> SimulatedCar:
    return SimulatedCar.from_id(f"sim-plugged-{uuid.uuid4().hex[:12]}", now)


def test_a_car_keeps_its_pending_actions_and_only_the_latest_resolved_ones() -> None:
    now = datetime(2025, 5, 20, 16, 0, tzinfo=UTC)
    car = parked_car(now)
    for minute in range(MAX_RESOLVED_ACTIONS + 6):  # ends stopped
        kind = ChargingAction.START if minute % 2 == 0 else ChargingAction.STOP
        car.set_charging(kind, now, timedelta(0))
        now += timedelta(minutes=1)
        car.advance(now, speed=1.0)
        car.take_updates()
    unpushed = car.set_charging(ChargingAction.START, now, timedelta(0))
    car.advance(now, speed=1.0)  # resolved, not pushed yet
    pending = car.set_charging(ChargingAction.STOP, now, timedelta(seconds=30))

    kept = [action.id for action in car.actions]
    assert len(kept) == MAX_RESOLVED_ACTIONS + 2
    assert kept[-2:] == [unpushed.id, pending.id]
    assert car.action(pending.id).state == "PENDING"


def test_a_clock_behind_the_car_moves_nothing_back() -> None:
    now = datetime(2025, 5, 20, 16, 0, tzinfo=UTC)
    car = parked_car(now)
    car.vehicle.is_charging = True
    car.advance(now + timedelta(hours=1), speed=1.0)
    level = car.vehicle.battery_level

    car.advance(now, speed=1.0)  # another instance's clock, a little behind

    assert car.stepped_at == now + timedelta(hours=1)
    assert car.vehicle.battery_level == level


class CarsAwayOnce(MemoryCars):
    """Cars in memory whose store fails once, as a database away for a moment."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def stepping(self, owner: str) -> list[str]:
        if not self.failed:
            self.failed = True
            raise ConnectionError("the database is away")
        return await super().stepping(owner)


async def test_the_ticker_steps_on_after_a_failed_step() -> None:
    store = CarsAwayOnce()
    simulator = Simulator(SystemClock(), tick=0.01, speed=60, store=store)
    charging = await simulator.get_vehicle(f"sim-charging-{uuid.uuid4().hex[:12]}")
    pushed: asyncio.Queue[object] = asyncio.Queue()

    async def sink(update: object) -> None:
        pushed.put_nowait(update)

    await simulator.start(sink)
    try:
        update = await asyncio.wait_for(pushed.get(), TIMEOUT)
    finally:
        await simulator.aclose()

    assert store.failed
    assert isinstance(update, VehicleData)
    assert update.id == charging.id
