"""Property tests of the charging rules: random event sequences against the simulator.

Hypothesis draws a starting car and a list of steps (plug or unplug, START or STOP
over REST or GraphQL, a few requests at once, simulated time passing, a fault of
the car, an outage of the provider) and plays them against ONE running server per
example. After every step and at the end it checks what must always hold:

- never two PENDING commands for one vehicle, at any moment: read after every
  step, and over the whole history (no command is created before the one it
  replaces has ended);
- every command reaches an end state by its deadline (a short
  EVLINK_CHARGING_DEADLINE here; the end is awaited on the command's events);
- no command is sent more than EVLINK_CHARGING_MAX_ATTEMPTS times;
- a CONFIRMED START means the simulated car was charging at some moment while the
  command was live (and a CONFIRMED STOP that it was not): evlink confirms only
  what the car did, never a stale or assumed state;
- every answer is a documented one (never a 500).

The car changes only inside the steps (the simulator's clock is manual), so each
step records the car before and after it, and a moment in a command's life falls
into a known step. Deadlines are on the wall clock, as in production.
``EVLINK_PROPERTY_EXAMPLES`` sets the number of examples (default 20).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evlink.domain import CHARGING, ChargingAction
from evlink.errors import ProviderUnavailable
from evlink.models import ChargingCommand, CommandState, Vehicle
from evlink.providers.simulator import SimulatorFault
from evlink.resolvers.follow import wait_for_command
from evlink.settings import Settings
from tests.conftest import Server, _truncate, run_server

EXAMPLES = int(os.environ.get("EVLINK_PROPERTY_EXAMPLES", "20"))
DEADLINE = 0.6  # seconds: short, so that a hanging command ends within the example
MAX_ATTEMPTS = 3
# How late after its deadline the watcher may end a command: it wakes at the deadline,
# then reads the command, the car and the action (database and provider) once.
LATENESS = timedelta(seconds=1.0)
# Answers a charging request may get, by HTTP status, with their codes.
ALLOWED = {
    200: None,
    400: {"INVALID_VEHICLE_STATE"},
    422: {"SMART_CHARGING_ACTIVE"},
    502: {"PROVIDER_UNAVAILABLE"},
    503: {"PROVIDER_UNAVAILABLE"},
    504: {"PROVIDER_UNAVAILABLE"},
}
GRAPHQL_CODES = {code for codes in ALLOWED.values() if codes for code in codes}
SET_CHARGING = """mutation($id: ID!, $action: ChargingAction!) {
  setCharging(vehicleId: $id, action: $action) { id state }
}"""

ACTIONS = st.sampled_from(["START", "STOP"])
STEP = st.one_of(
    st.tuples(st.just("plug"), st.booleans()),
    st.tuples(st.just("charge"), ACTIONS, st.sampled_from(["rest", "graphql"])),
    st.tuples(st.just("race"), st.lists(ACTIONS, min_size=2, max_size=4)),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 1.0, 2.0, 30.0, 3600.0])),
    st.tuples(st.just("fault"), st.sampled_from([None, *SimulatorFault])),
    st.tuples(st.just("outage"), st.booleans()),
)


@dataclass
class Moment:
    """One step: when it ran (wall clock) and whether the car charged before and after."""

    started: datetime
    ended: datetime
    charging: tuple[bool, bool]


@dataclass
class Play:
    server: Server
    key: str
    vehicle: Vehicle
    moments: list[Moment] = field(default_factory=list)
    answers: int = 0

    @property
    def provider_id(self) -> str:
        assert self.vehicle.provider_vehicle_id is not None
        return self.vehicle.provider_vehicle_id

    def car_charging(self) -> bool:
        return self.server.car(self.vehicle).power_delivery_state == CHARGING

    async def step(self, step: tuple[Any, ...]) -> None:
        started, before = datetime.now(UTC), self.car_charging()
        await self._run(step)
        self.moments.append(Moment(started, datetime.now(UTC), (before, self.car_charging())))

    async def _run(self, step: tuple[Any, ...]) -> None:
        simulator = self.server.simulator
        match step:
            case ("plug", plugged):
                simulator.update_vehicle(self.provider_id, is_plugged_in=plugged)
            case ("charge", action, "rest"):
                await self.rest(action)
            case ("charge", action, _):
                await self.graphql(action)
            case ("race", actions):
                await asyncio.gather(*(self.rest(action) for action in actions))
            case ("advance", seconds):
                await self.server.clock.advance(seconds)
            case ("fault", fault):
                reachable = fault != SimulatorFault.UNREACHABLE
                simulator.update_vehicle(self.provider_id, fault=fault, is_reachable=reachable)
            case ("outage", on):
                simulator.outage = ProviderUnavailable() if on else None

    async def rest(self, action: str) -> None:
        response = await self.server.http.post(
            f"/api/charging/{self.vehicle.id}",
            json={"action": action},
            headers={"Authorization": f"Bearer {self.key}"},
        )
        assert response.status_code in ALLOWED, response.text
        codes = ALLOWED[response.status_code]
        assert codes is None or response.json()["code"] in codes, response.text
        self.answers += 1

    async def graphql(self, action: str) -> None:
        body = await self.server.graphql(
            SET_CHARGING, {"id": str(self.vehicle.id), "action": action}, key=self.key
        )
        if body.get("errors"):
            assert body["errors"][0]["extensions"]["code"] in GRAPHQL_CODES, body
        else:
            assert body["data"]["setCharging"]["state"] in {s.value for s in CommandState}
        self.answers += 1

    async def commands(self) -> list[ChargingCommand]:
        return await ChargingCommand.filter(vehicle_id=self.vehicle.id).order_by("created_at")

    async def check_now(self) -> None:
        commands = await self.commands()
        pending = [c for c in commands if c.state == CommandState.PENDING]
        assert len(pending) <= 1, f"{len(pending)} PENDING commands at once"
        assert all(c.attempts <= MAX_ATTEMPTS for c in commands)

    async def settle(self) -> list[ChargingCommand]:
        """Every command at its end state, awaited on its events (bounded by its deadline)."""
        ended = []
        for command in await self.commands():
            left = (command.deadline_at - datetime.now(UTC) + LATENESS).total_seconds()
            timeout = max(0.0, left) + 1.0
            final = await asyncio.wait_for(
                wait_for_command(self.server.services, command, timeout), timeout + 1.0
            )
            assert final.state.is_final, f"{final.id} still PENDING after its deadline"
            ended.append(final)
        return ended

    def charged_while(self, command: ChargingCommand) -> set[bool]:
        """What the car did (charging or not) at the moments the command was live."""
        assert command.completed_at is not None
        seen: set[bool] = set()
        for moment in self.moments:
            if moment.ended >= command.created_at and moment.started <= command.completed_at:
                seen.update(moment.charging)
        # Between two steps the car keeps the state the earlier one left it in.
        earlier = [m for m in self.moments if m.ended <= command.created_at]
        if earlier:
            seen.add(earlier[-1].charging[1])
        return seen


def rules(settings: Settings) -> Settings:
    return replace(
        settings,
        charging_deadline=DEADLINE,
        charging_max_attempts=MAX_ATTEMPTS,
        charging_poll_interval=0.05,
        charging_poll_max_interval=0.2,
        charging_retry_backoff=0.01,
        simulator_action_delay=1.0,
    )


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,
)
@given(
    start=st.sampled_from(["unplugged", "plugged", "charging"]),
    steps=st.lists(STEP, min_size=1, max_size=12),
)
async def test_random_event_sequences_keep_the_charging_rules(
    settings: Settings, start: str, steps: list[tuple[Any, ...]]
) -> None:
    await _truncate(settings.database_url)
    async with run_server(rules(settings)) as server:
        user, key = await server.user()
        play = Play(server, key, await server.vehicle(user, start))

        for step in steps:
            await play.step(step)
            await play.check_now()
        commands = await play.settle()

    for command in commands:
        assert command.attempts <= MAX_ATTEMPTS, command.id
        assert command.completed_at is not None
        assert command.completed_at <= command.deadline_at + LATENESS, (
            f"{command.id} ended {command.state} "
            f"{(command.completed_at - command.deadline_at).total_seconds():.2f} s late"
        )
        if command.state == CommandState.CONFIRMED:
            wanted = command.action == ChargingAction.START
            assert wanted in play.charged_while(command), (
                f"{command.action} CONFIRMED but the car never was where it wanted"
            )
    # One live command per vehicle over the whole history: none starts before the last ends.
    for earlier, later in itertools.pairwise(commands):
        assert earlier.completed_at is not None
        assert later.created_at >= earlier.completed_at, (earlier.id, later.id)
