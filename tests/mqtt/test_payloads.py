"""The pure parts of evlink.mqtt: broker URLs, prefixes, topics, discovery configs."""

from __future__ import annotations

import pytest

from evlink.domain import ChargingAction
from evlink.mqtt.accounts import is_topic_id, new_topic_id
from evlink.mqtt.commands import MAX_LOGGED, LogLimiter, parse_switch, shown
from evlink.mqtt.config import check_prefix, parse_broker_url
from evlink.mqtt.discovery import (
    ENTITIES,
    POWER_DELIVERY_STATES,
    Car,
    discovery_messages,
    refusal_payload,
    removal_messages,
    session_payload,
    state_payload,
)
from evlink.mqtt.topics import Topics
from evlink.settings import Settings, SettingsError

CAR = Car("0c0ffee0-0000-4000-8000-000000000001", "a1b2c3d4e5f60718", "My Car", "Tesla", "Y")


def test_a_broker_url_gives_host_port_credentials_and_tls() -> None:
    plain = parse_broker_url("mqtt://ha:s%40cret@broker.lan")
    assert (plain.host, plain.port, plain.username, plain.password, plain.tls) == (
        "broker.lan",
        1883,
        "ha",
        "s@cret",
        False,
    )
    tls = parse_broker_url("mqtts://broker.lan:8884")
    assert (tls.port, tls.tls, tls.username) == (8884, True, None)
    assert parse_broker_url("mqtts://broker.lan").port == 8883
    assert "s@cret" not in repr(plain)
    assert "cret" not in plain.describe()
    assert plain.describe() == "mqtt://ha@broker.lan:1883"


@pytest.mark.parametrize(
    "url", ["http://broker", "mqtt://", "mqtt://host/path", "mqtt://host:99999", "broker:1883"]
)
def test_a_bad_broker_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="mqtt"):
        parse_broker_url(url)


def test_a_bad_url_setting_never_repeats_its_password() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"EVLINK_MQTT_URL": "http://user:hunter2@broker"}, env_file=None)
    assert "EVLINK_MQTT_URL" in str(refused.value)
    assert "hunter2" not in str(refused.value)
    assert "hunter2" not in repr(
        Settings.from_env({"EVLINK_MQTT_URL": "mqtt://user:hunter2@broker"}, env_file=None)
    )


def test_mqtt_settings_default_and_parse() -> None:
    defaults = Settings.from_env({}, env_file=None)
    assert (defaults.mqtt_url, defaults.mqtt_prefix, defaults.mqtt_discovery_prefix) == (
        "",
        "evlink",
        "homeassistant",
    )
    given = Settings.from_env(
        {"EVLINK_MQTT_PREFIX": "home/evlink", "EVLINK_MQTT_DISCOVERY_PREFIX": "ha"}, env_file=None
    )
    assert (given.mqtt_prefix, given.mqtt_discovery_prefix) == ("home/evlink", "ha")


@pytest.mark.parametrize("prefix", ["evlink/#", "a/+/b", "/evlink", "evlink/", "$SYS", "a//b"])
def test_a_prefix_with_wildcards_or_empty_levels_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="topic"):
        check_prefix(prefix)
    with pytest.raises(SettingsError, match="EVLINK_MQTT_PREFIX"):
        Settings.from_env({"EVLINK_MQTT_PREFIX": prefix}, env_file=None)


def test_switch_topics_are_parsed_back_and_nothing_else() -> None:
    topics = Topics("home/evlink", "homeassistant")
    topic = topics.charging_set("uid", CAR.vehicle_id)
    assert topic == f"home/evlink/uid/{CAR.vehicle_id}/charging/set"
    assert topics.parse_charging_set(topic) == ("uid", CAR.vehicle_id)
    for other in (
        topics.state("uid", CAR.vehicle_id),
        f"home/evlink/uid/{CAR.vehicle_id}/charging/set/x",
        f"home/evlink//{CAR.vehicle_id}/charging/set",
        f"evlink/uid/{CAR.vehicle_id}/charging/set",
    ):
        assert topics.parse_charging_set(other) is None
    assert topics.charging_set_filter == "$share/evlink/home/evlink/+/+/charging/set"


@pytest.mark.parametrize(
    ("payload", "action"),
    [
        (b"ON", ChargingAction.START),
        (b"off\n", ChargingAction.STOP),
        (b"START", None),
        (b"", None),
        (b"\xff", None),
    ],
)
def test_the_switch_takes_on_and_off_only(payload: bytes, action: ChargingAction | None) -> None:
    assert parse_switch(payload) == action


def test_every_entity_has_a_config_on_its_own_topic_with_the_device() -> None:
    topics = Topics()
    messages = discovery_messages(topics, CAR)
    assert len(messages) == len(ENTITIES)
    assert len({topic for topic, _ in messages}) == len(ENTITIES)
    unique_ids = {config["unique_id"] for _, config in messages}
    assert len(unique_ids) == len(ENTITIES)
    for (topic, config), entity in zip(messages, ENTITIES, strict=True):
        assert topic == (
            f"homeassistant/{entity.component}/evlink_{CAR.user_topic_id}/"
            f"{CAR.vehicle_id}_{entity.key}/config"
        )
        assert config["availability_topic"] == "evlink/status"
        assert config["device"]["identifiers"] == [f"evlink_{CAR.vehicle_id}"]
        assert config["device"]["manufacturer"] == "Tesla"
        assert config["object_id"] == f"my_car_{entity.key}"


