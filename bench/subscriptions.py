"""1,000 ``chargeState`` subscribers on one evlink, and how fast a change reaches them all.

Each subscriber is a raw ``websockets`` client speaking ``graphql-transport-ws``:
``connection_init`` with the key, ``subscribe`` to the watched car's
``chargeState``, then it waits for the current state (the first ``next``). With
all of them connected and idle, the server's RSS is read again: the growth
divided by the number of subscribers is the memory one idle subscription costs
(its websocket included).

Then, for each round, the bench server unplugs (or plugs) the watched car and
pushes the change at once (``POST /bench/plug``, which answers the monotonic
time of the change). A round's latency is the time from that change until the
*last* subscriber has received the new state; each subscriber's own delivery
time is kept too.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench.common import rss_kib

__all__ = ["Subscriber", "SubscriptionResult", "run_subscriptions"]

PROTOCOL = "graphql-transport-ws"
QUERY = (
    "subscription Watch($id: ID!) { chargeState(vehicleId: $id) "
    "{ isPluggedIn powerDeliveryState batteryLevel lastUpdated } }"
)
CONNECT_CONCURRENCY = 50  # subscribers connecting at the same time
ROUND_TIMEOUT = 30.0  # seconds a round may take before it counts as lost


@dataclass(slots=True)
class SubscriptionResult:
    """Latencies in milliseconds; memory in KiB."""

    subscribers: int
    connect_seconds: float
    rss_before_kib: int
    rss_after_kib: int
    rounds_ms: list[float] = field(default_factory=list)  # change -> last subscriber
    deliveries_ms: list[float] = field(default_factory=list)  # change -> each subscriber
    lost_rounds: int = 0
    full_gcs: int = 0  # the server's full garbage collections during the rounds
    longest_gc_ms: float = 0.0

    @property
    def kib_per_subscription(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / self.subscribers


@dataclass(slots=True)
class _Round:
    want_plugged: bool
    remaining: int
    arrivals: list[float] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Subscriber:
    """One websocket with one ``chargeState`` subscription."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.round: _Round | None = None
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, key: str, vehicle_id: str, compression: str | None) -> Subscriber:
        """Connect, authenticate, subscribe, and wait for the current state."""
        ws = await connect(
            url,
            subprotocols=[PROTOCOL],  # type: ignore[list-item]
            compression=compression,
            ping_interval=None,
            open_timeout=30,
        )
        await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": key}}))
        ack = json.loads(await ws.recv())
        if ack.get("type") != "connection_ack":
            raise RuntimeError(f"subscriber not acknowledged: {ack}")
        subscribe = {"query": QUERY, "variables": {"id": vehicle_id}}
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": subscribe}))
        first = json.loads(await ws.recv())
        if first.get("type") != "next" or first["payload"].get("errors"):
            raise RuntimeError(f"subscription refused: {first}")
        subscriber = cls(ws)
        subscriber._reader = asyncio.create_task(subscriber._read())
        return subscriber

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.ws:
                arrived = time.monotonic()
                message = json.loads(raw)
                if message.get("type") != "next":
                    continue
                state = message["payload"]["data"]["chargeState"]
                current = self.round
                if current is not None and state["isPluggedIn"] == current.want_plugged:
                    self.round = None
                    current.arrivals.append(arrived)
                    current.remaining -= 1
                    if current.remaining == 0:
                        current.done.set()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close()


async def _open_all(
    url: str, key: str, vehicle_id: str, count: int, compression: str | None
) -> list[Subscriber]:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> Subscriber:
        async with gate:
            return await Subscriber.open(url, key, vehicle_id, compression)

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    opened = [r for r in results if isinstance(r, Subscriber)]
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        await _close_all(opened)
        raise RuntimeError(f"{len(failures)} of {count} subscribers failed: {failures[0]!r}")
    return opened


async def _close_all(subscribers: list[Subscriber]) -> None:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY * 4)

    async def one(subscriber: Subscriber) -> None:
        async with gate:
            await subscriber.close()

    await asyncio.gather(*(one(s) for s in subscribers))


async def run_subscriptions(
    server: dict[str, Any],
    base_url: str,
    ws_url: str,
    *,
    subscribers: int,
    rounds: int,
    compression: str | None,
) -> SubscriptionResult:
    """Connect ``subscribers``, measure memory, then time ``rounds`` plug changes."""
    key = f"Bearer {server['key']}"
    watched = server["watched"]
    pid = int(server["pid"])
    # One subscriber first, so that the first-use costs (imports, caches) are paid.
    warm = await Subscriber.open(ws_url, key, watched["id"], compression)
    await warm.close()
    rss_before = rss_kib(pid)
    started = time.monotonic()
    fleet = await _open_all(ws_url, key, watched["id"], subscribers, compression)
    connect_seconds = time.monotonic() - started
    result = SubscriptionResult(subscribers, connect_seconds, rss_before, rss_kib(pid))
    # This process holds 1,000 websockets too: its own full collections would delay the
    # arrival times it records, so it does not collect during the rounds.
    gc.collect()
    gc.disable()
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=ROUND_TIMEOUT) as http:
            (await http.post("/bench/gc")).raise_for_status()  # forget the connecting phase's
            for n in range(rounds):
                current = _Round(want_plugged=n % 2 == 1, remaining=len(fleet))
                for subscriber in fleet:
                    subscriber.round = current
                plugged = "1" if current.want_plugged else "0"
                answer = await http.post(f"/bench/plug/{watched['provider_id']}?plugged={plugged}")
                answer.raise_for_status()
                changed_at = float(answer.json()["changed_at"])
                try:
                    await asyncio.wait_for(current.done.wait(), ROUND_TIMEOUT)
                except TimeoutError:
                    result.lost_rounds += 1
                    continue
                result.deliveries_ms += [(t - changed_at) * 1000 for t in current.arrivals]
                result.rounds_ms.append((max(current.arrivals) - changed_at) * 1000)
            collections = (await http.post("/bench/gc")).json()
            result.full_gcs = int(collections["count"])
            result.longest_gc_ms = float(collections["max_ms"])
    finally:
        gc.enable()
        await _close_all(fleet)
    return result
