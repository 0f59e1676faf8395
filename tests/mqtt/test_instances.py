"""Two evlink instances on one database, one Redis and one broker: each change is
published once, each switch message is run by one instance."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from evlink.models import ChargingCommand
from evlink.mqtt import accounts
from evlink.providers.simulator import ManualClock, Simulator
from evlink.settings import Settings
from tests.conftest import _truncate, run_server, shared_settings
from tests.mqtt.broker import Mosquitto, heard
from tests.mqtt.test_bridge import car_topic, wait_command, wait_state


@pytest.fixture
def shared(settings: Settings) -> Settings:
    return replace(shared_settings(settings), command_lease=0.9)


async def test_two_instances_publish_each_change_once_and_run_each_command_once(
    shared: Settings, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    await _truncate(shared.database_url)
    clock = ManualClock()
    car_park = Simulator(clock, action_delay=1.0)  # the one provider both instances talk to
    async with (
        run_server(shared, clock=clock, simulator=car_park) as a,
        run_server(shared, clock=clock, simulator=car_park) as b,
        heard(broker) as listener,
    ):
        user, _ = await a.user()
        vehicle = await a.vehicle(user, "plugged")
        topic_id = (await accounts.enable(user)).topic_id
        await wait_state(listener, topic_id, vehicle, isPluggedIn=True)
        leaders = [server.app.state.mqtt.leader for server in (a, b)]
        assert sorted(leaders) == [False, True]

        car_park.update_vehicle(vehicle.provider_vehicle_id or "", is_plugged_in=False)
        await clock.advance(1)  # pushed into B (the last to start)
        unplugged = await wait_state(listener, topic_id, vehicle, isPluggedIn=False)
        car_park.update_vehicle(vehicle.provider_vehicle_id or "", is_plugged_in=True)
        await clock.advance(1)
        await wait_state(listener, topic_id, vehicle, isPluggedIn=True, isCharging=False)
        state_topic = car_topic(topic_id, vehicle, "state")
        same = [m for m in listener.on(state_topic) if m.json() == unplugged]
        assert len(same) == 1  # one instance published it

        with caplog.at_level(logging.INFO, logger="evlink.mqtt"):
            await listener.client.publish(
                car_topic(topic_id, vehicle, "charging/set"), b"OFF", qos=1
            )
            await wait_command(listener, topic_id, vehicle, "REFUSED")
            await listener.client.publish(
                car_topic(topic_id, vehicle, "charging/set"), b"ON", qos=1
            )
            await wait_command(listener, topic_id, vehicle, "PENDING")
            await clock.advance(2)
            await wait_state(listener, topic_id, vehicle, isCharging=True)
            await wait_command(listener, topic_id, vehicle, "CONFIRMED")
        refused = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(refused) == 1  # taken by one instance only
        assert await ChargingCommand.filter(vehicle_id=vehicle.id).count() == 1
