"""`make bench`: every benchmark of bench/, one table, also written to bench/results/latest.md.

Each target server runs in a process of its own (uvicorn on 127.0.0.1, a free
port); the load generators run in this process (and wrk in its own). Ratios are
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
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from bench.commands import CommandResult, run_commands
from bench.common import REPO, ServerProcess, percentile, raise_nofile_limit
from bench.economy import EconomyResult, run_economy
from bench.load import CONNECTIONS, LoadResult, Request, Target, ensure_wrk, run_load
from bench.report import Row, fmt_ms, fmt_pair, fmt_rps, latency_ratio, render_table
from bench.sessions import main as sessions_main
from bench.subscriptions import SubscriptionResult, run_subscriptions

RESULTS = REPO / "bench" / "results"
DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432/test"
ACTION_DELAY = 1.0  # simulated seconds a START/STOP takes in the command rounds
POLL_INTERVAL_MS = 2000.0  # EVLINK_CHARGING_POLL_INTERVAL's default, for comparison
ECONOMY_MAX_AGE = 2.0
ECONOMY_SECONDS = 6.0
# Targets of issue #10.
REST_TARGET = 0.50
GRAPHQL_TARGET = 0.35
SUBSCRIPTION_P99_TARGET_MS = 250.0

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
    profiles: list[Path] = field(default_factory=list)
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


async def check_targets(server: ServerProcess) -> dict[str, Any]:
    """One request of each kind, checked, before any load; returns the status bodies."""
    headers = {"Authorization": f"Bearer {server.info['key']}"}
    bodies: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=30) as http:
        for vehicle in server.info["vehicles"]:
            answer = await http.get(f"/api/status/{vehicle}")
            answer.raise_for_status()
            bodies[vehicle] = answer.json()
            query = {"query": GRAPHQL_QUERY, "variables": {"id": vehicle}}
            result = (await http.post("/graphql", json=query)).json()
            if result.get("errors") or not result["data"]["vehicle"]["chargeState"]:
                raise RuntimeError(f"{server.name}: the GraphQL query failed: {result}")
    return bodies


async def measure(label: str, target: Target, seconds: float, wrk: str | None) -> LoadResult:
    """One load run; more than 1 % failed requests (wrong answers are fast) stops the bench."""
    result = await run_load(target, seconds, wrk)
    log(
        f"{label}: {fmt_rps(result.rps)} req/s, p50 {fmt_ms(result.p50_ms)} ms, "
        f"p99 {fmt_ms(result.p99_ms)} ms, {result.errors} errors"
    )
    if result.errors > result.requests / 100:
        raise RuntimeError(f"{label}: {result.errors} of {result.requests} requests failed")
    return result


def evlink_server(name: str, database_url: str, log_dir: Path, *extra: str) -> ServerProcess:
    return ServerProcess(
        name, "bench.serve_evlink", ["--database-url", database_url, *extra], log_dir
    )


async def postgres_base() -> str | None:
    """The PostgreSQL to create the bench database on, if one answers."""
    url = os.environ.get("EVLINK_TEST_DATABASE_URL") or DEFAULT_POSTGRES
    try:
        connection = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        log(f"PostgreSQL at {url} does not answer ({type(exc).__name__}); skipped")
        return None
    await connection.close()
    return url


@contextlib.asynccontextmanager
async def postgres_database(base: str) -> Any:
    """A database with a random name, dropped afterwards (as tests/conftest.py does)."""
    name = f"evlink_bench_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(base)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    try:
        yield urlunsplit(urlsplit(base)._replace(path=f"/{name}"))
    finally:
        connection = await asyncpg.connect(base)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()


async def throughput(
    run: Run,
    backend: Backend,
    baseline: Target,
    now: ServerProcess,
    before: ServerProcess | None,
    args: argparse.Namespace,
    wrk: str | None,
) -> None:
    """Baseline, REST and GraphQL, now and before the fixes, interleaved ``--repeats`` times.

    The machine is shared: each figure is the best of its repeats (noise only ever
    slows a run down), and the interleaving spreads any slow spell over all of them.
    """
    items: list[tuple[str, Target]] = [("baseline", baseline), ("rest", rest_target(now))]
    if before is not None:
        items.append(("rest_before", rest_target(before)))
    items.append(("graphql", graphql_target(now)))
    if before is not None:
        items.append(("graphql_before", graphql_target(before)))
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


async def subscribe(server: ServerProcess, args: argparse.Namespace) -> SubscriptionResult | str:
    """The subscription benchmark on ``server``; its error text when it could not run."""
    log(f"{args.subscribers} chargeState subscribers on {server.name}…")
    try:
        result = await run_subscriptions(
            server.info,
            server.base_url,
            server.ws_url,
            subscribers=args.subscribers,
            rounds=args.rounds,
            compression=None if args.ws_compression == "none" else "deflate",
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
        sqlite = evlink_server("evlink-sqlite", f"sqlite://{tmp / 'now.sqlite3'}", tmp)
        await stack.enter_async_context(sqlite)
        bodies = await check_targets(sqlite)
        (tmp / "bodies.json").write_text(json.dumps(bodies))
        baseline = ServerProcess(
            "baseline", "bench.serve_baseline", ["--bodies", str(tmp / "bodies.json")], tmp
        )
        await stack.enter_async_context(baseline)
        base_target = rest_target(baseline, sqlite)

        before: ServerProcess | None = None
        if not args.no_before:
            before = evlink_server(
                "evlink-sqlite-before", f"sqlite://{tmp / 'before.sqlite3'}", tmp, "--before"
            )
            await stack.enter_async_context(before)
            await check_targets(before)
        backend = Backend("SQLite")
        run.backends.append(backend)
        await throughput(run, backend, base_target, sqlite, before, args, wrk)

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

        run.subscriptions = await subscribe(sqlite, args)
        if before is not None:
            run.subscriptions_before = await subscribe(before, args)
            await before.stop()
        log("charging commands…")
        run.commands = await run_commands(
            sqlite.info,
            sqlite.base_url,
            sqlite.ws_url,
            rounds=args.commands,
            action_delay=ACTION_DELAY,
        )
        # Last: the profiler leaves the process's heap larger (the memory figures above).
        if not args.no_profile:
            for name, target in (
                ("rest", rest_target(sqlite)),
                ("graphql", graphql_target(sqlite)),
            ):
                run.profiles.append(await profile(sqlite, name, target, args.seconds, wrk))


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
        now = evlink_server("evlink-postgres", url, tmp)
        await stack.enter_async_context(now)
        await check_targets(now)
        before: ServerProcess | None = None
        if not args.no_before:
            before = evlink_server("evlink-postgres-before", url, tmp, "--before")
            await stack.enter_async_context(before)
            await check_targets(before)
        await throughput(run, backend, baseline, now, before, args, wrk)


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
        await main_phase(measured, args, wrk, Path(tmp))
        await economy_phase(measured, Path(tmp))
    return measured


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def throughput_rows(run: Run, backend: Backend) -> list[Row]:
    name = f"evlink {backend.name}"
    if backend.skipped or backend.rest is None or backend.graphql is None:
        return [Row(f"{name}: throughput", now=backend.skipped or "failed")]
    base = run.best_baseline
    rest_ratio = backend.rest.rps / base.rps
    graphql_ratio = backend.graphql.rps / base.rps
    return [
        Row(
            f"{name} REST /api/status: req/s",
            fmt_rps(backend.rest_before.rps) if backend.rest_before else "",
            fmt_rps(backend.rest.rps),
            f"{rest_ratio:.2f}",
            "1.00",
            f"≥ {REST_TARGET:.2f} x baseline",
            _met(rest_ratio >= REST_TARGET),
        ),
        Row(
            f"{name} REST: p50 / p99 ms",
            fmt_pair(backend.rest_before),
            fmt_pair(backend.rest),
            latency_ratio(backend.rest, base),
        ),
        Row(
            f"{name} GraphQL vehicle{{chargeState}}: req/s",
            fmt_rps(backend.graphql_before.rps) if backend.graphql_before else "",
            fmt_rps(backend.graphql.rps),
            f"{graphql_ratio:.2f}",
            f"{backend.graphql.rps / backend.rest.rps:.2f}",
            f"≥ {GRAPHQL_TARGET:.2f} x baseline",
            _met(graphql_ratio >= GRAPHQL_TARGET),
        ),
        Row(
            f"{name} GraphQL: p50 / p99 ms",
            fmt_pair(backend.graphql_before),
            fmt_pair(backend.graphql),
            latency_ratio(backend.graphql, base),
            latency_ratio(backend.graphql, backend.rest),
        ),
    ]


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
        Row(f"{label}: memory per idle subscription, KiB", **both(memory)),
        Row(
            f"{label}: time to connect and subscribe all, s",
            **both(lambda result: f"{result.connect_seconds:.1f}"),
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
    table = render_table(rows)
    runs = ", ".join(fmt_rps(r.rps) for r in run.baseline)
    notes = [
        f"- When: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {_git_revision()}, "
        f"{os.cpu_count()} cores ({_cpu()}), Python {platform.python_version()}; "
        f"the whole run took {elapsed:.0f} s.",
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
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10, help="subscription rounds")
    parser.add_argument("--commands", type=int, default=20, help="command rounds")
    parser.add_argument("--ws-compression", choices=("deflate", "none"), default="deflate")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-before", action="store_true", help="skip the before-fix servers")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--sessions-only", action="store_true", help="only bench/sessions.py")
    args = parser.parse_args(argv)
    if args.sessions_only:
        return sessions_main([])
    raise_nofile_limit()
    started = time.monotonic()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        measured = runner.run(run(args))
    rows = build_rows(measured, args)
    table = write_report(measured, rows, args, time.monotonic() - started)
    print(table)
    print(f"\n(written to {(RESULTS / 'latest.md').relative_to(REPO)})")
    return sessions_main([])  # issue #19: what session ingestion costs a refresh


if __name__ == "__main__":
    sys.exit(main())
