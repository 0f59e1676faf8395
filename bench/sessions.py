"""What ingesting charge states into charging sessions costs the status path.

In one process over one database (SQLite, or PostgreSQL when given), each path is
measured three ways, interleaved read by read (each way first in turn): with session
ingestion, without it (``record_state`` swapped in this bench process only for a
function that runs the charge state's write it is handed, alone, and nothing
else), and with it but remembering no open session. The user has a time-of-use
tariff, so every interval is priced.

- **worst case**: one charging simulated car per way refreshed from its provider on
  every call (``vehicle_status(max_age=0)``: the provider read, the charge-state
  write, the session's compare-and-set and sample insert).
- **status path** (issue #19's target): REST ``/api/status``'s use case
  (``vehicles.read_status``, the read cache off) over many charging cars, each
  polled as Home Assistant does, two sensors every 30 s against
  ``EVLINK_STATUS_MAX_AGE`` (60 s): a read every 15 s of the bench's
  ``ManualClock``, so one read in four refreshes the car from its provider. Each
  way reads a fleet of its own, the three read one after the other after each step
  of the clock. evlink's clock (``vehicles._now``) follows the ManualClock in this
  bench process only, so states go stale without sleeping.

The cost is not a ratio of two means taken apart: the run is cut in *cycles* (the
status path: the four steps of the clock in which each car is refreshed once; the
worst case: ``CHUNK`` refreshes of each way), every cycle gives the cost of that
cycle (with over without, the same steps of the clock, the same seconds of the
machine), and the figure is the median of those costs with a 95 % bootstrap
interval. Wall time and this process's CPU time (``time.process_time``: aiosqlite's
thread included, PostgreSQL's server not) are measured alike. The verdict is on
wall time: *within* the target when the whole interval is under it, *OVER* when the
whole interval is at or above it, else *undecided*.

``--control`` adds a fourth way, a second *without*, and its cost against the first:
what the method finds where there is none (an A/A check of the machine's noise).

``python -m bench.sessions [--database URL] [--postgres] [--refreshes N] [--cars N]
[--polls N] [--rounds N] [--control]``; ``make bench`` runs it too (``python -m bench
--sessions-only`` for just this).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from bench.common import postgres_base, postgres_database
from evlink.events import MemoryEventBus
from evlink.models import Tier
from evlink.models.database import apply_migrations, open_database
from evlink.providers.simulator import ManualClock, Simulator
from evlink.resolvers import accounts, sessions, vehicles
from evlink.services import Services
from evlink.settings import Settings
from evlink.tariffs import parse_period

TARGET = 0.10  # issue #19: ingestion costs the status path less than 10 %
POLL_EVERY = 15.0  # seconds of the ManualClock between two reads of a car (2 sensors / 30 s)
CHUNK = 10  # worst case: refreshes of each way in one cycle
RESAMPLES = 2000  # bootstrap resamples of the cycles' costs


class Ingestion(Enum):
    OFF = "off"  # record_state a no-op (but the charge state's write it carries)
    UNREMEMBERED = "unremembered"  # record_state, the open session read every time
    ON = "on"  # record_state as evlink runs it
    CONTROL = "control"  # a second OFF (--control): what the method finds with no cost


@dataclass(frozen=True, slots=True)
class Estimate:
    """The median of the cycles' costs and its 95 % bootstrap interval."""

    median: float
    low: float
    high: float

    def text(self) -> str:
        return f"{self.median:+.1%} [{self.low:+.1%}, {self.high:+.1%}]"


def estimate(costs: Sequence[float], resamples: int = RESAMPLES) -> Estimate:
    """The median of ``costs`` with the 2.5th and 97.5th percentiles of the medians of
    ``resamples`` resamples of them (with replacement; the same seed every run)."""
    draw = random.Random(19)
    count = len(costs)
    medians = sorted(statistics.median(draw.choices(costs, k=count)) for _ in range(resamples))
    return Estimate(
        statistics.median(costs),
        medians[int(0.025 * (resamples - 1))],
        medians[int(0.975 * (resamples - 1))],
    )


