"""Websockets that never send ``connection_init``: status latency and memory, capped or not.

``python -m bench.pending`` starts :mod:`bench.serve_evlink` on SQLite twice: with
``EVLINK_WS_PENDING_PER_ADDRESS`` at its default, and with the cap out of the way
(what evlink did before it had one). Against each it measures:

- a status read's p95 (``GET /api/status/{id}``, one at a time) when idle, and while
  one client on 127.0.0.1 opens ``--attempts`` websockets that never send
  ``connection_init``, ``--concurrency`` handshakes at a time, holds them, closes
  them and starts again, ``--cycles`` times;
- the server's RSS before the floods, at the end of the last flood (sockets still
  held), and once the server has let go of them all.

It prints one Markdown table (also written to ``bench/results/pending.md``). About
a minute. Only 127.0.0.1 is used; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import websockets

from bench.common import REPO, ServerProcess, percentile, raise_nofile_limit, rss_kib

__all__ = ["main"]

PROTOCOLS = ("graphql-transport-ws", "graphql-ws")
NO_CAP = 1_000_000


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    idle_p95_ms: float
    flood_p95_ms: float
    held: int  # websockets the server took in the last flood
    rss_before_mib: float
    rss_flood_mib: float
    rss_after_mib: float


async def _status_p95(http: httpx.AsyncClient, path: str, stop: asyncio.Event | None) -> float:
    """p95 of one-at-a-time status reads: 200 of them, or until ``stop`` is set."""
    times: list[float] = []
    for _ in range(200 if stop is None else 100_000):
        if stop is not None and stop.is_set():
            break
        started = time.perf_counter()
        answer = await http.get(path)
        times.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
    return percentile(times, 95)


async def _flood(ws_url: str, attempts: int, concurrency: int) -> list[websockets.ClientConnection]:
    """Open ``attempts`` websockets that never initialise; those the server took."""
    gate = asyncio.Semaphore(concurrency)

    async def one(number: int) -> websockets.ClientConnection | None:
        async with gate:
            protocol = websockets.Subprotocol(PROTOCOLS[number % 2])
            with contextlib.suppress(websockets.InvalidStatus, OSError, TimeoutError):
                return await websockets.connect(ws_url, subprotocols=[protocol])
            return None

    opened = await asyncio.gather(*(one(n) for n in range(attempts)))
    return [socket for socket in opened if socket is not None]


async def _let_go(http: httpx.AsyncClient) -> None:
    """Return once the server holds no websocket (``/metrics``), bounded."""
    for _ in range(5000):
        if "evlink_websocket_connections 0.0" in (await http.get("/metrics")).text:
            return
    raise RuntimeError("the server still holds websockets")


async def measure(name: str, cap: int | None, args: argparse.Namespace, tmp: Path) -> Result:
    extra = [] if cap is None else ["--ws-pending-per-address", str(cap)]
    database = f"sqlite://{tmp / name}.sqlite3"
    async with ServerProcess(
        name, "bench.serve_evlink", ["--database-url", database, *extra], tmp
    ) as server:
        headers = {"Authorization": f"Bearer {server.info['key']}"}
        path = f"/api/status/{server.info['vehicles'][0]}"
        async with httpx.AsyncClient(
            base_url=server.base_url, headers=headers, timeout=30.0
        ) as http:
            idle = await _status_p95(http, path, None)
            rss_before = rss_kib(server.pid) / 1024
            stop = asyncio.Event()
            reading = asyncio.create_task(_status_p95(http, path, stop))
            held: list[websockets.ClientConnection] = []
            for cycle in range(args.cycles):
                held = await _flood(server.ws_url, args.attempts, args.concurrency)
                rss_flood = rss_kib(server.pid) / 1024
                if cycle < args.cycles - 1:
                    await asyncio.gather(*(socket.close() for socket in held))
            stop.set()
            flood = await reading
            await asyncio.gather(*(socket.close() for socket in held))
            await _let_go(http)
            rss_after = rss_kib(server.pid) / 1024
    return Result(name, idle, flood, len(held), rss_before, rss_flood, rss_after)


def table(results: list[Result], args: argparse.Namespace) -> str:
    lines = [
        f"{args.cycles} floods of {args.attempts} websockets that never send connection_init, "
        f"{args.concurrency} handshakes at a time, from 127.0.0.1 (`python -m bench.pending`).",
        "",
        "| server | status p95 idle | status p95 during the floods | sockets held | "
        "RSS before | RSS during | RSS after |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.idle_p95_ms:.1f} ms | {r.flood_p95_ms:.1f} ms | {r.held} | "
            f"{r.rss_before_mib:.0f} MiB | {r.rss_flood_mib:.0f} MiB | {r.rss_after_mib:.0f} MiB |"
        )
    return "\n".join(lines) + "\n"


async def run(args: argparse.Namespace) -> str:
    raise_nofile_limit(max(8192, args.attempts * 2 + 1024))
    with tempfile.TemporaryDirectory() as tmp:
        results = [
            await measure("no cap (before)", NO_CAP, args, Path(tmp)),
            await measure("default cap", None, args, Path(tmp)),
        ]
    return table(results, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--attempts", type=int, default=2000, help="websockets per flood")
    parser.add_argument("--cycles", type=int, default=3, help="floods")
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes at a time")
    args = parser.parse_args(argv)
    text = asyncio.run(run(args))
    sys.stdout.write(text)
    (REPO / "bench" / "results" / "pending.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
