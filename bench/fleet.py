"""The fleet scenario: many cars of many users, each polled by its own Home Assistant.

A fleet of ``N`` cars belongs to ``N`` users, each with a key of its own. Every
car has two REST sensors polling ``GET /api/status/{id}`` every 30 s from random
phases (``N / 15`` requests/s: 667 for 10,000 cars), while the simulator changes
cars meanwhile (plugs and unplugs a few every second, pushed as a webhook
would). The read cache holds an answer 5 s, a sensor comes back after 15 s on
average: nearly every read is a miss, as in use.

Server side (in :mod:`bench.serve_evlink` ``--fleet N``): :func:`seed_fleet` writes
the users, their hashed keys and their cars with bulk inserts through evlink's
models (not one API call each), and :class:`Churn` changes cars.

Bench side: :func:`run_fleet` starts the load generators (:mod:`bench.fleet_client`,
processes of their own, each with a share of the cars), reads the server's CPU time
from ``/proc/<pid>/stat`` at the start and end of the measured window, and merges
what the generators saw. :func:`step_up` finds the largest fleet the process serves
with p99 under :data:`P99_LIMIT_MS`, by stepping the fleet size within a time budget.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import REPO, percentile
from evlink.models import ApiKey, ChargeState, Tier, User, Vehicle
from evlink.models.vehicles import CHARGE_STATE_FIELDS
from evlink.providers.simulator import ManualClock, MemoryCars, SimulatedCar, Simulator
from evlink.resolvers.auth import PREFIX_LENGTH, hash_key, new_key

__all__ = [
    "P99_LIMIT_MS",
    "Churn",
    "ChurnCars",
    "FleetResult",
    "StepUp",
    "run_fleet",
    "seed_fleet",
    "step_up",
]

PERIOD = 30.0  # seconds between two polls of one sensor
SENSORS = 2  # REST sensors per car
P99_LIMIT_MS = 100.0
# A generator is healthy while its loop wakes within this of a poll's time (p99).
GENERATOR_LAG_LIMIT_MS = 10.0
START_DELAY = 3.0  # seconds for the generator processes to start and plan
_BATCH = 1000  # rows per bulk insert


# -- server side ---------------------------------------------------------------


async def seed_fleet(count: int, path: Path, max_age: float) -> list[str]:
    """``count`` users, each with a key and a car, in bulk; writes ``key vehicle_id name``
    lines to ``path`` and returns the cars' provider ids. Keys are stored as
    :mod:`evlink.resolvers.auth` stores them: the SHA-256 and the public prefix.

    The fleet has been running for a while: every car was read from its provider once,
    at a random time within the last ``max_age`` seconds, so the reads that refresh a
    car from its provider are spread as in a steady state, not all due at once.
    """

    run = uuid.uuid4().hex[:8]
    emails = [f"fleet-{run}-{n}@example.com" for n in range(count)]
    await User.bulk_create(
        [User(email=email, tier=Tier.BASIC) for email in emails], batch_size=_BATCH
    )
    ids = dict(await User.filter(email__startswith=f"fleet-{run}-").values_list("email", "id"))
    keys = [new_key() for _ in range(count)]
    await ApiKey.bulk_create(
        [
            ApiKey(user_id=ids[email], name="fleet", prefix=key[:PREFIX_LENGTH], hash=hash_key(key))
            for email, key in zip(emails, keys, strict=True)
        ],
        batch_size=_BATCH,
    )
    vehicles = [uuid.uuid4() for _ in range(count)]
    provider_ids = [f"sim-plugged-{uuid.uuid4().hex[:12]}" for _ in range(count)]
    now = datetime.now(UTC)
    rng = random.Random(count)
    rows = [
        _known_car(vehicle, ids[email], provider_id, f"Fleet car {n}", now, rng.uniform(0, max_age))
        for n, (email, vehicle, provider_id) in enumerate(
            zip(emails, vehicles, provider_ids, strict=True)
        )
    ]
    await Vehicle.bulk_create([vehicle for vehicle, _ in rows], batch_size=_BATCH)
    await ChargeState.bulk_create([state for _, state in rows], batch_size=_BATCH)
    await asyncio.to_thread(
        path.write_text,
        "".join(
            f"{key} {vehicle} Fleet car {n}\n"
            for n, (key, vehicle) in enumerate(zip(keys, vehicles, strict=True))
        ),
    )
    return provider_ids


def _known_car(
    vehicle_id: uuid.UUID, user_id: int, provider_id: str, name: str, now: datetime, age: float
) -> tuple[Vehicle, ChargeState]:
    """A car as evlink stores it after a provider read ``age`` seconds ago (the fields
    :func:`evlink.resolvers.vehicles.record_vehicle_data` writes)."""
    data = SimulatedCar.from_id(provider_id, now).vehicle.snapshot()
    vehicle = Vehicle(
        id=vehicle_id,
        user_id=user_id,
        provider="simulator",
        provider_vehicle_id=provider_id,
        name=name,
        vendor=data.vendor,
        provider_user_id=data.user_id,
        information=data.information,
        capabilities=data.capabilities,
        smart_charging_policy=data.smart_charging_policy,
        location=data.location,
        odometer=data.odometer,
        last_seen=data.last_seen,
        is_reachable=data.is_reachable,
        refreshed_at=now - timedelta(seconds=age),
    )
    state = data.charge_state
    values = {name: getattr(state, name) for name in CHARGE_STATE_FIELDS}
    return vehicle, ChargeState(vehicle_id=vehicle_id, **values)


class ChurnCars(MemoryCars):
    """The simulator's store for a fleet: cars in memory, and a step visits only the
    cars changed since the last one (stepping 10,000 unchanged cars every second would
    measure the simulator)."""

    def __init__(self) -> None:
        super().__init__()
        self.changed: list[str] = []

    async def stepping(self, owner: str) -> list[str]:
        changed, self.changed = self.changed, []
        return changed


class Churn:
    """Every second, plugs or unplugs ``per_second`` random cars of the fleet and pushes
    the changes (a webhook's way in: the provider's update sink)."""

    def __init__(
        self, simulator: Simulator, clock: ManualClock, provider_ids: Sequence[str], per_second: int
    ) -> None:
        assert isinstance(simulator.store, ChurnCars)
        self.simulator, self.clock, self.store = simulator, clock, simulator.store
        self.provider_ids = list(provider_ids)
        self.per_second = per_second
        self.changes = 0
        self._plugged: dict[str, bool] = {}
        self._rng = random.Random(18)

    async def run(self) -> None:
        """Forever (cancelled with the server)."""
        while True:
            await asyncio.sleep(1.0)
            await self.once()

    async def once(self) -> None:
        count = min(self.per_second, len(self.provider_ids))
        if count <= 0:
            return
        await self.clock.advance(1.0)  # a new provider timestamp for the changes
        for provider_id in self._rng.sample(self.provider_ids, count):
            plugged = self._plugged[provider_id] = not self._plugged.get(provider_id, True)
            self.simulator.update_vehicle(provider_id, is_plugged_in=plugged)
            self.store.changed.append(provider_id)
            self.changes += 1
        await self.simulator.step()


# -- bench side ----------------------------------------------------------------


@dataclass(slots=True)
class FleetResult:
    """One fleet run's figures (latencies in ms, from each poll's scheduled time)."""

    vehicles: int
    seconds: float
    rate: float  # scheduled requests per second
    scheduled: int
    answered: int
    p50_ms: float
    p99_ms: float
    errors: int
    unanswered: int
    samples: list[str]
    server_cpu_seconds: float
    generator_cpu_share: float  # the busiest generator's CPU seconds per second
    generator_lag_p99_ms: float
    generator_lag_max_ms: float
    reconnects: int
    processes: int
    changes: int = 0  # cars the simulator changed during the run
    full_gcs: int = 0  # the server's full garbage collections in the window
    longest_gc_ms: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def cpu_per_1000(self) -> float:
        """The server's CPU seconds per 1,000 answered requests."""
        return self.server_cpu_seconds / max(1, self.answered) * 1000

    @property
    def generator_ok(self) -> bool:
        """The generators kept to their schedule and had CPU to spare."""
        return self.generator_lag_p99_ms < GENERATOR_LAG_LIMIT_MS and self.generator_cpu_share < 0.5

    @property
    def serves(self) -> bool:
        """Every poll answered, right, with p99 under the limit."""
        return not self.errors and not self.unanswered and self.p99_ms < P99_LIMIT_MS


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (``/proc/<pid>/stat``), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def run_fleet(
    base_url: str,
    pid: int,
    fleet_file: Path,
    vehicles: int,
    *,
    warmup: float,
    seconds: float,
    processes: int,
    seed: int = 0,
) -> FleetResult:
    """The first ``vehicles`` cars of ``fleet_file`` polled for ``warmup`` + ``seconds``."""
    start_at = time.monotonic() + START_DELAY
    shares = [vehicles // processes + (i < vehicles % processes) for i in range(processes)]
    firsts = [sum(shares[:i]) for i in range(processes)]
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.fleet_client",
            "--url",
            base_url,
            "--fleet",
            str(fleet_file),
            "--first",
            str(first),
            "--count",
            str(count),
            "--sensors",
            str(SENSORS),
            "--period",
            str(PERIOD),
            "--warmup",
            str(warmup),
            "--seconds",
            str(seconds),
            "--start-at",
            str(start_at),
            "--seed",
            str(seed * 100 + n),
            "--out",
            str(fleet_file.with_name(f"generator-{n}.json")),
            cwd=REPO,
        )
        for n, (first, count) in enumerate(zip(firsts, shares, strict=True))
        if count
    ]
    changes_before = await _changes(base_url)
    await _sleep_until(start_at + warmup)
    cpu_begin = cpu_seconds(pid)
    await _collections(base_url)  # forget the warm-up's
    await _sleep_until(start_at + warmup + seconds)
    cpu_end = cpu_seconds(pid)
    collections = await _collections(base_url)
    changes = await _changes(base_url) - changes_before
    outputs = []
    for n, child in enumerate(children):  # the empty shares are the last ones: n matches
        if await child.wait() != 0:
            raise RuntimeError(f"fleet generator failed ({child.returncode})")
        outputs.append(json.loads(fleet_file.with_name(f"generator-{n}.json").read_text()))
    result = _merge(outputs, vehicles, seconds, cpu_end - cpu_begin, changes)
    result.full_gcs = int(collections["count"])
    result.longest_gc_ms = float(collections["max_ms"])
    return result


