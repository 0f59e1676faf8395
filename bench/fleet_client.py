"""One load-generator process of the fleet scenario (:mod:`bench.fleet`).

``python -m bench.fleet_client --url URL --fleet FILE --first I --count N ...`` plays
the Home Assistant sensors of ``N`` cars of the fleet file (lines ``key vehicle_id
name``, from :func:`bench.fleet.seed_fleet`): each car has ``--sensors`` sensors,
each polling ``GET /api/status/{id}`` with the car's own key every ``--period``
seconds from a random phase of its own, so arrivals are spread at random, never in
lockstep. The schedule is fixed before the start (``--start-at``, a monotonic
time shared by every process on the machine): an open loop, so a slow server
makes requests wait, it never makes fewer of them.

Requests go over keep-alive HTTP/1.1 connections of a pool (at most
``--connections``; a request waits for a free one when all are busy, and that wait
counts in its latency). Each answer is checked: ``200``, JSON, the car's own name
in ``vehicleName`` and a charge state with a battery level between 0 and 100;
anything else is an error (the first few are printed).

Measured in the window ``[start + warmup, start + warmup + seconds)``, by the
request's *scheduled* time: latency from the scheduled time to the whole answer
(so the generator's and the pool's waits count against the server, not for it);
the *lag* of this process's event loop (actual wake-up minus scheduled time, the
generator's own health); this process's CPU seconds. The result is one line of
JSON in the file ``--out`` names.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["main"]

DRAIN_TIMEOUT = 10.0  # seconds answers are awaited after the window before they count lost
_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")
_MAX_SAMPLES = 5  # error texts kept


@dataclass(slots=True)
class Tally:
    """What the window saw."""

    latencies_ms: list[float] = field(default_factory=list)
    lags_ms: list[float] = field(default_factory=list)
    errors: int = 0
    samples: list[str] = field(default_factory=list)
    reconnects: int = 0
    unanswered: int = 0

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.samples) < _MAX_SAMPLES:
            self.samples.append(text[:300])


class Pool:
    """Keep-alive connections to one server, at most ``size`` at once."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port = host, port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(size)

    async def exchange(self, raw: bytes, tally: Tally) -> tuple[bytes, bytes]:
        """Send one request, return its head and body (once more on a fresh connection
        when a kept-alive one turns out closed by the server)."""
        async with self._slots:
            for attempt in range(2):
                reused = bool(self._idle)
                reader, writer = (
                    self._idle.pop()
                    if reused
                    else await asyncio.open_connection(self.host, self.port)
                )
                try:
                    writer.write(raw)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = _CONTENT_LENGTH.search(head)
                    body = await reader.readexactly(int(length[1]) if length else 0)
                except (asyncio.IncompleteReadError, ConnectionError):
                    writer.close()
                    if reused and attempt == 0:
                        tally.reconnects += 1
                        continue
                    raise
                self._idle.append((reader, writer))
                return head, body
        raise AssertionError("unreachable")

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()


def check_answer(head: bytes, body: bytes, name: str) -> str | None:
    """None when the answer is a right status body for the car called ``name``."""
    if not head.startswith(b"HTTP/1.1 200"):
        status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
        return f"{status_line}: {body[:200]!r}"
    try:
        data = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:200]!r}"
    if not isinstance(data, dict) or data.get("vehicleName") != name:
        return f"another car's answer (wanted {name!r}): {body[:200]!r}"
    state = data.get("chargeState")
    level = state.get("batteryLevel") if isinstance(state, dict) else None
    if not isinstance(level, int | float) or not 0 <= level <= 100:
        return f"no battery level in the charge state: {body[:200]!r}"
    return None


def schedule(
    cars: int, sensors: int, period: float, until: float, rng: random.Random
) -> list[tuple[float, int]]:
    """(offset from the start, car index) of every poll, sorted: each sensor polls every
    ``period`` seconds from a random phase of its own."""
    polls = []
    for car in range(cars):
        for _ in range(sensors):
            at = rng.uniform(0, period)
            while at < until:
                polls.append((at, car))
                at += period
    polls.sort()
    return polls


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(args: argparse.Namespace, cars: list[list[str]]) -> dict[str, Any]:
    """Play the sensors of ``cars`` (``[key, vehicle_id, name]``) by ``args``."""
    host_port = args.url.removeprefix("http://")
    host, _, port = host_port.partition(":")
    raws = [
        (
            f"GET /api/status/{vehicle} HTTP/1.1\r\nHost: {host_port}\r\n"
            f"Authorization: Bearer {key}\r\n\r\n"
        ).encode()
        for key, vehicle, _ in cars
    ]
    window = (args.warmup, args.warmup + args.seconds)
    polls = schedule(len(cars), args.sensors, args.period, window[1], random.Random(args.seed))
    pool = Pool(host, int(port), args.connections)
    tally = Tally()
    inflight: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()

    async def poll(due: float, car: int, measured: bool) -> None:
        try:
            head, body = await pool.exchange(raws[car], tally)
        except (OSError, asyncio.IncompleteReadError) as exc:
            if measured:
                tally.error(f"socket: {exc!r}")
            return
        if not measured:
            wrong = check_answer(head, body, cars[car][2])
            if wrong is not None:  # a wrong answer fails the run, warm-up or not
                tally.error(wrong)
            return
        tally.latencies_ms.append((time.monotonic() - due) * 1000)
        wrong = check_answer(head, body, cars[car][2])
        if wrong is not None:
            tally.error(wrong)

    start = args.start_at
    cpu_begin = cpu_end = 0.0
    in_window_tasks: list[asyncio.Task[None]] = []
    began = False
    for offset, car in polls:
        due = start + offset
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        measured = window[0] <= offset
        if measured and not began:
            began, cpu_begin = True, _cpu_seconds()
        if measured:
            tally.lags_ms.append((time.monotonic() - due) * 1000)
        task = loop.create_task(poll(due, car, measured))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
        if measured:
            in_window_tasks.append(task)
    delay = start + window[1] - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    cpu_end = _cpu_seconds()
    if inflight:
        _, pending = await asyncio.wait(inflight, timeout=DRAIN_TIMEOUT)
        for task in pending:
            task.cancel()
        tally.unanswered = sum(1 for task in in_window_tasks if task in pending)
    pool.close()
    return {
        "cars": len(cars),
        "scheduled": len(in_window_tasks),
        "latencies_ms": [round(v, 3) for v in tally.latencies_ms],
        "lags_ms": [round(v, 3) for v in tally.lags_ms],
        "errors": tally.errors,
        "samples": tally.samples,
        "reconnects": tally.reconnects,
        "unanswered": tally.unanswered,
        "cpu_seconds": cpu_end - cpu_begin,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--fleet", required=True, help="lines 'key vehicle_id name'")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--sensors", type=int, default=2)
    parser.add_argument("--period", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--start-at", type=float, required=True, help="time.monotonic()")
    parser.add_argument("--connections", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="where the answer (JSON) is written")
    args = parser.parse_args(argv)
    lines = Path(args.fleet).read_text().splitlines()[args.first : args.first + args.count]
    cars = [line.split(" ", 2) for line in lines]
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(run(args, cars))
    # To a file: through the pipe, a 10,000-car answer (about 230 KB) came cut short.
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
