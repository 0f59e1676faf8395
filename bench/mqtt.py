"""How fast a charge-state change reaches the MQTT broker (issue #20: 200 ms p99).

``python -m bench.mqtt [--rounds N]`` starts a Mosquitto of its own on a free
port of 127.0.0.1 and evlink's app lifespan (SQLite in a temporary folder, the
simulator on a manual clock, the MQTT bridge), turns publishing on for one user
with one car, and subscribes to the car's state topic. Each round plugs or
unplugs the car and steps the simulator: evlink records the change and
publishes it on its event bus, which this process also follows. A round's
latency is the time from that event (evlink has learnt the change) until the
subscriber has the new state from the broker; one clock, one process.

Prints one Markdown row (p50, p99, max in milliseconds) on stdout and writes
it to bench/results/mqtt.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt

from bench.common import REPO, percentile
from evlink.app import create_app
from evlink.events import charge_state_topic
from evlink.models import Tier
from evlink.models.database import apply_migrations
from evlink.mqtt import accounts as mqtt_accounts
from evlink.providers.simulator import ManualClock, Simulator
from evlink.resolvers import accounts
from evlink.settings import Settings

TARGET_P99_MS = 200.0
ROUND_TIMEOUT = 10.0  # seconds a round may take before the bench fails


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def _mosquitto(folder: Path) -> AsyncIterator[int]:
    port = _free_port()
    config = folder / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "log_dest stderr\nlog_type information\n"
    )
    process = await asyncio.create_subprocess_exec(
        "/usr/sbin/mosquitto", "-c", str(config), stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    async with asyncio.timeout(ROUND_TIMEOUT):
        while b" running" not in await process.stderr.readline():
            pass
    try:
        yield port
    finally:
        process.kill()
        await process.wait()


async def measure(rounds: int) -> list[float]:
    """Milliseconds from evlink's charge-state event to the broker's delivery, per round."""
    with tempfile.TemporaryDirectory() as folder:
        database = f"sqlite://{folder}/bench.sqlite3"
        await apply_migrations(database)
        async with _mosquitto(Path(folder)) as port:
            settings = Settings(
                database_url=database, mqtt_url=f"mqtt://127.0.0.1:{port}", cache_ttl=0.2
            )
            clock = ManualClock()
            simulator = Simulator(clock, action_delay=1.0)
            app = create_app(settings, provider=simulator)
            async with app.router.lifespan_context(app):
                return await _rounds(app, simulator, clock, port, rounds)


async def _rounds(
    app: Any, simulator: Simulator, clock: ManualClock, port: int, rounds: int
) -> list[float]:
    user = await accounts.create_user("bench@example.com", Tier.PRO)
    vehicle = await accounts.add_vehicle(
        user, provider="simulator", provider_vehicle_id="sim-plugged-bench", name="Bench"
    )
    topic_id = (await mqtt_accounts.enable(user)).topic_id
    state_topic = f"evlink/{topic_id}/{vehicle.id}/state"
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    events = app.state.services.events
    async with (
        aiomqtt.Client("127.0.0.1", port) as client,
        events.subscribe(charge_state_topic(vehicle.id)) as learnt,
    ):
        await client.subscribe(state_topic, qos=1)
        received = client.messages
        plugged = await _next_state(received)  # the first state (retained or first read)
        for _ in range(rounds):
            plugged = not plugged
            simulator.update_vehicle("sim-plugged-bench", is_plugged_in=plugged)
            await clock.advance(1)
            async with asyncio.timeout(ROUND_TIMEOUT):
                await learnt.get()
                at = loop.time()
                while await _next_state(received) != plugged:
                    pass
            latencies.append((loop.time() - at) * 1000)
    return latencies


async def _next_state(messages: Any) -> bool:
    message = await anext(aiter(messages))
    state: dict[str, Any] = json.loads(message.payload)
    return bool(state["isPluggedIn"])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mqtt", description=__doc__)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    latencies = asyncio.run(measure(args.rounds))
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    verdict = "met" if p99 <= TARGET_P99_MS else "MISSED"
    row = (
        f"| change → MQTT broker ({len(latencies)} rounds) | p50 {p50:.1f} ms | "
        f"p99 {p99:.1f} ms | max {max(latencies):.1f} ms | target p99 ≤ "
        f"{TARGET_P99_MS:.0f} ms: {verdict} |"
    )
    print(row)
    (REPO / "bench" / "results" / "mqtt.md").write_text(
        "| measure | p50 | p99 | max | target |\n| --- | --- | --- | --- | --- |\n" + row + "\n"
    )
    return 0 if verdict == "met" else 1


if __name__ == "__main__":
    sys.exit(main())
