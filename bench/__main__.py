"""`make bench`: every benchmark of bench/, one table, also written to bench/results/latest.md.

Each target server runs in a process of its own (uvicorn on 127.0.0.1, a free
port), and so does each load generator (wrk, the subscriber and fleet clients; only
the fallback HTTP client used where wrk cannot be had runs in this process). Ratios are
always against the baseline measured in the same run, because this machine is
shared and noisy. See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.commands import CommandResult, run_commands
from bench.common import (
    REPO,
    ServerProcess,
    percentile,
    postgres_base,
    postgres_database,
    raise_nofile_limit,
)
from bench.economy import EconomyResult, run_economy
from bench.fleet import P99_LIMIT_MS, PERIOD, SENSORS, FleetResult, StepUp, run_fleet, step_up
from bench.load import CONNECTIONS, LoadResult, Request, Target, ensure_wrk, run_load
from bench.report import Row, fmt_ms, fmt_pair, fmt_rps, latency_ratio, render_table
from bench.sessions import main as sessions_main
from bench.subscriptions import SubscriptionResult, run_subscriptions

RESULTS = REPO / "bench" / "results"
ACTION_DELAY = 1.0  # simulated seconds a START/STOP takes in the command rounds
POLL_INTERVAL_MS = 2000.0  # EVLINK_CHARGING_POLL_INTERVAL's default, for comparison
ECONOMY_MAX_AGE = 2.0
ECONOMY_SECONDS = 6.0
# The fleet scenario (bench/fleet.py).
FLEET_CARS = 10_000
FLEET_WARMUP = 10.0  # seconds: the fleet is seeded in a steady state, this warms the server
FLEET_SECONDS = 60.0
FLEET_PROCESSES = 2  # load-generator processes
FLEET_CEILING = 40_000  # the largest fleet the step-up tries (seeded up front)
FLEET_STEP_FLOOR = 1000  # the smallest fleet the step-up tries
FLEET_STEP_WARMUP = 5.0
FLEET_STEP_SECONDS = 20.0
FLEET_STEP_BUDGET = 120.0  # seconds the step-up may take
# Targets of issue #18 (ratios of the baseline's throughput).
REST_MISS_TARGET = 0.25
GRAPHQL_MISS_TARGET = 0.15
REST_TARGET = 0.70
GRAPHQL_TARGET = 0.60
SUBSCRIPTION_P99_TARGET_MS = 500.0
SUBSCRIPTION_KIB_TARGET = 32.0

# The data of GET /api/status/{id}, through GraphQL.
GRAPHQL_QUERY = (
    "query Status($id: ID!) { vehicle(id: $id) { name lastSeen isReachable "
    "location { latitude longitude } chargeState { batteryLevel range isPluggedIn "
    "isCharging batteryCapacity chargeLimit chargeRate chargeTimeRemaining isFullyCharged "
    "lastUpdated powerDeliveryState maxCurrent } } }"
)


def log(message: str) -> None:
    """Progress on stderr; the table goes to stdout."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


@dataclass
class Backend:
    """Throughput results of evlink on one database, now and before the fixes."""

    name: str
    rest: LoadResult | None = None
    graphql: LoadResult | None = None
    rest_miss: LoadResult | None = None  # the read cache off: every read a miss
    graphql_miss: LoadResult | None = None
    rest_before: LoadResult | None = None
    graphql_before: LoadResult | None = None
    skipped: str = ""


@dataclass
class Run:
    """Everything one `make bench` measured."""

    baseline: list[LoadResult] = field(default_factory=list)
    backends: list[Backend] = field(default_factory=list)
    subscriptions: SubscriptionResult | str | None = None  # str: why it failed
    subscriptions_before: SubscriptionResult | str | None = None
    commands: CommandResult | None = None
    economy: EconomyResult | None = None
    fleet: FleetResult | None = None
    steps: StepUp | None = None
    profiles: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # wrong answers: the run fails
    generator: str = ""
    load_average: str = ""  # the machine's 1/5/15-minute load when the run began

    @property
    def best_baseline(self) -> LoadResult:
        return max(self.baseline, key=lambda r: r.rps)


