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
from tests.playground.chromium import CHROMIUM, launch

HASS = os.environ.get("EVLINK_TEST_HASS", "")
DOCS_PICTURE = Path(__file__).resolve().parents[2] / "docs" / "home-assistant-device.png"

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
    server: Server, ha: HomeAssistant, tmp_path: Path
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
    if CHROMIUM is not None:
        await device_page_shows_the_entities(ha, tmp_path)


# The text of the page, shadow roots included (HA's UI is web components).
DEEP_TEXT = """(() => {
  const texts = [document.body.innerText];
  const walk = (node) => {
    for (const element of node.querySelectorAll('*')) {
      if (element.shadowRoot) {
        texts.push(element.shadowRoot.textContent);
        walk(element.shadowRoot);
      }
    }
  };
  walk(document);
  return texts.join(' ');
})()"""


async def device_page_shows_the_entities(ha: HomeAssistant, tmp_path: Path) -> None:
    """The car's device page in HA's UI lists its entities (EVLINK_UPDATE_SCREENSHOTS=1
    keeps its picture as docs/home-assistant-device.png)."""
    switch = entity("switch", "charging_switch")
    device_id = await ha.template("{{ device_id('" + switch + "') }}")
    async with launch(tmp_path / "chromium") as browser:
        page = await browser.new_page()
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            width=1280,
            height=1000,
            deviceScaleFactor=1,
            mobile=False,
        )
        await page.goto(ha.base_url + "/auth/providers")  # any page of HA's origin
        await page.evaluate(ha.ui_tokens_script())
        await page.goto(f"{ha.base_url}/config/devices/device/{device_id}")
        await page.wait_for(
            f"{DEEP_TEXT}.includes('Charging command') && {DEEP_TEXT}.includes('Time to full')",
            "the device page with its entities",
            timeout=60,
        )
        picture = tmp_path / "device.png"
        await page.screenshot(picture)
    if os.environ.get("EVLINK_UPDATE_SCREENSHOTS") == "1":
        DOCS_PICTURE.write_bytes(picture.read_bytes())