@dataclass(slots=True)
class Cycles:
    """One path's timings: per cycle and way, seconds of wall time and of CPU, and
    calls."""

    wall: dict[Ingestion, list[float]] = field(default_factory=dict)
    cpu: dict[Ingestion, list[float]] = field(default_factory=dict)
    calls: int = 0  # calls of each way in one cycle

    def add(self, ingestion: Ingestion, wall: float, cpu: float) -> None:
        self.wall.setdefault(ingestion, []).append(wall)
        self.cpu.setdefault(ingestion, []).append(cpu)

    def costs(self, of: dict[Ingestion, list[float]], way: Ingestion) -> list[float]:
        return [w / o - 1 for w, o in zip(of[way], of[Ingestion.OFF], strict=True)]

    def ms_per_call(self, way: Ingestion) -> float:
        return statistics.median(self.wall[way]) * 1000 / self.calls


@dataclass(frozen=True, slots=True)
class SessionsResult:
    database: str
    path: str  # what one timed call is
    cycles: int
    without_sessions_ms: float  # the median cycle's wall time per call
    with_sessions_ms: float
    unremembered_ms: float  # with ingestion, but the open session read at every state
    cost: Estimate  # of wall time: with over without
    cpu_cost: Estimate  # of this process's CPU time
    unremembered_cost: Estimate  # of wall time, not remembering over without
    control: tuple[Estimate, Estimate] | None = None  # wall, CPU: control over without

    @staticmethod
    def of(database: str, path: str, cycles: Cycles) -> SessionsResult:
        control = None
        if Ingestion.CONTROL in cycles.wall:
            control = (
                estimate(cycles.costs(cycles.wall, Ingestion.CONTROL)),
                estimate(cycles.costs(cycles.cpu, Ingestion.CONTROL)),
            )
        return SessionsResult(
            database,
            path,
            len(cycles.wall[Ingestion.OFF]),
            cycles.ms_per_call(Ingestion.OFF),
            cycles.ms_per_call(Ingestion.ON),
            cycles.ms_per_call(Ingestion.UNREMEMBERED),
            estimate(cycles.costs(cycles.wall, Ingestion.ON)),
            estimate(cycles.costs(cycles.cpu, Ingestion.ON)),
            estimate(cycles.costs(cycles.wall, Ingestion.UNREMEMBERED)),
            control,
        )

    @property
    def verdict(self) -> str:
        if self.cost.high < TARGET:
            return f"within the {TARGET:.0%} target"
        if self.cost.low >= TARGET:
            return f"OVER the {TARGET:.0%} target"
        return f"undecided: the interval holds the {TARGET:.0%} target"

    def line(self) -> str:
        line = (
            f"sessions ({self.database}), {self.path}: {self.without_sessions_ms:.3f} ms "
            f"without, {self.with_sessions_ms:.3f} ms with ingestion; cost over "
            f"{self.cycles} cycles, median [95 % interval]: wall {self.cost.text()}, "
            f"CPU {self.cpu_cost.text()}: {self.verdict}; not remembering the open "
            f"session: {self.unremembered_ms:.3f} ms, wall {self.unremembered_cost.text()}"
        )
        if self.control is not None:
            wall, cpu = self.control
            line += f"; control (without against without): wall {wall.text()}, CPU {cpu.text()}"
        return line


class _Forgetful(dict[Any, Any]):
    """``Services.open_sessions`` that remembers nothing: ingestion as it was before the
    open session was remembered (every state reads it first)."""

    def __setitem__(self, key: Any, value: Any) -> None:
        return None


async def _no_sessions(*_: Any, along: Any = None) -> list[Any]:
    """``record_state`` without sessions: the state's write it is given, alone (what
    evlink would do without sessions), and nothing else."""
    if along is not None:
        await along.run()
    return []


