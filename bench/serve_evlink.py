"""evlink as the benchmarks run it: a seeded database, the simulator, bench-only controls.

``python -m bench.serve_evlink --database-url URL`` migrates the database,
makes one PRO user with a key and ``--vehicles`` plugged-in simulated cars
(plus one car for the subscription rounds and one for the command rounds),
then serves evlink under uvicorn on a free port of 127.0.0.1, with the same
uvicorn settings as the baseline (:func:`bench.serve_baseline.uvicorn_config`)
and evlink's own :class:`~evlink.server.EvlinkServer`. Once it serves it prints
``BENCH-READY {"port", "pid", "key", "vehicles", ...}``.

The simulator runs on a :class:`~evlink.providers.simulator.ManualClock`, so
nothing changes unless the bench says so. Freshness (``EVLINK_STATUS_MAX_AGE``)
still runs on real time. The bench talks to the simulator through routes that
exist only in this process, under ``/bench/``:

- ``GET /bench/calls``: the provider calls the simulator has seen (``Simulator.calls``), by
  operation, and when each vehicle read happened (``reads``: ``[monotonic, vehicle]``);
- ``POST /bench/plug/{provider_vehicle_id}?plugged=0|1``: plug or unplug a car and
  push the change at once, as a webhook would; answers ``{"changed_at"}`` (monotonic);
- ``POST /bench/advance?seconds=S``: move the simulator's clock (actions that fall
  due take effect and are pushed); answers ``{"changed_at"}`` (monotonic, just before);
- ``POST /bench/max-age?seconds=S``: change ``EVLINK_STATUS_MAX_AGE`` of the running app
  (and empty its read cache, whose entries were timed by the old one);
- ``POST /bench/gc``: CPython's full garbage collections since the last call (count,
  longest pause in ms);
- ``POST /bench/profile/start`` / ``POST /bench/profile/stop?out=PATH``: pyinstrument
  over the whole server process, its text report written to ``PATH``;
- ``POST /bench/memory``: a full garbage collection, then the process's RSS (KiB) and
  how many objects the collector tracks (``?trim=1``: also the RSS once glibc has given
  back the free memory it holds, ``malloc_trim``);
- ``POST /bench/tracemalloc/start?frames=F`` / ``POST /bench/tracemalloc/diff?out=PATH&per=N``:
  what was allocated in between and is still held (after a full collection), by file
  and by line, in bytes per ``N``, written to ``PATH``;
- ``GET /bench/churn``: how many cars the fleet's churn has changed (``{"changes"}``).

``--cache-ttl 0`` serves with the read cache off (``EVLINK_CACHE_TTL``): every read
is a miss. ``--fleet N --fleet-file PATH`` also makes the fleet of :mod:`bench.fleet`
(``N`` users with a key and a car each, written to ``PATH``) and changes
``--churn`` of its cars every second.

``--before`` puts back evlink's code as it was before the benchmark's fixes
(:mod:`bench.before`), so the "before" column is measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import logging
import os
import socket
import time
import tracemalloc
import uuid
from collections import Counter
from dataclasses import fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench import before
from bench.common import announce_ready, listening_socket, raise_nofile_limit, rss_kib
from bench.fleet import Churn, ChurnCars, seed_fleet
from bench.serve_baseline import uvicorn_config
from evlink.app import create_app
from evlink.domain import VehicleData
from evlink.models import Tier
from evlink.models.database import apply_migrations, open_database
from evlink.providers.simulator import ManualClock, Simulator
from evlink.resolvers import accounts
from evlink.resolvers.auth import issue_key
from evlink.server import EvlinkServer, server_options
from evlink.settings import Settings

__all__ = ["main", "seed"]


async def seed(database_url: str, vehicles: int) -> dict[str, Any]:
    """Migrate, then one PRO user, its key and its cars; returns what the bench needs."""
    await apply_migrations(database_url)
    async with open_database(database_url):
        user = await accounts.create_user(f"bench-{uuid.uuid4().hex[:8]}@example.com", Tier.PRO)
        key = (await issue_key(user, name="bench")).secret

        async def car(name: str) -> tuple[str, str]:
            provider_id = f"sim-plugged-{uuid.uuid4().hex[:12]}"
            vehicle = await accounts.add_vehicle(
                user, provider="simulator", provider_vehicle_id=provider_id, name=name
            )
            return str(vehicle.id), provider_id

        fleet = [await car(f"Bench car {n}") for n in range(vehicles)]
        watched = await car("Watched car")
        commanded = await car("Commanded car")
    return {
        "key": key,
        "vehicles": [vehicle_id for vehicle_id, _ in fleet],
        "watched": {"id": watched[0], "provider_id": watched[1]},
        "commanded": {"id": commanded[0], "provider_id": commanded[1]},
    }


# Limits far above what the bench sends: the limiter still counts every request (its
# cost is measured), but never refuses one. Only the settings this evlink has are set.
UNLIMITED = {
    "quotas": "free=1000000000/30days;basic=1000000000/30days;pro=1000000000/30days",
    "command_quotas": "pro=1000000000/day",
    "burst": "1000000000/minute",
    "vehicle_limits": "free=unlimited;basic=unlimited;pro=unlimited",
    "ws_max_connections_per_user": 1_000_000,
    # The subscribers all connect from 127.0.0.1, many at once.
    "ws_pending_per_address": 1_000_000,
}


def bench_settings(**values: Any) -> Settings:
    """evlink's defaults, with the bench's values and the limits out of the way."""
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in {**UNLIMITED, **values}.items() if k in known})


class TimedSimulator(Simulator):
    """The simulator, also noting when each vehicle read happened."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads: list[tuple[float, str]] = []

    async def get_vehicle(self, vehicle_id: str) -> VehicleData:
        self.reads.append((time.monotonic(), vehicle_id))
        return await super().get_vehicle(vehicle_id)