async def _collections(base_url: str) -> dict[str, Any]:
    """The server's full garbage collections since the last call (and their longest
    pause), forgotten by the server as they are told."""
    import httpx

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        answer = await http.post("/bench/gc")
        answer.raise_for_status()
        return dict(answer.json())


async def _changes(base_url: str) -> int:
    import httpx

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        answer = await http.get("/bench/churn")
        answer.raise_for_status()
        return int(answer.json()["changes"])


def _merge(
    outputs: list[dict[str, Any]], vehicles: int, seconds: float, server_cpu: float, changes: int
) -> FleetResult:
    latencies = [v for out in outputs for v in out["latencies_ms"]]
    lags = [v for out in outputs for v in out["lags_ms"]]
    unanswered = sum(out["unanswered"] for out in outputs)
    # A poll never answered is slower than any answered one.
    p99 = percentile(latencies + [float("inf")] * unanswered, 99)
    return FleetResult(
        vehicles=vehicles,
        seconds=seconds,
        rate=vehicles * SENSORS / PERIOD,
        scheduled=sum(out["scheduled"] for out in outputs),
        answered=len(latencies),
        p50_ms=percentile(latencies, 50),
        p99_ms=p99,
        errors=sum(out["errors"] for out in outputs),
        unanswered=unanswered,
        samples=[s for out in outputs for s in out["samples"]][:5],
        server_cpu_seconds=server_cpu,
        generator_cpu_share=max(out["cpu_seconds"] for out in outputs) / seconds,
        generator_lag_p99_ms=percentile(lags, 99),
        generator_lag_max_ms=max(lags, default=0.0),
        reconnects=sum(out["reconnects"] for out in outputs),
        processes=len(outputs),
        changes=changes,
        latencies_ms=latencies,
    )


