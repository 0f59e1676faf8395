"""evlink against a real Mosquitto: discovery, state, the switch, failures.

Each test has its own broker (tests/mqtt/broker.py) and a client that records
everything published; evlink runs with the simulator on a ManualClock.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from evlink.models import ChargingCommand, Tier, User, Vehicle
from evlink.mqtt import accounts
from evlink.mqtt.discovery import ENTITIES
from tests.conftest import TIMEOUT, Server
from tests.mqtt.broker import Heard, Mosquitto, heard

PREFIX = "evlink"


async def published_car(
    server: Server, tier: Tier = Tier.PRO, profile: str = "plugged"
) -> tuple[User, str, Vehicle, str]:
    """A user with publishing on and one simulated car: (user, key, car, topic id)."""
    user, key = await server.user(tier=tier)
    vehicle = await server.vehicle(user, profile)
    record = await accounts.enable(user)
    return user, key, vehicle, record.topic_id


def car_topic(topic_id: str, vehicle: Vehicle, leaf: str) -> str:
    return f"{PREFIX}/{topic_id}/{vehicle.id}/{leaf}"


def config_topic(component: str, topic_id: str, vehicle: Vehicle, key: str) -> str:
    return f"homeassistant/{component}/evlink_{topic_id}/{vehicle.id}_{key}/config"


async def wait_state(listener: Heard, topic_id: str, vehicle: Vehicle, **expected: Any) -> Any:
    return await listener.wait_json(
        car_topic(topic_id, vehicle, "state"),
        lambda state: all(state.get(name) == value for name, value in expected.items()),
    )


async def car_heard(server: Server, listener: Heard, tier: Tier = Tier.PRO) -> tuple[Vehicle, str]:
    """A plugged-in car of a new publishing user, once its first state is heard: (the
    car, its topic id)."""
    _, _, vehicle, topic_id = await published_car(server, tier)
    await wait_state(listener, topic_id, vehicle, isPluggedIn=True)
    return vehicle, topic_id


async def refused_switch(
    server: Server, listener: Heard, payload: bytes, tier: Tier = Tier.PRO
) -> tuple[Vehicle, str, Any]:
    """``payload`` published to the switch of a car heard (:func:`car_heard`), refused:
    (the car, its topic id, the REFUSED command as published)."""
    vehicle, topic_id = await car_heard(server, listener, tier)
    await listener.client.publish(car_topic(topic_id, vehicle, "charging/set"), payload, qos=1)
    return vehicle, topic_id, await wait_command(listener, topic_id, vehicle, "REFUSED")


async def wait_command(listener: Heard, topic_id: str, vehicle: Vehicle, state: str) -> Any:
    return await listener.wait_json(
        car_topic(topic_id, vehicle, "command"), lambda command: command["state"] == state
    )


async def test_a_published_car_appears_with_every_entity_and_its_state(
    server: Server, broker: Mosquitto
) -> None:
    async with heard(broker) as listener:
        user, _, vehicle, topic_id = await published_car(server)

        state = await wait_state(listener, topic_id, vehicle, isPluggedIn=True)
        for entity in ENTITIES:
            topic = config_topic(entity.component, topic_id, vehicle, entity.key)
            config = await listener.wait_json(topic, lambda _: True)
            assert config["unique_id"] == f"evlink_{vehicle.id}_{entity.key}"
            assert config["availability_topic"] == f"{PREFIX}/status"
            assert config["device"]["identifiers"] == [f"evlink_{vehicle.id}"]
            assert config["device"]["name"] == vehicle.name
            assert config["state_topic"].startswith(f"{PREFIX}/{topic_id}/{vehicle.id}/")
        switch = await listener.wait_json(
            config_topic("switch", topic_id, vehicle, "charging_switch"), lambda _: True
        )
        assert switch["command_topic"] == car_topic(topic_id, vehicle, "charging/set")
        assert switch["value_template"] == "{{ value_json.isCharging }}"
        assert state["isCharging"] is False
        assert state["batteryLevel"] == server.car(vehicle).battery_level
        assert (await listener.wait(lambda h: h.latest(f"{PREFIX}/status"))).payload == b"online"
        # The topics name the user by its random id, never by email.
        assert user.email not in "".join(message.topic for message in listener.messages)
        assert topic_id not in user.email


async def test_discovery_and_state_are_retained_for_a_client_that_comes_later(
    server: Server, broker: Mosquitto
) -> None:
    async with heard(broker) as first:
        vehicle, topic_id = await car_heard(server, first)
        await first.wait(lambda h: len([m for m in h.messages if "/config" in m.topic]) >= 11)
    async with heard(broker) as later:
        state = await wait_state(later, topic_id, vehicle, isPluggedIn=True)
        assert later.latest(car_topic(topic_id, vehicle, "state")).retain
        battery = config_topic("sensor", topic_id, vehicle, "battery")
        assert (await later.wait_json(battery, lambda _: True))["device_class"] == "battery"
        assert state["powerDeliveryState"] == "PLUGGED_IN:STOPPED"


async def test_the_switch_starts_charging_and_shows_the_car_not_the_request(
    server: Server, broker: Mosquitto
) -> None:
    async with heard(broker) as listener:
        _, _, vehicle, topic_id = await published_car(server)
        before = await wait_state(listener, topic_id, vehicle, isPluggedIn=True)

        await listener.client.publish(car_topic(topic_id, vehicle, "charging/set"), b"ON", qos=1)

        pending = await wait_command(listener, topic_id, vehicle, "PENDING")
        assert pending["action"] == "START"
        # Requested, not done: the switch's state (isCharging) is still the car's.
        assert listener.latest(car_topic(topic_id, vehicle, "state")).json()["isCharging"] is False
        await server.clock.advance(2)  # the simulated car takes the action
        charging = await wait_state(listener, topic_id, vehicle, isCharging=True)
        assert charging["powerDeliveryState"] == "PLUGGED_IN:CHARGING"
        confirmed = await wait_command(listener, topic_id, vehicle, "CONFIRMED")
        assert confirmed["id"] == pending["id"]
        await server.clock.advance(600)  # ten simulated minutes of charging
        later = await listener.wait_json(
            car_topic(topic_id, vehicle, "state"),
            lambda state: state["batteryLevel"] > before["batteryLevel"],
        )
        assert later["isCharging"] is True
        assert await ChargingCommand.filter(vehicle_id=vehicle.id).count() == 1


async def test_a_refused_command_is_published_with_its_code_and_the_switch_stays(
    server: Server, broker: Mosquitto
) -> None:
    async with heard(broker) as listener:
        vehicle, topic_id, refused = await refused_switch(server, listener, b"ON", Tier.FREE)
        assert refused["code"] == "FORBIDDEN_TIER"
        assert refused["action"] == "START"
        assert refused["id"] is None
        state = listener.latest(car_topic(topic_id, vehicle, "state")).json()
        assert state["isCharging"] is False
        assert await ChargingCommand.filter(vehicle_id=vehicle.id).count() == 0


async def test_off_while_not_charging_is_refused_with_invalid_vehicle_state(
    server: Server, broker: Mosquitto
) -> None:
    async with heard(broker) as listener:
        _, _, refused = await refused_switch(server, listener, b"OFF")
        assert refused["code"] == "INVALID_VEHICLE_STATE"


@pytest.mark.parametrize(
    ("payload", "retain", "why"),
    [
        (b"MAYBE", False, "expected ON or OFF"),
        (b"\xff\xfe", False, "expected ON or OFF"),
        (b"ON", True, "retained"),
    ],
)
async def test_a_malformed_or_retained_command_is_dropped_with_one_line(
    server: Server,
    broker: Mosquitto,
    caplog: pytest.LogCaptureFixture,
    payload: bytes,
    retain: bool,
    why: str,
) -> None:
    async with heard(broker) as listener:
        vehicle, topic_id = await car_heard(server, listener)
        topic = car_topic(topic_id, vehicle, "charging/set")
        with caplog.at_level(logging.INFO, logger="evlink.mqtt"):
            await listener.client.publish(topic, payload, qos=1, retain=retain)
            await listener.wait(lambda _: _dropped_lines(caplog))
            # Still working: a good command after the bad one runs.
            await listener.client.publish(topic, b"ON", qos=1)
            await wait_command(listener, topic_id, vehicle, "PENDING")
        lines = _dropped_lines(caplog)
        assert len(lines) == 1
        assert why in lines[0]
        assert await ChargingCommand.filter(vehicle_id=vehicle.id).count() == 1


async def test_a_topic_id_or_vehicle_id_not_of_evlinks_form_is_dropped_before_any_query(
    server: Server, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    async with heard(broker) as listener:
        vehicle, topic_id = await car_heard(server, listener)
        with caplog.at_level(logging.INFO, logger="evlink.mqtt"):
            # 40 hex characters: longer than a topic id (the column holds 32).
            await listener.client.publish(f"{PREFIX}/{'ab' * 20}/{vehicle.id}/charging/set", b"ON")
            await listener.client.publish(f"{PREFIX}/{topic_id}/not-a-uuid/charging/set", b"ON")
            await listener.wait(lambda _: len(_dropped_lines(caplog)) == 2)
            # Still working: the right topic runs.
            await listener.client.publish(car_topic(topic_id, vehicle, "charging/set"), b"ON")
            await wait_command(listener, topic_id, vehicle, "PENDING")
        lines = _dropped_lines(caplog)
        assert "not a topic id of evlink's form" in lines[0], lines
        assert "not a vehicle id (a UUID)" in lines[1], lines
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        assert await ChargingCommand.filter(vehicle_id=vehicle.id).count() == 1


async def test_a_flood_of_bad_commands_on_a_huge_topic_logs_few_short_lines(
    server: Server, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    async with heard(broker) as listener:
        vehicle, topic_id = await car_heard(server, listener)
        huge = f"{PREFIX}/{topic_id}/{'x' * 60_000}/charging/set"
        with caplog.at_level(logging.INFO, logger="evlink.mqtt"):
            for _ in range(200):
                await listener.client.publish(huge, b"ON", qos=1)
            # Messages are handled in order: the good one after the flood runs last.
            await listener.client.publish(car_topic(topic_id, vehicle, "charging/set"), b"ON")
            await wait_command(listener, topic_id, vehicle, "PENDING")
        lines = _dropped_lines(caplog)
        # One line a second at most; the flood takes a few seconds on a loaded machine.
        assert 1 <= len(lines) <= 5, len(lines)
        assert all(len(line) < 300 for line in caplog.messages), max(map(len, caplog.messages))
        assert f"{PREFIX}/{topic_id}/xxx" in lines[0]


def _dropped_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]


async def test_a_command_reaches_only_the_users_own_cars(
    server: Server, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    async with heard(broker) as listener:
        _, _, mine, my_topic_id = await published_car(server)
        _, _, theirs, their_topic_id = await published_car(server)
        await wait_state(listener, their_topic_id, theirs, isPluggedIn=True)
        with caplog.at_level(logging.INFO, logger="evlink.mqtt"):
            # Another user's car under my topic id, and a topic id nobody has.
            await listener.client.publish(f"{PREFIX}/{my_topic_id}/{theirs.id}/charging/set", b"ON")
            await listener.client.publish(f"{PREFIX}/0000/{theirs.id}/charging/set", b"ON")
            await listener.wait(lambda _: len(_dropped_lines(caplog)) == 2)
        assert await ChargingCommand.filter(vehicle_id=theirs.id).count() == 0
        assert listener.latest(car_topic(their_topic_id, theirs, "command")) is None
        assert listener.latest(f"{PREFIX}/{my_topic_id}/{theirs.id}/command") is None
        assert mine.id != theirs.id


async def test_home_assistant_restarting_gets_discovery_and_state_again(
    server: Server, broker: Mosquitto
) -> None:
    async with heard(broker) as listener:
        vehicle, topic_id = await car_heard(server, listener)
        battery = config_topic("sensor", topic_id, vehicle, "battery")
        state = car_topic(topic_id, vehicle, "state")
        await listener.wait(lambda h: h.on(battery))
        configs, states = len(listener.on(battery)), len(listener.on(state))

        await listener.client.publish("homeassistant/status", b"online", qos=1)

        await listener.wait(lambda h: len(h.on(battery)) > configs and len(h.on(state)) > states)


async def test_a_flood_of_home_assistant_online_is_two_republishes_the_last_after_it(
    server: Server, broker: Mosquitto
) -> None:
    async with heard(broker) as listener:
        vehicle, topic_id = await car_heard(server, listener)
        battery = config_topic("sensor", topic_id, vehicle, "battery")
        state = car_topic(topic_id, vehicle, "state")
        # Discovery as it stays: with the make the first read of the car gives.
        await listener.wait_json(battery, lambda config: "manufacturer" in config["device"])
        before = len(listener.on(battery))

        for _ in range(200):
            await listener.client.publish("homeassistant/status", b"online", qos=1)
        last_online = listener.latest("homeassistant/status")
        assert last_online is not None

        # Home Assistant still gets everything, after its last online (REPUBLISH_INTERVAL
        # of 5 s apart from the first round: within TIMEOUT).
        def after_last(topic: str) -> bool:
            return any(message.at > last_online.at for message in listener.on(topic))

        await listener.wait(lambda _: after_last(battery) and after_last(state))
        rounds = len(listener.on(battery)) - before
        assert 1 <= rounds <= 2, rounds


async def test_another_instances_last_will_is_answered_online(
    server: Server, broker: Mosquitto
) -> None:
    async with heard(broker, f"{PREFIX}/status") as listener:
        await listener.wait(lambda h: h.latest(f"{PREFIX}/status"))
        await listener.client.publish(f"{PREFIX}/status", b"offline", qos=1, retain=True)
        await listener.wait(
            lambda h: (
                len(h.on(f"{PREFIX}/status")) >= 3
                and h.latest(f"{PREFIX}/status").payload == b"online"
            )
        )


async def test_a_broker_restart_is_one_warning_and_everything_is_published_again(
    server: Server, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    user, key, vehicle, topic_id = await published_car(server, profile="charging")
    async with heard(broker) as listener:
        first = await wait_state(listener, topic_id, vehicle, isCharging=True)
    with caplog.at_level(logging.INFO, logger="evlink.mqtt"):
        await broker.stop()
        # evlink serves on: a status read, and a change of state while the broker is away.
        await server.clock.advance(600)
        response = await server.http.get(
            f"/api/status/{vehicle.id}", headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 200
        assert response.json()["batteryLevel"] > first["batteryLevel"]
        bridge = server.app.state.mqtt
        await asyncio.wait_for(bridge.disconnected.wait(), TIMEOUT)
        await broker.start()  # same port; persistence off: the broker forgot everything
        async with heard(broker) as listener:
            state = await wait_state(
                listener, topic_id, vehicle, batteryLevel=response.json()["batteryLevel"]
            )
            await listener.wait_json(
                config_topic("switch", topic_id, vehicle, "charging_switch"), lambda _: True
            )
            assert state["isCharging"] is True
        async with heard(broker) as later:  # retained: a client that comes now has it
            await wait_state(later, topic_id, vehicle, batteryLevel=state["batteryLevel"])
            assert later.latest(car_topic(topic_id, vehicle, "state")).retain
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "unavailable" in warnings[0].getMessage()
    assert user.email not in warnings[0].getMessage()


async def test_turning_publishing_off_clears_the_cars_topics(
    server: Server, broker: Mosquitto
) -> None:
    async with heard(broker) as listener:
        user, _, vehicle, topic_id = await published_car(server)
        battery = config_topic("sensor", topic_id, vehicle, "battery")
        await listener.wait_json(battery, lambda _: True)

        await accounts.disable(user)

        state = car_topic(topic_id, vehicle, "state")
        await listener.wait(lambda h: h.latest(battery).payload == b"")
        await listener.wait(lambda h: h.latest(state).payload == b"")
        assert any(message.payload for message in listener.on(state))  # it had a state


async def test_with_a_password_protected_broker_and_wrong_credentials_evlink_serves_on(
    make_settings: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.conftest import _truncate, run_server
    from tests.mqtt.broker import mosquitto

    async with mosquitto(tmp_path, users={"evlink": "right", "ha": "ha-secret"}) as locked:
        await _truncate(make_settings().database_url)
        with caplog.at_level(logging.INFO, logger="evlink.mqtt"):
            wrong = make_settings(mqtt_url=locked.url("evlink:wrong-secret"))
            async with run_server(wrong) as server:
                user, key, vehicle, _ = await published_car(server)
                response = await server.http.get(
                    f"/api/status/{vehicle.id}", headers={"Authorization": f"Bearer {key}"}
                )
                assert response.status_code == 200
                # Three refused tries (0.5, 1, 2 s apart): still one WARNING.
                await locked.wait_log("not authorised", count=3)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert "wrong-secret" not in warnings[0]

        right = make_settings(mqtt_url=locked.url("evlink:right"))
        async with (
            run_server(right) as server,
            heard(locked, username="ha", password="ha-secret") as listener,
        ):
            await wait_state(listener, (await accounts.enable(user)).topic_id, vehicle)


async def test_a_change_reaches_the_broker_within_200_ms_p99(
    server: Server, broker: Mosquitto
) -> None:
    from evlink.events import charge_state_topic

    _, _, vehicle, topic_id = await published_car(server)
    provider_id = vehicle.provider_vehicle_id or ""
    loop = asyncio.get_running_loop()
    latencies = []
    async with (
        heard(broker, car_topic(topic_id, vehicle, "state")) as listener,
        server.services.events.subscribe(charge_state_topic(vehicle.id)) as learnt,
    ):
        await wait_state(listener, topic_id, vehicle, isPluggedIn=True)
        for round_ in range(20):
            plugged = round_ % 2 == 1
            server.simulator.update_vehicle(provider_id, is_plugged_in=plugged)
            await server.clock.advance(1)
            assert await learnt.get(timeout=TIMEOUT) is not None  # evlink has learnt it
            at = loop.time()
            state = await wait_state(listener, topic_id, vehicle, isPluggedIn=plugged)
            arrived = listener.latest(car_topic(topic_id, vehicle, "state"))
            assert arrived is not None
            assert state["isPluggedIn"] is plugged
            latencies.append(max(0.0, arrived.at - at))
    latencies.sort()
    assert latencies[-1] < 0.2, latencies  # p99 of 20 rounds is the slowest


async def test_a_charging_cars_session_energy_and_cost_appear_and_grow(
    server: Server, broker: Mosquitto
) -> None:
    user, key = await server.user(tier=Tier.PRO)
    priced = await server.graphql(
        'mutation { setTariff(pricePerKwh: 0.30, currency: "eur") { currency } }', key=key
    )
    assert priced["data"]["setTariff"]["currency"] == "EUR", priced
    async with heard(broker) as listener:
        vehicle = await server.vehicle(user, "plugged", charge_rate=11.0)
        # Read once before publishing: the device is complete from its first config.
        status = await server.http.get(
            f"/api/status/{vehicle.id}", headers={"Authorization": f"Bearer {key}"}
        )
        assert status.status_code == 200
        topic_id = (await accounts.enable(user)).topic_id
        session_topic = car_topic(topic_id, vehicle, "session")
        cost_topic = config_topic("sensor", topic_id, vehicle, "session_cost")
        await wait_state(listener, topic_id, vehicle, isPluggedIn=True)
        # No session yet: no session JSON, and a cost without a unit.
        assert "unit_of_measurement" not in await listener.wait_json(cost_topic, lambda _: True)
        assert listener.latest(session_topic) is None

        await listener.client.publish(car_topic(topic_id, vehicle, "charging/set"), b"ON", qos=1)
        await wait_command(listener, topic_id, vehicle, "PENDING")
        await server.clock.advance(2)  # the simulated car starts charging: a session opens

        first = await listener.wait_json(session_topic, lambda session: session["active"])
        assert first["currency"] == "EUR"
        cost_config = await listener.wait_json(
            cost_topic, lambda config: config.get("unit_of_measurement") == "EUR"
        )
        assert cost_config["device_class"] == "monetary"
        energy_config = await listener.wait_json(
            config_topic("sensor", topic_id, vehicle, "session_energy"), lambda _: True
        )
        assert energy_config["state_topic"] == session_topic

        await server.clock.advance(600)  # ten simulated minutes at 11 kW: about 1.8 kWh
        grown = await listener.wait_json(
            session_topic,
            lambda session: (session["energyKwh"] or 0) > (first["energyKwh"] or 0) + 1,
        )
        assert grown["id"] == first["id"]
        assert grown["active"] is True
        assert grown["cost"] == pytest.approx(grown["energyKwh"] * 0.30, abs=1e-3)
        assert grown["cost"] > (first["cost"] or 0)
    async with heard(broker) as later:  # retained: a client that comes now has it
        kept = await later.wait_json(session_topic, lambda session: session["id"] == first["id"])
        assert later.latest(session_topic).retain
        assert kept["energyKwh"] >= grown["energyKwh"]