class FullCollections:
    """Counts CPython's full (oldest-generation) garbage collections and their pauses."""

    def __init__(self) -> None:
        self.pauses_ms: list[float] = []
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses_ms.append((time.perf_counter() - self._started) * 1000)

    def take(self) -> dict[str, Any]:
        """The pauses since the last call, then forget them."""
        pauses, self.pauses_ms = self.pauses_ms, []
        return {"count": len(pauses), "max_ms": max(pauses, default=0.0)}


def bench_routes(
    app: Any, simulator: Simulator, clock: ManualClock, churn: Churn | None = None
) -> list[Route]:
    """The ``/bench/`` controls (see the module docstring)."""
    profiler: dict[str, Any] = {}
    traced: dict[str, tracemalloc.Snapshot] = {}
    collections = FullCollections()

    async def calls(request: Request) -> JSONResponse:
        by_operation = Counter(call.split(" ", 1)[0] for call in simulator.calls)
        reads = simulator.reads if isinstance(simulator, TimedSimulator) else []
        return JSONResponse({"total": len(simulator.calls), **by_operation, "reads": reads})

    async def plug(request: Request) -> JSONResponse:
        provider_id = request.path_params["provider_id"]
        plugged = request.query_params.get("plugged", "1") == "1"
        await clock.advance(1.0)  # a new provider timestamp for the change
        changed_at = time.monotonic()
        simulator.update_vehicle(provider_id, is_plugged_in=plugged)
        await simulator.step()
        return JSONResponse({"changed_at": changed_at})

    async def advance(request: Request) -> JSONResponse:
        seconds = float(request.query_params.get("seconds", "1"))
        changed_at = time.monotonic()
        await clock.advance(seconds)
        return JSONResponse({"changed_at": changed_at})

    async def profile_start(request: Request) -> JSONResponse:
        from pyinstrument import Profiler

        profiler["current"] = Profiler(interval=0.0005, async_mode="disabled")
        profiler["current"].start()
        return JSONResponse({"profiling": True})

    async def profile_stop(request: Request) -> JSONResponse:
        current = profiler.pop("current")
        current.stop()
        show_all = request.query_params.get("all") == "1"
        text = current.output_text(unicode=True, color=False, show_all=show_all)
        await asyncio.to_thread(Path(request.query_params["out"]).write_text, text)
        return JSONResponse({"profiling": False})

    async def churned(request: Request) -> JSONResponse:
        return JSONResponse({"changes": churn.changes if churn is not None else 0})

    async def full_gcs(request: Request) -> JSONResponse:
        return JSONResponse(collections.take())

    async def memory(request: Request) -> JSONResponse:
        gc.collect()
        rss = rss_kib(os.getpid())
        found = {"rss_kib": rss, "objects": len(gc.get_objects())}
        if request.query_params.get("trim") == "1":  # what glibc holds free, given back
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            found["rss_after_malloc_trim_kib"] = rss_kib(os.getpid())
        return JSONResponse(found)

    async def trace_start(request: Request) -> JSONResponse:
        gc.collect()
        tracemalloc.start(int(request.query_params.get("frames", "1")))
        traced["before"] = tracemalloc.take_snapshot()
        return JSONResponse({"tracing": True})

    async def trace_diff(request: Request) -> JSONResponse:
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        per = int(request.query_params.get("per", "1"))
        text = memory_report(
            traced.pop("before"), after, per, int(request.query_params.get("top", "40"))
        )
        await asyncio.to_thread(Path(request.query_params["out"]).write_text, text)
        return JSONResponse({"tracing": False})

    async def max_age(request: Request) -> JSONResponse:
        services = app.state.services
        seconds = float(request.query_params["seconds"])
        services.settings = replace(services.settings, status_max_age=seconds)
        # What the read cache holds was timed by the old max age.
        services.cache.clear()
        return JSONResponse({"status_max_age": seconds})

    return [
        Route("/bench/calls", calls, methods=["GET"]),
        Route("/bench/churn", churned, methods=["GET"]),
        Route("/bench/gc", full_gcs, methods=["POST"]),
        Route("/bench/max-age", max_age, methods=["POST"]),
        Route("/bench/memory", memory, methods=["POST"]),
        Route("/bench/tracemalloc/start", trace_start, methods=["POST"]),
        Route("/bench/tracemalloc/diff", trace_diff, methods=["POST"]),
        Route("/bench/plug/{provider_id}", plug, methods=["POST"]),
        Route("/bench/advance", advance, methods=["POST"]),
        Route("/bench/profile/start", profile_start, methods=["POST"]),
        Route("/bench/profile/stop", profile_stop, methods=["POST"]),
    ]