@dataclass(slots=True)
class StepUp:
    """The fleet sizes tried, in order, and the largest served."""

    steps: list[FleetResult] = field(default_factory=list)
    budget_spent: bool = False

    @property
    def largest(self) -> int:
        served = [s.vehicles for s in self.steps if s.serves]
        return max(served, default=0)

    @property
    def smallest_failed(self) -> int | None:
        failed = [s.vehicles for s in self.steps if not s.serves]
        return min(failed, default=None)


async def step_up(
    base_url: str,
    pid: int,
    fleet_file: Path,
    *,
    known: FleetResult | None,
    start: int,
    floor: int,
    ceiling: int,
    warmup: float,
    seconds: float,
    budget: float,
    processes: int,
    log: Any,
) -> StepUp:
    """Double the fleet from ``start`` while it is served, then halve the gap between the
    largest served and the smallest failed size, within ``budget`` seconds and
    ``ceiling`` cars, never below ``floor``. ``known``: the fleet already run at
    ``start`` (the scenario's own, longer run), taken as the first step. A step with a
    wrong answer raises (the run fails)."""
    found = StepUp()
    deadline = time.monotonic() + budget
    size = start
    if known is not None:
        found.steps.append(known)
        size = _next_size(found, start, floor, ceiling)
    while size:
        if time.monotonic() + START_DELAY + warmup + seconds > deadline:
            found.budget_spent = True
            break
        result = await run_fleet(
            base_url,
            pid,
            fleet_file,
            size,
            warmup=warmup,
            seconds=seconds,
            processes=processes,
            seed=len(found.steps) + 1,
        )
        found.steps.append(result)
        log(
            f"fleet step {size:,} cars ({result.rate:,.0f} req/s): p99 "
            f"{result.p99_ms:,.1f} ms, {result.unanswered} unanswered -> "
            f"{'served' if result.serves else 'not served'}"
        )
        if result.errors:
            raise RuntimeError(f"fleet step {size}: {result.errors} errors: {result.samples}")
        size = _next_size(found, start, floor, ceiling)
    return found


def _next_size(found: StepUp, start: int, floor: int, ceiling: int) -> int:
    """The next size to try, or 0 when the answer is within a tenth (or the ceiling, or
    nothing down to ``floor`` is served)."""
    low, high = found.largest, found.smallest_failed
    if high is None:
        nxt = min(max(low, start) * 2, ceiling)
        return 0 if nxt <= low else nxt
    if low == 0:
        return 0 if high <= floor else max(high // 2, floor)
    if high - low <= max(low // 10, 100):
        return 0
    return (low + high) // 2