def rest_target(server: ServerProcess, seeded: ServerProcess | None = None) -> Target:
    """GET /api/status of each car in turn (``seeded``: whose cars and key, if not the server's)."""
    info = (seeded or server).info
    headers = {"Authorization": f"Bearer {info['key']}"}
    paths = [f"/api/status/{vehicle}" for vehicle in info["vehicles"]]
    return Target(server.base_url, [Request("GET", path, headers) for path in paths])


def graphql_target(server: ServerProcess) -> Target:
    headers = {
        "Authorization": f"Bearer {server.info['key']}",
        "Content-Type": "application/json",
    }
    bodies = [
        json.dumps({"query": GRAPHQL_QUERY, "variables": {"id": vehicle}})
        for vehicle in server.info["vehicles"]
    ]
    return Target(server.base_url, [Request("POST", "/graphql", headers, b) for b in bodies])


class WrongAnswer(RuntimeError):
    """evlink answered a bench request wrongly: the run fails."""


async def check_targets(server: ServerProcess) -> dict[str, Any]:
    """Each car's status over REST and GraphQL, checked (its own car, 200, the same
    charge state both ways); before and after the load. Returns the REST bodies."""
    headers = {"Authorization": f"Bearer {server.info['key']}"}
    bodies: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=30) as http:
        for n, vehicle in enumerate(server.info["vehicles"]):
            answer = await http.get(f"/api/status/{vehicle}")
            body = answer.json()
            name = f"Bench car {n}"
            if answer.status_code != 200 or body.get("vehicleName") != name:
                raise WrongAnswer(
                    f"{server.name}: /api/status of {name}: {answer.status_code} {body}"
                )
            bodies[vehicle] = body
            query = {"query": GRAPHQL_QUERY, "variables": {"id": vehicle}}
            answer = await http.post("/graphql", json=query)
            result = answer.json()
            data = (result.get("data") or {}).get("vehicle") or {}
            state = data.get("chargeState") or {}
            if (
                answer.status_code != 200
                or result.get("errors")
                or data.get("name") != name
                or state.get("batteryLevel") != body["chargeState"]["batteryLevel"]
            ):
                raise WrongAnswer(f"{server.name}: GraphQL status of {name}: {result}")
    return bodies


async def measure(label: str, target: Target, seconds: float, wrk: str | None) -> LoadResult:
    """One load run; a single failed request (non-2xx or socket error) fails the bench:
    wrong answers are fast."""
    result = await run_load(target, seconds, wrk)
    log(
        f"{label}: {fmt_rps(result.rps)} req/s, p50 {fmt_ms(result.p50_ms)} ms, "
        f"p99 {fmt_ms(result.p99_ms)} ms, {result.errors} errors"
    )
    if result.errors:
        raise WrongAnswer(f"{label}: {result.errors} of {result.requests} requests failed")
    return result


def evlink_server(name: str, database_url: str, log_dir: Path, *extra: str) -> ServerProcess:
    return ServerProcess(
        name, "bench.serve_evlink", ["--database-url", database_url, *extra], log_dir
    )


async def throughput(
    run: Run,
    backend: Backend,
    baseline: Target,
    servers: Servers,
    args: argparse.Namespace,
    wrk: str | None,
) -> None:
    """Baseline, REST and GraphQL, cached, every read a miss (and before the fixes),
    interleaved ``--repeats`` times; every answer checked before and after.

    The machine is shared: each figure is the best of its repeats (noise only ever
    slows a run down), and the interleaving spreads any slow spell over all of them.
    """
    now, miss, before = servers.now, servers.miss, servers.before
    items: list[tuple[str, Target]] = [
        ("baseline", baseline),
        ("rest", rest_target(now)),
        ("rest_miss", rest_target(miss)),
        ("graphql", graphql_target(now)),
        ("graphql_miss", graphql_target(miss)),
    ]
    if before is not None:
        items += [
            ("rest_before", rest_target(before)),
            ("graphql_before", graphql_target(before)),
        ]
    for repeat in range(args.repeats):
        for name, target in items:
            label = f"{backend.name} {name} [{repeat + 1}/{args.repeats}]"
            result = await measure(label, target, args.seconds, wrk)
            if name == "baseline":
                run.baseline.append(result)
                continue
            best: LoadResult | None = getattr(backend, name)
            if best is None or result.rps > best.rps:
                setattr(backend, name, result)
    for server in servers.all():
        await check_targets(server)


