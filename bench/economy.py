"""Provider economy: how many upstream calls 1,000 status polls over 20 vehicles cost.

Run against a fresh evlink whose 20 cars were never read. The simulator counts
every provider call and notes when each vehicle read happened (``GET
/bench/calls``).

- **Burst:** 1,000 polls at once, spread over the 20 cars, with the default max
  age (60 s, one window). Single flight should make that exactly one provider
  read per car: 20.
- **Paced:** the max age is then cut to 2 s (``POST /bench/max-age``), and 1,000
  polls go evenly over 6 s. The target, one read per car per max-age window,
  holds when no two reads of one car are closer than the max age; the count is
  reported next to that.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import httpx

__all__ = ["EconomyResult", "run_economy"]

POLLS = 1000


@dataclass(frozen=True, slots=True)
class EconomyResult:
    vehicles: int
    max_age: float
    burst_calls: int
    paced_calls: int
    paced_seconds: float  # from the first poll sent to the last answer received
    closest_reads: float  # seconds between the two closest reads of one car (inf: none)
    errors: int

    @property
    def paced_windows(self) -> int:
        """Max-age windows the paced polls spanned (each car's first read opens one)."""
        return math.ceil(self.paced_seconds / self.max_age)

    @property
    def one_per_window(self) -> bool:
        # 1 % for the two clocks involved (refreshed_at is wall time, reads are monotonic).
        return self.closest_reads >= self.max_age * 0.99


async def _reads(http: httpx.AsyncClient) -> list[tuple[float, str]]:
    answer = await http.get("/bench/calls")
    answer.raise_for_status()
    return [(float(at), str(vehicle)) for at, vehicle in answer.json().get("reads", [])]


def _closest(reads: list[tuple[float, str]]) -> float:
    by_car: dict[str, list[float]] = defaultdict(list)
    for at, vehicle in reads:
        by_car[vehicle].append(at)
    gaps = [b - a for times in by_car.values() for a, b in pairwise(times)]
    return min(gaps, default=math.inf)


async def run_economy(
    server: dict[str, Any], base_url: str, *, max_age: float, paced_seconds: float
) -> EconomyResult:
    """The burst, then the paced polls with ``max_age``; provider reads counted around each."""
    vehicles: list[str] = server["vehicles"]
    headers = {"Authorization": f"Bearer {server['key']}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    errors = 0
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=30.0
    ) as http:

        async def poll(n: int) -> None:
            nonlocal errors
            answer = await http.get(f"/api/status/{vehicles[n % len(vehicles)]}")
            if answer.status_code != 200:
                errors += 1

        before = len(await _reads(http))
        await asyncio.gather(*(poll(n) for n in range(POLLS)))
        burst = len(await _reads(http)) - before

        (await http.post("/bench/max-age", params={"seconds": max_age})).raise_for_status()
        loop = asyncio.get_running_loop()
        start = loop.time()
        gap = paced_seconds / POLLS

        async def paced(n: int) -> None:
            await asyncio.sleep(max(0.0, start + n * gap - loop.time()))
            await poll(n)

        before = len(await _reads(http))
        started = time.monotonic()
        await asyncio.gather(*(paced(n) for n in range(POLLS)))
        elapsed = time.monotonic() - started
        paced_reads = (await _reads(http))[before:]
    return EconomyResult(
        vehicles=len(vehicles),
        max_age=max_age,
        burst_calls=burst,
        paced_calls=len(paced_reads),
        paced_seconds=elapsed,
        closest_reads=_closest(paced_reads),
        errors=errors,
    )