def test_the_switch_reads_the_cars_charging_and_shows_the_command_as_attributes() -> None:
    configs = {config["unique_id"]: config for _, config in discovery_messages(Topics(), CAR)}
    switch = configs[f"evlink_{CAR.vehicle_id}_charging_switch"]
    base = f"evlink/{CAR.user_topic_id}/{CAR.vehicle_id}"
    assert switch["state_topic"] == f"{base}/state"
    assert switch["value_template"] == "{{ value_json.isCharging }}"
    assert (switch["state_on"], switch["state_off"]) == ("True", "False")
    assert switch["command_topic"] == f"{base}/charging/set"
    assert (switch["payload_on"], switch["payload_off"]) == ("ON", "OFF")
    assert switch["json_attributes_topic"] == f"{base}/command"
    command = configs[f"evlink_{CAR.vehicle_id}_charging_command"]
    assert command["state_topic"] == f"{base}/command"
    power = configs[f"evlink_{CAR.vehicle_id}_power_delivery_state"]
    assert power["options"] == list(POWER_DELIVERY_STATES)
    assert "'UNKNOWN'" in power["value_template"]


def test_removal_clears_every_retained_topic_of_the_car() -> None:
    cleared = removal_messages(Topics(), CAR)
    assert len(cleared) == len(ENTITIES) + 3
    for leaf in ("state", "command", "session"):
        assert f"evlink/{CAR.user_topic_id}/{CAR.vehicle_id}/{leaf}" in cleared


def test_state_and_refusal_payloads() -> None:
    assert state_payload({"vehicleId": "x", "batteryLevel": 50}) == {"batteryLevel": 50}
    refusal = refusal_payload("START", "FORBIDDEN_TIER", "PRO only", "2024-01-01T00:00:00.000Z")
    assert refusal["state"] == "REFUSED"
    assert refusal["code"] == "FORBIDDEN_TIER"
    assert refusal["id"] is None


def test_the_session_energy_and_cost_read_the_session_topic_without_a_state_class() -> None:
    base = f"evlink/{CAR.user_topic_id}/{CAR.vehicle_id}"
    configs = {
        config["unique_id"]: config for _, config in discovery_messages(Topics(), CAR, "EUR")
    }
    energy = configs[f"evlink_{CAR.vehicle_id}_session_energy"]
    assert (energy["device_class"], energy["unit_of_measurement"]) == ("energy", "kWh")
    assert energy["value_template"] == "{{ value_json.energyKwh }}"
    cost = configs[f"evlink_{CAR.vehicle_id}_session_cost"]
    assert (cost["device_class"], cost["unit_of_measurement"]) == ("monetary", "EUR")
    assert cost["value_template"] == "{{ value_json.cost }}"
    for entity in (energy, cost):
        # Per session, back to 0 at the next: not a measurement, not an ever-growing meter.
        assert "state_class" not in entity
        assert entity["state_topic"] == f"{base}/session"
        assert entity["json_attributes_topic"] == f"{base}/session"


def test_the_cost_unit_is_the_sessions_currency_and_none_without_one() -> None:
    def cost(currency: str | None) -> dict[str, object]:
        configs = dict(discovery_messages(Topics(), CAR, currency))
        return configs[
            f"homeassistant/sensor/evlink_{CAR.user_topic_id}/{CAR.vehicle_id}_session_cost/config"
        ]

    assert cost("SEK")["unit_of_measurement"] == "SEK"
    assert "unit_of_measurement" not in cost(None)
    # Only the cost follows the currency.
    others = [
        config
        for _, config in discovery_messages(Topics(), CAR, "SEK")
        if not config["unique_id"].endswith("_session_cost")
    ]
    assert len(others) == len(ENTITIES) - 1
    assert not any("SEK" in str(config) for config in others)


def test_session_payload() -> None:
    payload = session_payload(
        session_id="s1",
        active=True,
        started_at="2025-05-20T16:00:01.000Z",
        ended_at=None,
        end_reason=None,
        energy_kwh=1.8333,
        cost=0.55,
        currency="EUR",
    )
    assert payload == {
        "id": "s1",
        "active": True,
        "startedAt": "2025-05-20T16:00:01.000Z",
        "endedAt": None,
        "endReason": None,
        "energyKwh": 1.8333,
        "cost": 0.55,
        "currency": "EUR",
    }


def test_the_drop_log_limiter_lets_one_line_a_second_per_key_and_counts_the_rest() -> None:
    limiter = LogLimiter(1.0)
    assert limiter.allow("bad payload", 100.0) == 0
    assert limiter.allow("bad payload", 100.4) is None
    assert limiter.allow("bad payload", 100.9) is None
    assert limiter.allow("unknown car", 100.9) == 0  # another reason has its own second
    assert limiter.allow("bad payload", 101.0) == 2  # the next line counts those left out
    assert limiter.allow("bad payload", 101.5) is None
    assert limiter.allow("bad payload", 102.5) == 1


def test_a_logged_topic_is_cut_and_says_how_long_it_was() -> None:
    assert shown("evlink/a/b/charging/set") == "evlink/a/b/charging/set"
    cut = shown("evlink/" + "x" * 60_000)
    assert cut.startswith("evlink/xxx")
    assert len(cut) < MAX_LOGGED + 30
    assert "60007 chars" in cut


def test_a_topic_id_has_the_form_of_the_made_ones() -> None:
    assert is_topic_id(new_topic_id())
    assert not is_topic_id(new_topic_id() + "00")
    assert not is_topic_id("ab" * 20)
    assert not is_topic_id("0000")
    assert not is_topic_id("g" * 16)
    assert not is_topic_id("AB" * 8)