@dataclass
class Servers:
    """The evlink servers of one database: cached (as configured by default), every read
    a miss (``EVLINK_CACHE_TTL=0``), and before the fixes (``--before``)."""

    now: ServerProcess
    miss: ServerProcess
    before: ServerProcess | None = None

    def all(self) -> list[ServerProcess]:
        return [s for s in (self.now, self.miss, self.before) if s is not None]


async def start_servers(
    stack: contextlib.AsyncExitStack, name: str, url: str, tmp: Path, args: argparse.Namespace
) -> Servers:
    """Start the servers of one database (sharing it when ``url`` is PostgreSQL's)."""

    def database(variant: str) -> str:
        return f"sqlite://{tmp / f'{variant}.sqlite3'}" if url == "sqlite" else url

    servers = Servers(
        now=evlink_server(f"evlink-{name}", database("now"), tmp),
        miss=evlink_server(f"evlink-{name}-miss", database("miss"), tmp, "--cache-ttl", "0"),
        before=(
            evlink_server(f"evlink-{name}-before", database("before"), tmp, "--before")
            if args.before
            else None
        ),
    )
    for server in servers.all():
        await stack.enter_async_context(server)
        await check_targets(server)
    return servers


async def profile(
    server: ServerProcess, name: str, target: Target, seconds: float, wrk: str | None
) -> Path:
    """pyinstrument over the server process while ``target`` is under load."""
    out = RESULTS / f"profile-{name}.txt"
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
        (await http.post("/bench/profile/start")).raise_for_status()
        try:
            await run_load(target, seconds, wrk, warmup=0)
        finally:
            (await http.post("/bench/profile/stop", params={"out": str(out)})).raise_for_status()
    log(f"profile of {name} written to {out.relative_to(REPO)}")
    return out


MISS_PROFILE_LINES = 45  # the part of a REST miss's profile printed after the table


def print_miss_profile(profiles: list[Path]) -> None:
    """The head of the REST miss's profile (pyinstrument's call tree), after the table:
    where a miss's time goes, in this run (the whole of it is in its file)."""
    for path in profiles:
        if path.name == "profile-rest-miss.txt":
            lines = path.read_text().splitlines()
            print(f"\nWhere a REST miss's time goes ({path.relative_to(REPO)}, its first lines):")
            print("\n".join(lines[:MISS_PROFILE_LINES]))


async def subscribe(
    server: ServerProcess, args: argparse.Namespace, tmp: Path
) -> SubscriptionResult | str:
    """The subscription benchmark on ``server``; its error text when it could not run."""
    log(f"{args.subscribers} chargeState subscribers on {server.name}…")
    try:
        result = await run_subscriptions(
            server.info,
            server.base_url,
            subscribers=args.subscribers,
            rounds=args.rounds,
            compression=None if args.ws_compression == "none" else "deflate",
            processes=args.subscriber_processes,
            log=tmp / f"subscribers-{server.name}.log",
        )
    except (RuntimeError, OSError, TimeoutError) as exc:
        log(f"subscriptions on {server.name} failed: {exc!r}")
        return f"failed: {exc!r}"[:120]
    log(
        f"{server.name}: change → last subscriber {[round(ms) for ms in result.rounds_ms]} ms; "
        f"{result.full_gcs} full GCs (longest {result.longest_gc_ms:.0f} ms)"
    )
    return result


