"""What ingesting charge states into charging sessions costs the status/refresh path.

In one process over one database (SQLite, or PostgreSQL when given): a charging
simulated car is refreshed from its provider again and again
(``vehicle_status(max_age=0)``: the provider read, the charge-state write, the
session's compare-and-set and sample insert), with session ingestion and, in
interleaved rounds of the same run, without it (``record_state`` swapped for a
no-op in this bench process only). The ratio of the medians is the cost.

``python -m bench.sessions [--database URL] [--refreshes N] [--rounds N]``;
``make bench`` runs it too (``python -m bench --sessions-only`` for just this).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evlink.events import MemoryEventBus
from evlink.models import Tier
from evlink.models.database import apply_migrations, open_database
from evlink.providers.simulator import ManualClock, Simulator
from evlink.resolvers import accounts, sessions, vehicles
from evlink.services import Services
from evlink.settings import Settings

TARGET = 0.10  # issue #19: ingestion costs the status path less than 10 %


@dataclass(frozen=True, slots=True)
class SessionsResult:
    database: str
    with_sessions_ms: float  # median per refresh
    without_sessions_ms: float

    @property
    def cost(self) -> float:
        return self.with_sessions_ms / self.without_sessions_ms - 1

    def line(self) -> str:
        verdict = "within" if self.cost < TARGET else "OVER"
        return (
            f"sessions ({self.database}): refresh {self.without_sessions_ms:.3f} ms without, "
            f"{self.with_sessions_ms:.3f} ms with ingestion: {self.cost:+.1%} "
            f"({verdict} the {TARGET:.0%} target)"
        )


async def _no_sessions(*_: Any) -> None:
    return None


async def run_sessions(database_url: str, refreshes: int = 200, rounds: int = 5) -> SessionsResult:
    """Median milliseconds per refresh of a charging car, with and without ingestion."""
    await apply_migrations(database_url)
    clock = ManualClock()
    simulator = Simulator(clock)
    settings = Settings(database_url=database_url)
    async with open_database(database_url):
        services = Services(settings=settings, provider=simulator, events=MemoryEventBus())
        user = await accounts.create_user(f"bench-{uuid.uuid4().hex[:8]}@example.com", Tier.PRO)
        real = sessions.record_state
        timings: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(rounds):
            for ingest in (True, False):
                vehicle = await accounts.add_vehicle(
                    user, provider="simulator", provider_vehicle_id=_charging_car(simulator)
                )
                sessions.record_state = real if ingest else _no_sessions  # type: ignore[assignment]
                try:
                    timings[ingest].append(await _refreshes(services, clock, vehicle, refreshes))
                finally:
                    sessions.record_state = real  # type: ignore[assignment]
    name = "SQLite" if settings.is_sqlite else "PostgreSQL"
    return SessionsResult(name, statistics.median(timings[True]), statistics.median(timings[False]))


def _charging_car(simulator: Simulator) -> str:
    provider_id = f"sim-charging-{uuid.uuid4().hex[:12]}"
    car = simulator.vehicle(provider_id)
    car.battery_level, car.charge_limit = 10.0, 100
    return provider_id


async def _refreshes(services: Services, clock: ManualClock, vehicle: Any, count: int) -> float:
    """Milliseconds per refresh: each one a new charging state, as a poll reads it."""
    started = time.perf_counter()
    for _ in range(count):
        await clock.advance(30)  # the car has charged: a new state to record
        await vehicles.vehicle_status(services, vehicle, max_age=0, within_budget=False)
    return (time.perf_counter() - started) * 1000 / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sessions", description=__doc__)
    parser.add_argument("--database", help="a PostgreSQL URL; default: a new SQLite file")
    parser.add_argument("--refreshes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database or f"sqlite://{Path(tmp) / 'bench.sqlite3'}"
        result = asyncio.run(run_sessions(url, args.refreshes, args.rounds))
    print(result.line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
