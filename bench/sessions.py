"""What ingesting charge states into charging sessions costs the status path.

In one process over one database (SQLite, or PostgreSQL when given), two
measurements, each with session ingestion and, in interleaved rounds of the same
run, without it (``record_state`` swapped for a no-op in this bench process
only); each is the ratio of the medians:

- **worst case**: one charging simulated car refreshed from its provider on
  every call (``vehicle_status(max_age=0)``: the provider read, the charge-state
  write, the session's compare-and-set and sample insert).
- **status path** (issue #19's target): REST ``/api/status``'s use case
  (``vehicles.read_status``, the read cache off) over many charging cars, each
  polled as Home Assistant does, two sensors every 30 s against
  ``EVLINK_STATUS_MAX_AGE`` (60 s): a read every 15 s of the bench's
  ``ManualClock``, so one read in four refreshes the car from its provider.
  Each way reads a fleet of its own, the three read one after the other after
  each step of the clock, so that they meet the same load of the machine.
  evlink's clock (``vehicles._now``) follows the ManualClock in this bench
  process only, so states go stale without sleeping.

``python -m bench.sessions [--database URL] [--refreshes N] [--cars N] [--polls N]
[--rounds N]``; ``make bench`` runs it too (``python -m bench --sessions-only`` for
just this).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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

TARGET = 0.10  # issue #19: ingestion costs the status path less than 10 %
POLL_EVERY = 15.0  # seconds of the ManualClock between two reads of a car (2 sensors / 30 s)


@dataclass(frozen=True, slots=True)
class SessionsResult:
    database: str
    path: str  # what one timed call is
    with_sessions_ms: float  # median per call
    without_sessions_ms: float
    unremembered_ms: float  # with ingestion, but the open session read at every state

    @property
    def cost(self) -> float:
        return self.with_sessions_ms / self.without_sessions_ms - 1

    @property
    def unremembered_cost(self) -> float:
        return self.unremembered_ms / self.without_sessions_ms - 1

    def line(self) -> str:
        verdict = "within" if self.cost < TARGET else "OVER"
        return (
            f"sessions ({self.database}), {self.path}: {self.without_sessions_ms:.3f} ms "
            f"without, {self.with_sessions_ms:.3f} ms with ingestion: {self.cost:+.1%} "
            f"({verdict} the {TARGET:.0%} target); not remembering the open session: "
            f"{self.unremembered_ms:.3f} ms, {self.unremembered_cost:+.1%}"
        )


class _Forgetful(dict[Any, Any]):
    """``Services.open_sessions`` that remembers nothing: ingestion as it was before the
    open session was remembered (every state reads it first)."""

    def __setitem__(self, key: Any, value: Any) -> None:
        return None


class Ingestion(Enum):
    OFF = "off"  # record_state a no-op
    UNREMEMBERED = "unremembered"  # record_state, the open session read every time
    ON = "on"  # record_state as evlink runs it


async def _no_sessions(*_: Any) -> list[Any]:
    return []


async def run_sessions(
    database_url: str,
    refreshes: int = 200,
    rounds: int = 5,
    cars: int = 20,
    polls: int = 40,
) -> list[SessionsResult]:
    """The worst case and the status path, each median ms per call with and without
    ingestion, measured in interleaved rounds of one run."""
    await apply_migrations(database_url)
    clock = ManualClock()
    simulator = Simulator(clock)
    settings = Settings(database_url=database_url)
    name = "SQLite" if settings.is_sqlite else "PostgreSQL"
    worst = "worst case: a refresh per call (max age 0)"
    status = f"status path: read_status, {cars} cars, a refresh per 4 reads"
    # The server's clients: every call (and transaction) bounded, as evlink runs them.
    async with open_database(database_url, timeout=settings.database_timeout):
        services = Services(settings=settings, provider=simulator, events=MemoryEventBus())
        user = await accounts.create_user(f"bench-{uuid.uuid4().hex[:8]}@example.com", Tier.PRO)
        timings: dict[tuple[str, Ingestion], list[float]] = {}
        for turn in range(rounds):
            order = list(Ingestion)
            order = order[turn % 3 :] + order[: turn % 3]  # each first in turn
            for ingestion in order:
                with _ingesting(ingestion, services, clock, _memory(ingestion)):
                    ms = await _refreshes(services, clock, simulator, user, refreshes)
                timings.setdefault((worst, ingestion), []).append(ms)
            per_read = await _status_polls(services, clock, simulator, user, cars, polls, order)
            for ingestion, ms in per_read.items():
                timings.setdefault((status, ingestion), []).append(ms)
    return [
        SessionsResult(
            name,
            path,
            statistics.median(timings[path, Ingestion.ON]),
            statistics.median(timings[path, Ingestion.OFF]),
            statistics.median(timings[path, Ingestion.UNREMEMBERED]),
        )
        for path in (worst, status)
    ]


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
    off = ingestion is Ingestion.OFF
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


async def _refreshes(
    services: Services, clock: ManualClock, simulator: Simulator, user: Any, count: int
) -> float:
    """Milliseconds per refresh of one new charging car: each a new charging state."""
    vehicle = await accounts.add_vehicle(
        user, provider="simulator", provider_vehicle_id=_charging_car(simulator)
    )
    started = time.perf_counter()
    for _ in range(count):
        await clock.advance(30)  # the car has charged: a new state to record
        await vehicles.vehicle_status(services, vehicle, max_age=0, within_budget=False)
    return (time.perf_counter() - started) * 1000 / count


async def _status_polls(
    services: Services,
    clock: ManualClock,
    simulator: Simulator,
    user: Any,
    cars: int,
    polls: int,
    order: list[Ingestion],
) -> dict[Ingestion, float]:
    """Milliseconds per ``read_status`` for each way of ``order``, each over ``cars`` new
    charging cars of its own, read every 15 s of the ManualClock ``polls`` times (after
    one untimed read that opens its session). After each step of the clock the fleets
    are read one after the other, each first in turn, so that every way meets the same
    load of the machine. Fails unless exactly one read in four refreshed its car."""
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
    reads_before = len(simulator.calls)
    elapsed = dict.fromkeys(order, 0.0)
    for step in range(polls):
        await clock.advance(POLL_EVERY)
        for ingestion in order[step % len(order) :] + order[: step % len(order)]:
            with _ingesting(ingestion, services, clock, memories[ingestion]):
                started = time.perf_counter()
                for vehicle_id in fleets[ingestion]:
                    await vehicles.read_status(services, user, vehicle_id)
                elapsed[ingestion] += time.perf_counter() - started
    refreshed = len(simulator.calls) - reads_before
    expected = len(order) * cars * (polls // round(services.settings.status_max_age / POLL_EVERY))
    if refreshed != expected:
        raise RuntimeError(f"status path: {refreshed} provider reads, expected {expected}")
    return {ingestion: seconds * 1000 / (polls * cars) for ingestion, seconds in elapsed.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sessions", description=__doc__)
    parser.add_argument("--database", help="a PostgreSQL URL; default: a new SQLite file")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="also on a new PostgreSQL database (dropped after), if one answers",
    )
    parser.add_argument("--refreshes", type=int, default=200, help="worst case: per round")
    parser.add_argument("--cars", type=int, default=20, help="status path: charging cars")
    parser.add_argument("--polls", type=int, default=40, help="status path: reads per car")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    sizes = (args.refreshes, args.rounds, args.cars, args.polls)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database or f"sqlite://{Path(tmp) / 'bench.sqlite3'}"
        results = asyncio.run(run_sessions(url, *sizes))
    if args.postgres:
        results += asyncio.run(_on_postgres(*sizes))
    for result in results:
        print(result.line())
    return 0


async def _on_postgres(*sizes: int) -> list[SessionsResult]:
    """The same on a database of its own on the bench's PostgreSQL; none without one."""
    base = await postgres_base()
    if base is None:
        return []
    async with postgres_database(base) as url:
        return await run_sessions(url, *sizes)


if __name__ == "__main__":
    raise SystemExit(main())