async def run_sessions(
    database_url: str,
    refreshes: int = 200,
    rounds: int = 5,
    cars: int = 20,
    polls: int = 40,
    control: bool = False,
) -> list[SessionsResult]:
    """The worst case and the status path, each way's cost measured cycle by cycle;
    with ``control`` also a second *without*, measured against the first."""
    await apply_migrations(database_url)
    clock = ManualClock()
    simulator = Simulator(clock)
    settings = Settings(database_url=database_url)
    name = "SQLite" if settings.is_sqlite else "PostgreSQL"
    # The server's clients: every call (and transaction) bounded, as evlink runs them.
    async with open_database(database_url, timeout=settings.database_timeout):
        services = Services(settings=settings, provider=simulator, events=MemoryEventBus())
        user = await accounts.create_user(f"bench-{uuid.uuid4().hex[:8]}@example.com", Tier.PRO)
        # Every interval priced, at a price that depends on the hour.
        await sessions.set_tariff(
            user, 0.30, "EUR", [parse_period("22:00-06:00=0.12")], "Europe/Oslo"
        )
        worst, status = Cycles(calls=CHUNK), Cycles(calls=cars * _refresh_every(services))
        ways = [way for way in Ingestion if control or way is not Ingestion.CONTROL]
        for turn in range(rounds):
            order = _rotated(ways, turn)  # each first in turn
            await _refreshes(services, clock, simulator, user, refreshes, order, worst)
            await _status_polls(services, clock, simulator, user, cars, polls, order, status)
    return [
        SessionsResult.of(name, "worst case: a refresh per call (max age 0)", worst),
        SessionsResult.of(
            name, f"status path: read_status, {cars} cars, a refresh per 4 reads", status
        ),
    ]


def _refresh_every(services: Services) -> int:
    """Reads of a car between two refreshes of it from its provider."""
    return round(services.settings.status_max_age / POLL_EVERY)


def _memory(ingestion: Ingestion) -> dict[Any, Any]:
    """A new ``Services.open_sessions`` for ``ingestion``."""
    return _Forgetful() if ingestion is Ingestion.UNREMEMBERED else {}


@contextlib.contextmanager
def _ingesting(
    ingestion: Ingestion, services: Services, clock: ManualClock, memory: dict[Any, Any]
) -> Iterator[None]:
    """``ingestion`` in force, remembering open sessions in ``memory``, with evlink's
    clock on the ManualClock; all put back after."""
    real_record, real_now = sessions.record_state, vehicles._now
    off = ingestion in (Ingestion.OFF, Ingestion.CONTROL)
    sessions.record_state = _no_sessions if off else real_record  # type: ignore[assignment]
    vehicles._now = clock.now  # type: ignore[assignment]
    services.open_sessions = memory
    try:
        yield
    finally:
        sessions.record_state = real_record  # type: ignore[assignment]
        vehicles._now = real_now  # type: ignore[assignment]
        services.open_sessions = {}


def _charging_car(simulator: Simulator) -> str:
    provider_id = f"sim-charging-{uuid.uuid4().hex[:12]}"
    car = simulator.vehicle(provider_id)
    car.battery_level, car.charge_limit = 10.0, 100
    return provider_id


def _rotated(order: list[Ingestion], step: int) -> list[Ingestion]:
    return order[step % len(order) :] + order[: step % len(order)]