def memory_report(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, per: int, top: int = 40
) -> str:
    """What was allocated between two snapshots and is still held, by file and by line
    (and by call stack, when traced with more than one frame), in bytes per ``per`` (the
    subscriptions opened in between), the ``top`` largest of each."""
    lines = []
    keys = ["filename", "lineno"]
    if after.traceback_limit > 1:
        keys.append("traceback")
    for key in keys:
        stats = after.compare_to(before, key)
        total = sum(stat.size_diff for stat in stats)
        lines.append(f"## by {key}: {total / per:.0f} bytes per subscription in all")
        for stat in stats[:top]:
            where = stat.traceback[0]
            lines.append(
                f"{stat.size_diff / per:9.0f} B {stat.count_diff / per:7.1f} blocks  "
                f"{where.filename}:{where.lineno if key != 'filename' else ''}"
            )
            if key == "traceback":
                lines.extend(
                    f"{'':30}{frame.filename}:{frame.lineno}" for frame in stat.traceback[1:]
                )
        lines.append("")
    return "\n".join(lines)


class _AnnouncingEvlinkServer(EvlinkServer):
    """evlink's server that prints the ready line once it accepts connections."""

    def __init__(
        self, config: uvicorn.Config, app: Any, info: dict[str, Any], churn: Churn | None
    ) -> None:
        super().__init__(config, app.state.open_sockets)
        self.info = info
        self.churn = churn
        self._churning: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.churn is not None:
            self._churning = asyncio.create_task(self.churn.run(), name="bench-churn")
        announce_ready(self.info)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._churning is not None:
            self._churning.cancel()
        await super().shutdown(sockets)


async def seed_fleet_database(
    database_url: str, count: int, path: Path, max_age: float
) -> list[str]:
    """:func:`bench.fleet.seed_fleet` on the migrated database."""
    async with open_database(database_url):
        return await seed_fleet(count, path, max_age)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--vehicles", type=int, default=20)
    parser.add_argument("--action-delay", type=float, default=1.0, help="simulated seconds")
    parser.add_argument("--before", action="store_true", help="evlink without the bench fixes")
    parser.add_argument(
        "--ws-pending-per-address", type=int, default=None, help="EVLINK_WS_PENDING_PER_ADDRESS"
    )
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--ws-compression", action="store_true", help="EVLINK_WS_COMPRESSION=true")
    parser.add_argument("--cache-ttl", type=float, default=None, help="EVLINK_CACHE_TTL")
    parser.add_argument("--fleet", type=int, default=0, help="users with a key and a car each")
    parser.add_argument("--fleet-file", type=Path, help="where the fleet's keys are written")
    parser.add_argument("--churn", type=int, default=0, help="fleet cars changed per second")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    raise_nofile_limit()
    if args.before:
        before.apply()
    settings = bench_settings(
        database_url=args.database_url,
        log_level="WARNING",
        simulator_action_delay=args.action_delay,
        **before.SETTINGS if args.before else {},
        **(
            {"ws_pending_per_address": args.ws_pending_per_address}
            if args.ws_pending_per_address
            else {}
        ),
        **({"cache_ttl": args.cache_ttl} if args.cache_ttl is not None else {}),
        **({"ws_compression": True} if args.ws_compression else {}),
    )
    seeded = asyncio.run(seed(settings.database_url, args.vehicles))
    clock = ManualClock(datetime.now(UTC))
    simulator = TimedSimulator(
        clock,
        action_delay=settings.simulator_action_delay,
        store=ChurnCars() if args.fleet else None,
    )
    churn: Churn | None = None
    if args.fleet:
        provider_ids = asyncio.run(
            seed_fleet_database(
                settings.database_url, args.fleet, args.fleet_file, settings.status_max_age
            )
        )
        churn = Churn(simulator, clock, provider_ids, args.churn)
    app = create_app(settings, provider=simulator)
    app.router.routes.extend(bench_routes(app, simulator, clock, churn))
    sock = listening_socket(port=args.port)
    info = {"port": sock.getsockname()[1], "pid": os.getpid(), "before": args.before, **seeded}
    config = uvicorn_config(app, **server_options(settings))
    _AnnouncingEvlinkServer(config, app, info, churn).run(sockets=[sock])


if __name__ == "__main__":
    main()
