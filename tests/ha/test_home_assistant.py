"""A real Home Assistant with its MQTT integration on the test's broker, and evlink.

Run by ``make ha-test`` (which installs Home Assistant 2024.3.3 into .venv-ha);
skipped unless ``EVLINK_TEST_HASS`` names Home Assistant's ``hass``. Checks what
a user sees: the car's entities appear, the battery sensor moves while the
simulated car charges, and turning the Charging switch on starts charging, the
switch showing on only once the car charges.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from evlink.mqtt import accounts
from evlink.mqtt.discovery import ENTITIES
from tests.conftest import Server
from tests.ha.home_assistant import HomeAssistant, home_assistant
from tests.mqtt.broker import Mosquitto

HASS = os.environ.get("EVLINK_TEST_HASS", "")

pytestmark = pytest.mark.skipif(
    not HASS, reason="EVLINK_TEST_HASS is not set: the Home Assistant test runs in make ha-test"
)


@pytest.fixture
async def ha(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[HomeAssistant]:
    async with home_assistant(HASS, tmp_path / "ha") as running:
        await running.add_mqtt("127.0.0.1", broker.port)
        yield running


def entity(domain: str, key: str) -> str:
    return f"{domain}.test_plugged_{key}"  # the car is named "Test plugged"


async def test_home_assistant_shows_the_car_and_its_switch_follows_the_car(
    server: Server, ha: HomeAssistant
) -> None:
    user, _ = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    await accounts.enable(user)

    expected = {entity(e.component, e.key) for e in ENTITIES}
    await ha.wait(lambda states: expected <= set(states))
    battery = await ha.wait_state(entity("sensor", "battery"), lambda value: value.isdigit())
    assert int(battery["state"]) == server.car(vehicle).battery_level
    assert battery["attributes"]["unit_of_measurement"] == "%"
    switch = entity("switch", "charging_switch")
    assert (await ha.wait_state(switch, lambda value: value == "off"))["state"] == "off"
    plugged = await ha.wait_state(entity("binary_sensor", "plugged_in"), lambda v: v == "on")
    assert plugged["attributes"]["device_class"] == "plug"

    await ha.call("switch", "turn_on", entity_id=switch)

    command = await ha.wait_state(entity("sensor", "charging_command"), lambda v: v == "PENDING")
    assert command["attributes"]["action"] == "START"
    # Asked, not done: the switch still shows the car, which does not charge yet.
    assert ha.states[switch]["state"] == "off"
    await server.clock.advance(2)  # the simulated car takes the action
    await ha.wait_state(switch, lambda value: value == "on")
    await ha.wait_state(entity("sensor", "charging_command"), lambda v: v == "CONFIRMED")
    await ha.wait_state(entity("binary_sensor", "charging"), lambda value: value == "on")
    await server.clock.advance(600)  # ten simulated minutes of charging
    await ha.wait_state(
        entity("sensor", "battery"),
        lambda value: value.isdigit() and int(value) > int(battery["state"]),
    )