async def _refreshes(
    services: Services,
    clock: ManualClock,
    simulator: Simulator,
    user: Any,
    count: int,
    order: list[Ingestion],
    into: Cycles,
) -> None:
    """``count`` refreshes of a new charging car of each way, each a new charging state:
    after each step of the clock each way refreshes its car (each first in turn), and
    every ``CHUNK`` steps make a cycle."""
    memories = {ingestion: _memory(ingestion) for ingestion in order}
    cars = {}
    for ingestion in order:
        cars[ingestion] = await accounts.add_vehicle(
            user, provider="simulator", provider_vehicle_id=_charging_car(simulator)
        )
        with _ingesting(ingestion, services, clock, memories[ingestion]):  # opens its session
            await vehicles.vehicle_status(services, cars[ingestion], max_age=0, within_budget=False)
    for cycle in range(count // CHUNK):
        wall = dict.fromkeys(order, 0.0)
        cpu = dict.fromkeys(order, 0.0)
        for step in range(cycle * CHUNK, (cycle + 1) * CHUNK):
            await clock.advance(30)  # the cars have charged: a new state to record
            for ingestion in _rotated(order, step):
                with _ingesting(ingestion, services, clock, memories[ingestion]):
                    began, began_cpu = time.perf_counter(), time.process_time()
                    await vehicles.vehicle_status(
                        services, cars[ingestion], max_age=0, within_budget=False
                    )
                    wall[ingestion] += time.perf_counter() - began
                    cpu[ingestion] += time.process_time() - began_cpu
        for ingestion in order:
            into.add(ingestion, wall[ingestion], cpu[ingestion])


async def _status_polls(
    services: Services,
    clock: ManualClock,
    simulator: Simulator,
    user: Any,
    cars: int,
    polls: int,
    order: list[Ingestion],
    into: Cycles,
) -> None:
    """``read_status`` for each way of ``order``, each over ``cars`` new charging cars of
    its own, read every 15 s of the ManualClock ``polls`` times (after one untimed read
    that opens its session). After each step of the clock the fleets are read one after
    the other, each first in turn; the steps in which every car is refreshed once make a
    cycle. Fails unless exactly one read in four refreshed its car."""
    fleets: dict[Ingestion, list[Any]] = {}
    memories = {ingestion: _memory(ingestion) for ingestion in order}
    for ingestion in order:
        fleets[ingestion] = [
            (
                await accounts.add_vehicle(
                    user, provider="simulator", provider_vehicle_id=_charging_car(simulator)
                )
            ).id
            for _ in range(cars)
        ]
        with _ingesting(ingestion, services, clock, memories[ingestion]):
            for vehicle_id in fleets[ingestion]:  # a first refresh opens its session
                await vehicles.read_status(services, user, vehicle_id)
    every = _refresh_every(services)
    reads_before = len(simulator.calls)
    for cycle in range(polls // every):
        wall = dict.fromkeys(order, 0.0)
        cpu = dict.fromkeys(order, 0.0)
        for step in range(cycle * every, (cycle + 1) * every):
            await clock.advance(POLL_EVERY)
            # Turned by the step through the round and by the cycle, so that the step
            # that refreshes (the last of a cycle) has each way first in turn, for any
            # number of ways.
            for ingestion in _rotated(order, step + cycle):
                with _ingesting(ingestion, services, clock, memories[ingestion]):
                    began, began_cpu = time.perf_counter(), time.process_time()
                    for vehicle_id in fleets[ingestion]:
                        await vehicles.read_status(services, user, vehicle_id)
                    wall[ingestion] += time.perf_counter() - began
                    cpu[ingestion] += time.process_time() - began_cpu
        for ingestion in order:
            into.add(ingestion, wall[ingestion], cpu[ingestion])
    refreshed = len(simulator.calls) - reads_before
    expected = len(order) * cars * (polls // every)
    if refreshed != expected:
        raise RuntimeError(f"status path: {refreshed} provider reads, expected {expected}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sessions", description=__doc__)
    parser.add_argument("--database", help="a PostgreSQL URL; default: a new SQLite file")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="also on a new PostgreSQL database (dropped after), if one answers",
    )
    parser.add_argument(
        "--refreshes", type=int, default=200, help=f"worst case: per round (cycles of {CHUNK})"
    )
    parser.add_argument("--cars", type=int, default=20, help="status path: charging cars")
    parser.add_argument(
        "--polls", type=int, default=40, help="status path: reads per car and round (cycles of 4)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="each with new cars")
    parser.add_argument(
        "--control",
        action="store_true",
        help="also a second way without ingestion, measured against the first (an A/A check)",
    )
    args = parser.parse_args(argv)
    sizes = (args.refreshes, args.rounds, args.cars, args.polls)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database or f"sqlite://{Path(tmp) / 'bench.sqlite3'}"
        results = asyncio.run(run_sessions(url, *sizes, control=args.control))
    if args.postgres:
        results += asyncio.run(_on_postgres(*sizes, control=args.control))
    for result in results:
        print(result.line())
    return 0


async def _on_postgres(*sizes: int, control: bool = False) -> list[SessionsResult]:
    """The same on a database of its own on the bench's PostgreSQL; none without one."""
    base = await postgres_base()
    if base is None:
        return []
    async with postgres_database(base) as url:
        return await run_sessions(url, *sizes, control=control)


if __name__ == "__main__":
    raise SystemExit(main())
