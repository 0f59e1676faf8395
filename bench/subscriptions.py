"""10,000 ``chargeState`` subscribers on one evlink, and how fast a change reaches them all.

The subscribers are :mod:`bench.subscriber_client` processes (``--processes``, 4 by
default), each holding its share of the websockets with plain asyncio protocols, so
that 10,000 sockets measure the server rather than the client. Each socket speaks
``graphql-transport-ws``: ``connection_init`` with the key, ``subscribe`` to the
watched car's ``chargeState``, then it waits for the current state.

Memory: the server collects its garbage and reports its RSS (``POST /bench/memory``)
before the subscribers connect (after a few have come and gone, so that first-use
costs are paid) and again with all of them subscribed and idle; the growth divided
by the number of subscribers is what one idle subscription costs (its websocket
included).

Rounds: the orchestrator tells every process which plug state comes next, waits until
each answers that its sockets wait for it, then the
bench server unplugs (or plugs) the car and pushes the change at once
(``POST /bench/plug``, which answers the monotonic time of the change). Each process
reports each socket's arrival time (``time.monotonic()``: one clock for the whole
machine) and its own CPU seconds for the round. A round's latency is from the change
until the *last* subscriber of all processes has the new state. The server's CPU
seconds over the round come from ``/proc/<pid>/stat``: set against the busiest
client's, they show which side the time went to.

The whole phase is bounded: :data:`OPEN_TIMEOUT` to connect, :data:`ROUND_TIMEOUT`
per round, :data:`STOP_TIMEOUT` to close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import REPO

__all__ = ["SubscriptionResult", "run_subscriptions"]

PROCESSES = 4  # subscriber processes
OPEN_TIMEOUT = 240.0  # seconds for all to connect and subscribe
ROUND_TIMEOUT = 30.0  # seconds a round may take before it counts as lost
STOP_TIMEOUT = 30.0  # seconds the processes may take to close their sockets
WARM_SUBSCRIBERS = 20  # come and go first, so that first-use costs are paid
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TRACE_FRAMES = 6  # frames of each allocation's stack that --tracemalloc keeps


@dataclass(slots=True)
class SubscriptionResult:
    """Latencies in milliseconds; memory in KiB; CPU in seconds."""

    subscribers: int
    processes: int
    connect_seconds: float
    rss_before_kib: int
    rss_after_kib: int
    deflate_accepted: bool = False
    rounds_ms: list[float] = field(default_factory=list)  # change -> last subscriber
    deliveries_ms: list[float] = field(default_factory=list)  # change -> each subscriber
    lost_rounds: int = 0
    full_gcs: int = 0  # the server's full garbage collections during the rounds
    longest_gc_ms: float = 0.0
    server_cpu: list[float] = field(default_factory=list)  # per round
    client_cpu: list[float] = field(default_factory=list)  # per round, the busiest process
    client_connect_cpu: float = 0.0  # the busiest process, while connecting
    retries: int = 0  # subscriptions refused with DATABASE_UNAVAILABLE and asked again

    @property
    def kib_per_subscription(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / self.subscribers


class ClientProcess:
    """One :mod:`bench.subscriber_client` process and its report lines."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls, server: dict[str, Any], count: int, offer_deflate: bool, log: Path
    ) -> ClientProcess:
        with log.open("ab") as errors:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.subscriber_client",
                "--port",
                str(server["port"]),
                "--key",
                server["key"],
                "--vehicle",
                server["watched"]["id"],
                "--count",
                str(count),
                *(["--offer-deflate"] if offer_deflate else []),
                cwd=REPO,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=errors,
            )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            kind, _, data = line.decode().partition(" ")
            with contextlib.suppress(ValueError):
                await self.lines.put((kind, json.loads(data)))
        await self.lines.put(("EXIT", {}))

    async def expect(self, *kinds: str) -> dict[str, Any]:
        """The next line of one of ``kinds``; a failure or an exit raises."""
        while True:
            kind, data = await self.lines.get()
            if kind in kinds:
                return data
            if kind in ("FAILED", "EXIT"):
                raise RuntimeError(f"subscriber process: {kind} {data}")

    def order(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")

    async def stop(self) -> dict[str, Any]:
        """``quit``, then its last line (SIGKILL if it does not end in time)."""
        with contextlib.suppress(Exception):
            self.order("quit")
        try:
            return await asyncio.wait_for(self.expect("BYE"), STOP_TIMEOUT)
        except (TimeoutError, RuntimeError):
            return {}
        finally:
            if self.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
            await self.process.wait()
            self._reader.cancel()


def cpu_of(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def _start_all(
    server: dict[str, Any], subscribers: int, processes: int, offer_deflate: bool, log: Path
) -> list[ClientProcess]:
    shares = [subscribers // processes + (n < subscribers % processes) for n in range(processes)]
    return [
        await ClientProcess.start(server, share, offer_deflate, log) for share in shares if share
    ]


async def _stop_all(clients: list[ClientProcess]) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(client.stop() for client in clients)))


async def _warm(server: dict[str, Any], offer_deflate: bool, log: Path) -> None:
    """A few subscribers come and go: the server's first-use costs are paid before."""
    clients = await _start_all(server, WARM_SUBSCRIBERS, 1, offer_deflate, log)
    try:
        await asyncio.wait_for(clients[0].expect("READY"), OPEN_TIMEOUT)
    finally:
        await _stop_all(clients)


async def _round(
    http: httpx.AsyncClient,
    clients: list[ClientProcess],
    server: dict[str, Any],
    number: int,
    result: SubscriptionResult,
) -> None:
    plugged = number % 2 == 1
    for client in clients:
        client.order(f"round {number} {int(plugged)}")
        assert client.process.stdin is not None
        await client.process.stdin.drain()
    # Every process waits for the state before it changes: a state that reached a socket
    # before its process read the order would be missed, and the round lost.
    await asyncio.wait_for(
        asyncio.gather(*(client.expect("ARMED") for client in clients)), ROUND_TIMEOUT
    )
    pid = int(server["pid"])
    cpu_before = cpu_of(pid)
    answer = await http.post(
        f"/bench/plug/{server['watched']['provider_id']}", params={"plugged": int(plugged)}
    )
    answer.raise_for_status()
    changed_at = float(answer.json()["changed_at"])

    async def report(client: ClientProcess) -> dict[str, Any]:
        while True:
            data = await client.expect("ROUND")
            if data["round"] == number:
                return data

    try:
        reports = await asyncio.wait_for(
            asyncio.gather(*(report(client) for client in clients)), ROUND_TIMEOUT
        )
    except TimeoutError:
        result.lost_rounds += 1
        return
    result.server_cpu.append(cpu_of(pid) - cpu_before)
    arrivals = [t for data in reports for t in data["arrivals"]]
    result.deliveries_ms += [(t - changed_at) * 1000 for t in arrivals]
    result.rounds_ms.append((max(arrivals) - changed_at) * 1000)
    result.client_cpu.append(max(float(data["cpu"]) for data in reports))


async def run_subscriptions(
    server: dict[str, Any],
    base_url: str,
    *,
    subscribers: int,
    rounds: int,
    compression: str | None,
    processes: int = PROCESSES,
    log: Path,
    profile: Path | None = None,
    traced: Path | None = None,
) -> SubscriptionResult:
    """Connect ``subscribers`` over ``processes``, measure memory, then time ``rounds``
    plug changes."""
    offer_deflate = compression == "deflate"
    async with httpx.AsyncClient(base_url=base_url, timeout=ROUND_TIMEOUT) as http:
        await _warm(server, offer_deflate, log)
        rss_before = int((await http.post("/bench/memory")).json()["rss_kib"])
        if traced is not None:  # what the subscriptions hold, by file and line
            start = await http.post("/bench/tracemalloc/start", params={"frames": TRACE_FRAMES})
            start.raise_for_status()
        started = time.monotonic()
        clients = await _start_all(server, subscribers, processes, offer_deflate, log)
        try:
            ready = await asyncio.wait_for(
                asyncio.gather(*(client.expect("READY") for client in clients)), OPEN_TIMEOUT
            )
            connect_seconds = time.monotonic() - started
            rss_after = int((await http.post("/bench/memory")).json()["rss_kib"])
            if traced is not None:
                params = {"out": str(traced), "per": str(subscribers), "top": "80"}
                (await http.post("/bench/tracemalloc/diff", params=params)).raise_for_status()
            result = SubscriptionResult(
                subscribers,
                len(clients),
                connect_seconds,
                rss_before,
                rss_after,
                deflate_accepted=any(data["deflate"] for data in ready),
                client_connect_cpu=max(float(data["cpu"]) for data in ready),
                retries=sum(int(data["retries"]) for data in ready),
            )
            (await http.post("/bench/gc")).raise_for_status()  # forget the connecting phase's
            if profile is not None:
                (await http.post("/bench/profile/start")).raise_for_status()
            for number in range(rounds):
                await _round(http, clients, server, number, result)
            if profile is not None:
                stop = await http.post("/bench/profile/stop", params={"out": str(profile)})
                stop.raise_for_status()
            collections = (await http.post("/bench/gc")).json()
            result.full_gcs = int(collections["count"])
            result.longest_gc_ms = float(collections["max_ms"])
        finally:
            await _stop_all(clients)
    return result


def summary(result: SubscriptionResult) -> dict[str, Any]:
    """The figures of a run, for ``python -m bench.subscriptions``."""
    from bench.common import percentile

    return {
        "subscribers": result.subscribers,
        "processes": result.processes,
        "deflate_accepted": result.deflate_accepted,
        "kib_per_subscription": round(result.kib_per_subscription, 1),
        "rss_mib": [round(result.rss_before_kib / 1024), round(result.rss_after_kib / 1024)],
        "connect_s": round(result.connect_seconds, 1),
        "last_ms_p50_p99": [round(percentile(result.rounds_ms, q)) for q in (50, 99)],
        "each_ms_p50_p99": [round(percentile(result.deliveries_ms, q)) for q in (50, 99)],
        "rounds_ms": [round(ms) for ms in result.rounds_ms],
        "lost_rounds": result.lost_rounds,
        "server_cpu_s": [round(s, 2) for s in result.server_cpu],
        "busiest_client_cpu_s": [round(s, 2) for s in result.client_cpu],
        "full_gcs": [result.full_gcs, round(result.longest_gc_ms)],
        "retries": result.retries,
        "busiest_client_connect_cpu_s": round(result.client_connect_cpu, 1),
    }


async def _standalone(args: Any) -> dict[str, Any]:
    import tempfile

    from bench.common import ServerProcess

    with tempfile.TemporaryDirectory(prefix="evlink-subs-") as tmp:
        extra = [*(["--port", str(args.port)] if args.port else []), *args.server_args]
        server = ServerProcess(
            "evlink-subscriptions",
            "bench.serve_evlink",
            ["--database-url", f"sqlite://{tmp}/subs.sqlite3", *extra],
            Path(tmp),
        )
        async with server:
            result = await run_subscriptions(
                server.info,
                server.base_url,
                subscribers=args.subscribers,
                rounds=args.rounds,
                compression=args.compression,
                processes=args.processes,
                log=Path(tmp) / "subscribers.log",
                profile=args.profile,
                traced=args.tracemalloc,
            )
            return summary(result)


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.subscriptions``: the subscription phase alone, on a fresh
    evlink (SQLite); ``--server-args`` are passed to :mod:`bench.serve_evlink`."""
    import argparse

    from bench.common import raise_nofile_limit

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--processes", type=int, default=PROCESSES)
    parser.add_argument("--compression", choices=("deflate",), default=None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--server-args", nargs="*", default=[])
    parser.add_argument("--profile", type=Path, help="pyinstrument over the rounds, to PATH")
    parser.add_argument(
        "--tracemalloc",
        type=Path,
        help="what the subscriptions hold once connected (tracemalloc, by file and line, "
        "per subscription), to PATH; its own memory inflates the RSS figures of that run",
    )
    args = parser.parse_args(argv)
    raise_nofile_limit()
    print(json.dumps(asyncio.run(_standalone(args))))


if __name__ == "__main__":
    main()