async def main_phase(run: Run, args: argparse.Namespace, wrk: str | None, tmp: Path) -> None:
    """Throughput on SQLite and PostgreSQL, then subscriptions, commands and profiles
    on the SQLite evlink (one instance, as a single-machine install runs it)."""
    async with contextlib.AsyncExitStack() as stack:
        sqlite = await start_servers(stack, "sqlite", "sqlite", tmp, args)
        bodies = await check_targets(sqlite.now)
        (tmp / "bodies.json").write_text(json.dumps(bodies))
        baseline = ServerProcess(
            "baseline", "bench.serve_baseline", ["--bodies", str(tmp / "bodies.json")], tmp
        )
        await stack.enter_async_context(baseline)
        base_target = rest_target(baseline, sqlite.now)
        backend = Backend("SQLite")
        run.backends.append(backend)
        await throughput(run, backend, base_target, sqlite, args, wrk)

        backend = Backend("PostgreSQL")
        run.backends.append(backend)
        postgres = None if args.no_postgres else await postgres_base()
        if postgres is None:
            backend.skipped = "skipped (--no-postgres)" if args.no_postgres else "no PostgreSQL"
        else:
            try:
                await postgres_phase(run, backend, base_target, postgres, args, wrk, tmp)
            except (asyncpg.PostgresError, OSError) as exc:
                log(f"PostgreSQL phase failed: {exc!r}")
                backend.skipped = f"PostgreSQL failed: {type(exc).__name__}"
        await baseline.stop()
        await sqlite.miss.stop()

        run.subscriptions = await subscribe(sqlite.now, args, tmp)
        if sqlite.before is not None:
            run.subscriptions_before = await subscribe(sqlite.before, args, tmp)
            await sqlite.before.stop()
        log("charging commands…")
        run.commands = await run_commands(
            sqlite.now.info,
            sqlite.now.base_url,
            sqlite.now.ws_url,
            rounds=args.commands,
            action_delay=ACTION_DELAY,
        )
    # Last, on servers of their own (the profiler leaves a process's heap larger).
    if not args.no_profile:
        await profile_phase(run, args, wrk, tmp)


async def profile_phase(run: Run, args: argparse.Namespace, wrk: str | None, tmp: Path) -> None:
    """pyinstrument over a miss (the read cache off) and a cached read, REST and GraphQL."""
    async with contextlib.AsyncExitStack() as stack:
        servers = Servers(
            now=evlink_server("evlink-profile", f"sqlite://{tmp / 'profile.sqlite3'}", tmp),
            miss=evlink_server(
                "evlink-profile-miss",
                f"sqlite://{tmp / 'profile-miss.sqlite3'}",
                tmp,
                "--cache-ttl",
                "0",
            ),
        )
        for server in servers.all():
            await stack.enter_async_context(server)
        for name, server in (("rest-miss", servers.miss), ("rest", servers.now)):
            run.profiles.append(await profile(server, name, rest_target(server), args.seconds, wrk))
        for name, server in (("graphql-miss", servers.miss), ("graphql", servers.now)):
            target = graphql_target(server)
            run.profiles.append(await profile(server, name, target, args.seconds, wrk))


async def postgres_phase(
    run: Run,
    backend: Backend,
    baseline: Target,
    postgres: str,
    args: argparse.Namespace,
    wrk: str | None,
    tmp: Path,
) -> None:
    """Throughput on a PostgreSQL database made for this run (and dropped after it)."""
    async with postgres_database(postgres) as url, contextlib.AsyncExitStack() as stack:
        servers = await start_servers(stack, "postgres", url, tmp, args)
        await throughput(run, backend, baseline, servers, args, wrk)


async def economy_phase(run: Run, tmp: Path) -> None:
    """Provider reads per 1,000 polls, on an evlink of its own (its cars never read)."""
    server = evlink_server("evlink-economy", f"sqlite://{tmp / 'economy.sqlite3'}", tmp)
    async with server:
        log("provider economy…")
        run.economy = await run_economy(
            server.info, server.base_url, max_age=ECONOMY_MAX_AGE, paced_seconds=ECONOMY_SECONDS
        )


async def run(args: argparse.Namespace) -> Run:
    measured = Run(load_average=" / ".join(f"{v:.2f}" for v in os.getloadavg()))
    wrk = ensure_wrk()
    measured.generator = (
        f"wrk, 1 thread, {CONNECTIONS} connections"
        if wrk
        else f"Python asyncio client (wrk missing), {CONNECTIONS} connections"
    )
    with tempfile.TemporaryDirectory(prefix="evlink-bench-") as tmp:
        try:
            if not args.fleet_only:
                await main_phase(measured, args, wrk, Path(tmp))
                await economy_phase(measured, Path(tmp))
            if not args.no_fleet:
                await fleet_phase(measured, args, Path(tmp))
        except WrongAnswer as wrong:
            log(f"FAILED: {wrong}")
            measured.failures.append(str(wrong))
    return measured


