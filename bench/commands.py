"""Charging commands: from the provider's state change to the CONFIRMED event.

Each round sends START (then STOP, alternately) for the commanded car over REST,
follows the command with the ``chargingCommand`` subscription, and then moves the
simulator's clock past the action delay (``POST /bench/advance``, which answers
the monotonic time just before the move). Inside that move the simulator carries
out the action: the car's state changes and is pushed to evlink, as Enode's
webhook would. The measured time runs from there to the moment the client
receives the command's ``CONFIRMED``.

The command watcher polls the provider every ``EVLINK_CHARGING_POLL_INTERVAL``
(2 s by default) when nothing happens. Times well below that show that the
confirmation came by the event path; times near it would mean a poll found it.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

__all__ = ["CommandResult", "run_commands"]

QUERY = "subscription Follow($id: ID!) { chargingCommand(id: $id) { id state } }"
TIMEOUT = 15.0  # seconds a round may take


@dataclass(slots=True)
class CommandResult:
    """Milliseconds from the simulated car's change to the CONFIRMED event, per round."""

    confirmed_ms: list[float] = field(default_factory=list)
    other_ends: list[str] = field(default_factory=list)  # rounds that did not end CONFIRMED


async def _next_state(ws: ClientConnection, operation: str) -> tuple[str | None, float]:
    """The next state of the followed command (None when the subscription completes)."""
    while True:
        message = json.loads(await ws.recv())
        arrived = time.monotonic()
        if message.get("id") != operation:
            continue
        if message["type"] == "complete":
            return None, arrived
        if message["type"] == "next":
            payload = message["payload"]
            if payload.get("errors"):
                raise RuntimeError(f"chargingCommand failed: {payload['errors']}")
            return str(payload["data"]["chargingCommand"]["state"]), arrived
        if message["type"] == "error":
            raise RuntimeError(f"chargingCommand refused: {message}")


async def _round(
    http: httpx.AsyncClient, ws: ClientConnection, car: dict[str, Any], n: int, delay: float
) -> tuple[str, float]:
    action = "START" if n % 2 == 0 else "STOP"
    answer = await http.post(f"/api/charging/{car['id']}", json={"action": action})
    answer.raise_for_status()
    command_id = answer.json()["command_id"]
    operation = f"c{n}"
    subscribe = {"query": QUERY, "variables": {"id": command_id}}
    await ws.send(json.dumps({"id": operation, "type": "subscribe", "payload": subscribe}))
    state, _ = await _next_state(ws, operation)
    if state != "PENDING":
        return f"{action}: {state} before the change", 0.0
    moved = await http.post(f"/bench/advance?seconds={delay}")
    moved.raise_for_status()
    changed_at = float(moved.json()["changed_at"])
    while True:
        state, arrived = await _next_state(ws, operation)
        if state is None or state != "PENDING":
            return f"{action}: {state}", (arrived - changed_at) * 1000


async def run_commands(
    server: dict[str, Any], base_url: str, ws_url: str, *, rounds: int, action_delay: float
) -> CommandResult:
    """Alternate START and STOP ``rounds`` times; time each confirmation."""
    result = CommandResult()
    headers = {"Authorization": f"Bearer {server['key']}"}
    async with (
        httpx.AsyncClient(base_url=base_url, headers=headers, timeout=TIMEOUT) as http,
        connect(ws_url, subprotocols=["graphql-transport-ws"], ping_interval=None) as ws,  # type: ignore[list-item]
    ):
        init = {"type": "connection_init", "payload": {"Authorization": headers["Authorization"]}}
        await ws.send(json.dumps(init))
        ack = json.loads(await ws.recv())
        if ack.get("type") != "connection_ack":
            raise RuntimeError(f"not acknowledged: {ack}")
        for n in range(rounds):
            outcome, elapsed = await asyncio.wait_for(
                _round(http, ws, server["commanded"], n, action_delay), TIMEOUT
            )
            if outcome.endswith("CONFIRMED"):
                result.confirmed_ms.append(elapsed)
            else:
                result.other_ends.append(outcome)
    return result