def fleet_sizes(args: argparse.Namespace) -> dict[str, Any]:
    """The fleet's sizes and times: the issue's, or ``--fleet-quick``'s small ones."""
    if args.fleet_quick:
        return {"cars": 2000, "warmup": 5.0, "seconds": 20.0, "ceiling": 8000, "budget": 60.0}
    return {
        "cars": args.fleet,
        "warmup": FLEET_WARMUP,
        "seconds": args.fleet_seconds,
        "ceiling": FLEET_CEILING,
        "budget": FLEET_STEP_BUDGET,
    }


async def fleet_phase(run: Run, args: argparse.Namespace, tmp: Path) -> None:
    """The fleet scenario (bench/fleet.py) on an evlink of its own, on SQLite: the fleet
    at its size, then stepped to find the largest one served with p99 < 100 ms."""
    sizes = fleet_sizes(args)
    fleet_file = tmp / "fleet.txt"
    server = ServerProcess(
        "evlink-fleet",
        "bench.serve_evlink",
        [
            "--database-url",
            f"sqlite://{tmp / 'fleet.sqlite3'}"
            + (f"?synchronous={args.fleet_sqlite_sync}" if args.fleet_sqlite_sync else ""),
            "--vehicles",
            "1",
            "--fleet",
            str(max(sizes["cars"], sizes["ceiling"])),
            "--fleet-file",
            str(fleet_file),
            "--churn",
            str(max(1, sizes["cars"] // 1000)),
        ],
        tmp,
    )
    async with server:
        log(f"fleet of {sizes['cars']:,} cars for {sizes['seconds']:g} s…")
        run.fleet = await run_fleet(
            server.base_url,
            server.pid,
            fleet_file,
            sizes["cars"],
            warmup=sizes["warmup"],
            seconds=sizes["seconds"],
            processes=FLEET_PROCESSES,
        )
        fleet = run.fleet
        log(
            f"fleet: p50 {fmt_ms(fleet.p50_ms)} ms, p99 {fmt_ms(fleet.p99_ms)} ms, "
            f"{fleet.errors} errors, {fleet.unanswered} unanswered, "
            f"{fleet.cpu_per_1000:.2f} CPU s / 1,000 requests"
        )
        if fleet.errors:
            raise WrongAnswer(f"fleet: {fleet.errors} wrong answers: {fleet.samples}")
        run.steps = await step_up(
            server.base_url,
            server.pid,
            fleet_file,
            known=fleet,
            start=sizes["cars"],
            floor=FLEET_STEP_FLOOR if not args.fleet_quick else 500,
            ceiling=sizes["ceiling"],
            warmup=FLEET_STEP_WARMUP,
            seconds=FLEET_STEP_SECONDS,
            budget=sizes["budget"],
            processes=FLEET_PROCESSES,
            log=log,
        )


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def throughput_rows(run: Run, backend: Backend) -> list[Row]:
    """The issue's four throughput rows on one database, each with its latencies."""
    name = f"evlink {backend.name}"
    if backend.skipped or None in (
        backend.rest,
        backend.graphql,
        backend.rest_miss,
        backend.graphql_miss,
    ):
        return [Row(f"{name}: throughput", now=backend.skipped or "failed")]
    base = run.best_baseline
    rows: list[Row] = []
    for label, result, before, target, rest in (
        ("REST /api/status, every read a miss", backend.rest_miss, None, REST_MISS_TARGET, None),
        (
            "GraphQL vehicle{chargeState}, every read a miss",
            backend.graphql_miss,
            None,
            GRAPHQL_MISS_TARGET,
            backend.rest_miss,
        ),
        ("REST /api/status, cached", backend.rest, backend.rest_before, REST_TARGET, None),
        (
            "GraphQL vehicle{chargeState}, cached",
            backend.graphql,
            backend.graphql_before,
            GRAPHQL_TARGET,
            backend.rest,
        ),
    ):
        assert result is not None
        ratio = result.rps / base.rps
        rows.append(
            Row(
                f"{name} {label}: req/s",
                fmt_rps(before.rps) if before else "",
                fmt_rps(result.rps),
                f"{ratio:.2f}",
                f"{result.rps / rest.rps:.2f}" if rest else "",
                f"≥ {target:.2f} x baseline",
                _met(ratio >= target),
            )
        )
        rows.append(
            Row(
                f"{name} {label}: p50 / p99 ms",
                fmt_pair(before),
                fmt_pair(result),
                latency_ratio(result, base),
                latency_ratio(result, rest) if rest else "",
            )
        )
    return rows


def subscription_rows(run: Run, subscribers: int) -> list[Row]:
    subs, before = run.subscriptions, run.subscriptions_before
    label = f"{subscribers:,} chargeState subscribers (SQLite)"
    if not isinstance(subs, SubscriptionResult):
        return [Row(f"{label}", now=subs or "not run")]
    if not isinstance(before, SubscriptionResult):
        before = None

    def both(cell: Callable[[SubscriptionResult], str]) -> dict[str, str]:
        return {"before": cell(before) if before else "", "now": cell(subs)}

    def last(result: SubscriptionResult) -> str:
        lost = f", {result.lost_rounds} rounds lost" if result.lost_rounds else ""
        rounds = result.rounds_ms
        return f"{fmt_ms(percentile(rounds, 50))} / {fmt_ms(percentile(rounds, 99))}{lost}"

    def each(result: SubscriptionResult) -> str:
        deliveries = result.deliveries_ms
        return f"{fmt_ms(percentile(deliveries, 50))} / {fmt_ms(percentile(deliveries, 99))}"

    def memory(result: SubscriptionResult) -> str:
        return (
            f"{result.kib_per_subscription:.0f} (RSS {result.rss_before_kib / 1024:.0f} → "
            f"{result.rss_after_kib / 1024:.0f} MiB)"
        )

    def client_share(result: SubscriptionResult) -> str:
        server = max(result.server_cpu, default=0.0)
        client = max(result.client_cpu, default=0.0)
        retries = f", {result.retries} retries" if result.retries else ""
        return f"{server:.2f} / {client:.2f}{retries}"

    def collections(result: SubscriptionResult) -> str:
        return f"{result.full_gcs} (longest {result.longest_gc_ms:.0f} ms)"

    p99 = percentile(subs.rounds_ms, 99)
    return [
        Row(
            f"{label}: change → last subscriber, p50 / p99 ms ({len(subs.rounds_ms)} rounds)",
            **both(last),
            target=f"p99 < {SUBSCRIPTION_P99_TARGET_MS:.0f} ms",
            met=_met(p99 < SUBSCRIPTION_P99_TARGET_MS and not subs.lost_rounds),
        ),
        Row(f"{label}: change → each subscriber, p50 / p99 ms", **both(each)),
        Row(f"{label}: server's full GC passes during the rounds", **both(collections)),
        Row(
            f"{label}: memory per idle subscription, KiB",
            **both(memory),
            target=f"≤ {SUBSCRIPTION_KIB_TARGET:.0f} KiB",
            met=_met(subs.kib_per_subscription <= SUBSCRIPTION_KIB_TARGET),
        ),
        Row(
            f"{label}: time to connect and subscribe all, s",
            **both(lambda result: f"{result.connect_seconds:.1f}"),
        ),
        Row(
            f"{label}: CPU s per round, server / busiest of the "
            f"{subs.processes} subscriber processes (max)",
            **both(client_share),
        ),
    ]


def command_rows(run: Run) -> list[Row]:
    commands = run.commands
    if commands is None:
        return []
    times = commands.confirmed_ms
    p99 = percentile(times, 99)
    others = f"; not confirmed: {', '.join(commands.other_ends)}" if commands.other_ends else ""
    limit = POLL_INTERVAL_MS / 4
    return [
        Row(
            f"Command: provider state change → CONFIRMED event, p50 / p99 / max ms "
            f"({len(times)} rounds, poll interval {POLL_INTERVAL_MS:,.0f} ms){others}",
            now=" / ".join(
                fmt_ms(v) for v in (percentile(times, 50), p99, max(times, default=math.nan))
            ),
            target=f"event path: p99 < {limit:.0f} ms",
            met=_met(p99 < limit and not commands.other_ends),
        )
    ]


def economy_rows(run: Run) -> list[Row]:
    economy = run.economy
    if economy is None:
        return []
    closest = (
        "no car read twice"
        if math.isinf(economy.closest_reads)
        else (f"closest reads of one car {economy.closest_reads:.2f} s apart")
    )
    return [
        Row(
            f"Provider reads for 1,000 concurrent polls over {economy.vehicles} never-read cars "
            "(max age 60 s)",
            now=str(economy.burst_calls),
            target=f"{economy.vehicles} (one per car)",
            met=_met(economy.burst_calls <= economy.vehicles and not economy.errors),
        ),
        Row(
            f"Provider reads for 1,000 polls over {economy.paced_seconds:.1f} s, "
            f"{economy.vehicles} cars, max age {economy.max_age:g} s "
            f"(≤ {economy.paced_windows} windows per car)",
            now=f"{economy.paced_calls}; {closest}",
            target=f"one per car per window (reads ≥ {economy.max_age:g} s apart)",
            met=_met(economy.one_per_window and not economy.errors),
        ),
    ]


def fleet_rows(run: Run) -> list[Row]:
    """The fleet scenario's figures (bench/fleet.py)."""
    fleet, steps = run.fleet, run.steps
    if fleet is None:
        return [Row("Fleet scenario", now="not run")]
    label = (
        f"Fleet (SQLite): {fleet.vehicles:,} cars of as many users, {SENSORS} REST sensors "
        f"each every {PERIOD:g} s ({fleet.rate:,.0f} req/s), {fleet.seconds:g} s"
    )
    rows = [
        Row(
            f"{label}: p50 / p99 ms (from each poll's scheduled time)",
            now=f"{fmt_ms(fleet.p50_ms)} / {fmt_ms(fleet.p99_ms)}",
            target=f"p99 < {P99_LIMIT_MS:.0f} ms",
            met=_met(fleet.serves),
        ),
        Row(
            f"{label}: wrong or non-2xx answers / unanswered within 10 s after the window",
            now=f"{fleet.errors} / {fleet.unanswered} (of {fleet.scheduled:,} polls)",
            target="0 wrong",
            met=_met(not fleet.errors),
        ),
        Row(
            f"{label}: server CPU s per 1,000 answered requests",
            now=f"{fleet.cpu_per_1000:.2f} ({fleet.server_cpu_seconds:.1f} CPU s, "
            f"{fleet.answered:,} answers; {fleet.changes} cars changed; "
            f"{fleet.full_gcs} full GCs, longest {fleet.longest_gc_ms:.0f} ms)",
        ),
        Row(
            f"{label}: load generator ({fleet.processes} processes): busiest's CPU share, "
            "loop lag p99 / max ms",
            now=f"{fleet.generator_cpu_share:.0%}, {fmt_ms(fleet.generator_lag_p99_ms)} / "
            f"{fmt_ms(fleet.generator_lag_max_ms)}",
            target="< 50 %, p99 < 10 ms",
            met=_met(fleet.generator_ok),
        ),
    ]
    if steps is not None:
        tried = ", ".join(
            f"{s.vehicles:,}: {fmt_ms(s.p99_ms)}{'' if s.generator_ok else ' (generator late)'}"
            for s in steps.steps
        )
        limit = " (time budget spent)" if steps.budget_spent else ""
        rows.append(
            Row(
                f"Fleet (SQLite): largest fleet one process serves with p99 < "
                f"{P99_LIMIT_MS:.0f} ms (cars: p99 ms of each step{limit}: {tried})",
                now=f"{steps.largest:,}",
                target=f"≥ {FLEET_CARS:,}",
                met=_met(steps.largest >= FLEET_CARS),
            )
        )
    return rows


def build_rows(run: Run, args: argparse.Namespace) -> list[Row]:
    base = run.best_baseline
    rows = [
        Row(
            "Baseline (bare Starlette, status JSON from memory): req/s",
            now=fmt_rps(base.rps),
            vs_baseline="1.00",
        ),
        Row("Baseline: p50 / p99 ms", now=fmt_pair(base)),
    ]
    for backend in run.backends:
        rows += throughput_rows(run, backend)
    rows += subscription_rows(run, args.subscribers)
    rows += command_rows(run)
    rows += economy_rows(run)
    rows += fleet_rows(run)
    return rows


def _git_revision() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 (git from PATH)
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def _cpu() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def write_report(run: Run, rows: list[Row], args: argparse.Namespace, elapsed: float) -> str:
    """The table and the run's conditions, to ``results/latest.md`` (``--fleet-only``:
    to ``results/fleet.md``, leaving the whole run's file as it was)."""
    table = render_table(rows)
    when = (
        f"- When: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {_git_revision()}, "
        f"{os.cpu_count()} cores ({_cpu()}), Python {platform.python_version()}; "
        f"the whole run took {elapsed:.0f} s."
    )
    if args.fleet_only:
        document = "\n".join(
            [
                "# evlink benchmarks: the fleet scenario alone",
                "",
                "Written by `python -m bench --fleet-only`; bench/README.md explains each number.",
                "",
                table,
                "",
                when,
                f"- Load average when the run began: {run.load_average}.",
                "",
            ]
        )
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "fleet.md").write_text(document)
        return table
    runs = ", ".join(fmt_rps(r.rps) for r in run.baseline)
    notes = [
        when,
        f"- Load: {run.generator}, {args.seconds:g} s per measurement after 1 s of warm-up; "
        "20 cars requested in turn. Each load figure is the best of "
        f"{args.repeats} interleaved runs (the machine is shared: noise only slows a run down). "
        f"Baseline runs (req/s): {runs}; the best is the reference. "
        f"Load average when the run began: {run.load_average}.",
        "- *vs baseline*: throughput as a fraction of the baseline's (higher is better); "
        "latencies as multiples of the baseline's (lower is better).",
        "- *Before fixes*: the same evlink with the benchmark's fixes undone "
        "(`--before`, bench/before.py), measured in the same run.",
        f"- Subscriptions: the clients offer websocket compression ({args.ws_compression}); "
        "evlink accepts it only with EVLINK_WS_COMPRESSION=true (off by default).",
    ]
    if run.profiles:
        names = ", ".join(f"`{p.relative_to(REPO)}`" for p in run.profiles)
        notes.append(f"- Profiles (pyinstrument, under load): {names}.")
    document = "\n".join(
        [
            "# evlink benchmarks: latest run",
            "",
            "Written by `make bench` (`python -m bench`); bench/README.md explains each number.",
            "",
            table,
            "",
            *notes,
            "",
        ]
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.md").write_text(document)
    return table


def _loop_factory() -> Any:
    """uvloop when it is there (uvicorn[standard] brings it): a faster client."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="each load measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved load rounds")
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=10, help="subscription rounds")
    parser.add_argument(
        "--subscriber-processes", type=int, default=4, help="processes holding the subscribers"
    )
    parser.add_argument("--commands", type=int, default=20, help="command rounds")
    parser.add_argument("--ws-compression", choices=("deflate", "none"), default="deflate")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument(
        "--before", action="store_true", help="also measure evlink without the #10 fixes"
    )
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-fleet", action="store_true", help="skip the fleet scenario")
    parser.add_argument("--fleet", type=int, default=FLEET_CARS, help="cars of the fleet")
    parser.add_argument("--fleet-seconds", type=float, default=FLEET_SECONDS)
    parser.add_argument(
        "--fleet-quick", action="store_true", help="a small fleet and a short step-up"
    )
    parser.add_argument("--sessions-only", action="store_true", help="only bench/sessions.py")
    parser.add_argument(
        "--fleet-sqlite-sync",
        choices=("FULL", "NORMAL"),
        help="the fleet's SQLite synchronous mode (default: evlink's, NORMAL)",
    )
    parser.add_argument(
        "--fleet-only",
        action="store_true",
        help="only the fleet scenario (written to bench/results/fleet.md)",
    )
    args = parser.parse_args(argv)
    sessions_args = [] if args.no_postgres else ["--postgres"]
    if args.sessions_only:
        return sessions_main(sessions_args)
    raise_nofile_limit()
    started = time.monotonic()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        measured = runner.run(run(args))
    rows = fleet_rows(measured) if args.fleet_only else build_rows(measured, args)
    table = write_report(measured, rows, args, time.monotonic() - started)
    print(table)
    written = RESULTS / ("fleet.md" if args.fleet_only else "latest.md")
    print(f"\n(written to {written.relative_to(REPO)})")
    print_miss_profile(measured.profiles)
    for failure in measured.failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    if args.fleet_only:
        return 1 if measured.failures else 0
    sessions_failed = sessions_main(sessions_args)  # issue #19: what ingestion costs a status
    return 1 if measured.failures or sessions_failed else 0


if __name__ == "__main__":
    sys.exit(main())
