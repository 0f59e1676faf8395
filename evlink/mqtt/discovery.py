"""Home Assistant MQTT discovery: what each car's device and entities look like.

Pure functions of a car (:class:`Car`) and the topics; nothing here touches the
broker or the database. Each entity is one retained config message at
``<discovery>/<component>/evlink_<user>/<vehicle>_<key>/config`` (Home
Assistant's ``<discovery_prefix>/<component>/<node_id>/<object_id>/config``),
reading the car's retained state JSON with a ``value_template``. A template
that renders ``None`` (the car did not report the value) shows as unknown.

The charging switch's state is the car's reported ``isCharging``, never the
last request: a refused or pending command leaves it where the car is, and
the command (with its error code) is the switch's attributes and an entity of
its own.

The session's energy and cost read ``<prefix>/<user>/<vehicle>/session``, the car's
current charging session or, between charges, its latest. Neither has a
``state_class``: the value restarts at zero with each session, so it is neither a
``measurement`` (Home Assistant refuses that class for ``energy``, and allows only
``total`` for ``monetary``) nor a meter that only grows (``total_increasing`` would
add every session's energy into long-term statistics again as a meter reset). The
cost's unit is the session's currency, so its config follows that currency
(``discovery_messages``'s ``currency``); without one it has no unit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from evlink import __version__
from evlink.mqtt.topics import Topics

__all__ = [
    "ENTITIES",
    "POWER_DELIVERY_STATES",
    "Car",
    "Entity",
    "command_payload",
    "discovery_messages",
    "refusal_payload",
    "removal_messages",
    "session_payload",
    "state_payload",
]

# Enode's powerDeliveryState values; any other shows as UNKNOWN (an enum sensor
# refuses values outside its options).
POWER_DELIVERY_STATES = (
    "UNKNOWN",
    "UNPLUGGED",
    "PLUGGED_IN:INITIALIZING",
    "PLUGGED_IN:CHARGING",
    "PLUGGED_IN:STOPPED",
    "PLUGGED_IN:COMPLETE",
    "PLUGGED_IN:NO_POWER",
    "PLUGGED_IN:FAULT",
    "PLUGGED_IN:DISCHARGING",
)


@dataclass(frozen=True, slots=True)
class Car:
    """What discovery needs of a vehicle: its ids and how to name the device."""

    vehicle_id: str
    user_topic_id: str
    name: str
    manufacturer: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Entity:
    component: str  # sensor | binary_sensor | switch
    key: str  # the object id's suffix and the unique id's
    name: str
    reads: str  # "state", "command" or "session": which retained JSON the entity reads
    config: tuple[tuple[str, Any], ...] = ()


def _value(field: str) -> str:
    return "{{ value_json." + field + " }}"


_POWER_TEMPLATE = (
    "{% set s = value_json.powerDeliveryState %}"
    "{{ s if s in " + json.dumps(list(POWER_DELIVERY_STATES)) + " else 'UNKNOWN' }}"
)

# A config value that stands for the session's currency (the cost's unit): see entity_config.
SESSION_CURRENCY = "<session currency>"

ENTITIES: tuple[Entity, ...] = (
    Entity(
        "sensor",
        "battery",
        "Battery",
        "state",
        (
            ("device_class", "battery"),
            ("unit_of_measurement", "%"),
            ("state_class", "measurement"),
            ("value_template", _value("batteryLevel")),
        ),
    ),
    Entity(
        "sensor",
        "range",
        "Range",
        "state",
        (
            ("device_class", "distance"),
            ("unit_of_measurement", "km"),
            ("state_class", "measurement"),
            ("value_template", _value("range")),
        ),
    ),
    Entity(
        "sensor",
        "charge_rate",
        "Charge rate",
        "state",
        (
            ("device_class", "power"),
            ("unit_of_measurement", "kW"),
            ("state_class", "measurement"),
            ("value_template", _value("chargeRate")),
        ),
    ),
    Entity(
        "sensor",
        "time_to_full",
        "Time to full",
        "state",
        (
            ("device_class", "duration"),
            ("unit_of_measurement", "min"),
            ("value_template", _value("chargeTimeRemaining")),
        ),
    ),
    Entity(
        "sensor",
        "charge_limit",
        "Charge limit",
        "state",
        (
            ("unit_of_measurement", "%"),
            ("icon", "mdi:battery-lock"),
            ("value_template", _value("chargeLimit")),
        ),
    ),
    Entity(
        "binary_sensor",
        "plugged_in",
        "Plugged in",
        "state",
        (
            ("device_class", "plug"),
            ("value_template", _value("isPluggedIn")),
            ("payload_on", "True"),
            ("payload_off", "False"),
        ),
    ),
    Entity(
        "binary_sensor",
        "charging",
        "Charging",
        "state",
        (
            ("device_class", "battery_charging"),
            ("value_template", _value("isCharging")),
            ("payload_on", "True"),
            ("payload_off", "False"),
        ),
    ),
    Entity(
        "sensor",
        "power_delivery_state",
        "Power delivery state",
        "state",
        (
            ("device_class", "enum"),
            ("options", list(POWER_DELIVERY_STATES)),
            ("value_template", _POWER_TEMPLATE),
        ),
    ),
    Entity(
        "sensor",
        "last_update",
        "Last update",
        "state",
        (("device_class", "timestamp"), ("value_template", _value("lastUpdated"))),
    ),
    Entity(
        "sensor",
        "charging_command",
        "Charging command",
        "command",
        (
            ("icon", "mdi:ev-station"),
            ("value_template", _value("state")),
            ("json_attributes_topic", "command"),
        ),
    ),
    Entity(
        "sensor",
        "session_energy",
        "Session energy",
        "session",
        (
            ("device_class", "energy"),
            ("unit_of_measurement", "kWh"),
            ("value_template", _value("energyKwh")),
            ("json_attributes_topic", "session"),
        ),
    ),
    Entity(
        "sensor",
        "session_cost",
        "Session cost",
        "session",
        (
            ("device_class", "monetary"),
            ("unit_of_measurement", SESSION_CURRENCY),
            ("value_template", _value("cost")),
            ("json_attributes_topic", "session"),
        ),
    ),
    Entity(
        "switch",
        "charging_switch",
        "Charging",
        "state",
        (
            ("command_topic", "charging_set"),
            ("payload_on", "ON"),
            ("payload_off", "OFF"),
            # The car's isCharging, not the request: the switch shows what the car does.
            ("value_template", _value("isCharging")),
            ("state_on", "True"),
            ("state_off", "False"),
            ("json_attributes_topic", "command"),
            ("icon", "mdi:ev-plug-type2"),
        ),
    ),
)

# Config values that name one of the car's topics rather than a literal.
_TOPIC_KEYS = ("command_topic", "json_attributes_topic")


def _device(car: Car) -> dict[str, Any]:
    device: dict[str, Any] = {"identifiers": [f"evlink_{car.vehicle_id}"], "name": car.name}
    if car.manufacturer:
        device["manufacturer"] = car.manufacturer
    if car.model:
        device["model"] = car.model
    device["sw_version"] = f"evlink {__version__}"
    return device


def _car_topic(topics: Topics, car: Car, which: str) -> str:
    topic_of = {
        "state": topics.state,
        "command": topics.command,
        "session": topics.session,
        "charging_set": topics.charging_set,
    }
    return topic_of[which](car.user_topic_id, car.vehicle_id)


def entity_config(
    topics: Topics, car: Car, entity: Entity, currency: str | None = None
) -> dict[str, Any]:
    """One entity's discovery config; ``currency`` is the unit of a value that is the
    session's currency (left out when None)."""
    config: dict[str, Any] = {
        "name": entity.name,
        "unique_id": f"evlink_{car.vehicle_id}_{entity.key}",
        "object_id": f"{_slug(car.name)}_{entity.key}",
        "state_topic": _car_topic(topics, car, entity.reads),
        "availability_topic": topics.status,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": _device(car),
        "origin": {"name": "evlink", "sw_version": __version__},
        "qos": 1,
    }
    for key, value in entity.config:
        if value == SESSION_CURRENCY:
            if currency is not None:
                config[key] = currency
        elif key in _TOPIC_KEYS:
            config[key] = _car_topic(topics, car, value)
        else:
            config[key] = value
    return config


def _slug(text: str) -> str:
    slug = "".join(char if char.isalnum() else "_" for char in text.lower()).strip("_")
    return "_".join(part for part in slug.split("_") if part) or "car"


def discovery_messages(
    topics: Topics, car: Car, currency: str | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(topic, config) of every entity of ``car``: publish each retained. ``currency``:
    the currency of the car's latest session (the cost's unit), None before one."""
    return [
        (
            topics.discovery(entity.component, car.user_topic_id, f"{car.vehicle_id}_{entity.key}"),
            entity_config(topics, car, entity, currency),
        )
        for entity in ENTITIES
    ]


def removal_messages(topics: Topics, car: Car) -> list[str]:
    """The retained topics of ``car`` to clear (empty payload) when it is no longer
    published: Home Assistant removes an entity whose config is emptied."""
    configs = [topic for topic, _ in discovery_messages(topics, car)]
    return [
        *configs,
        topics.state(car.user_topic_id, car.vehicle_id),
        topics.command(car.user_topic_id, car.vehicle_id),
        topics.session(car.user_topic_id, car.vehicle_id),
    ]


def state_payload(charge_state: dict[str, Any]) -> dict[str, Any]:
    """The retained state JSON: the charge state as the REST API and events shape it
    (``vehicleId`` dropped: the topic names the car)."""
    return {key: value for key, value in charge_state.items() if key != "vehicleId"}


def session_payload(
    *,
    session_id: str,
    active: bool,
    started_at: str | None,
    ended_at: str | None,
    end_reason: str | None,
    energy_kwh: float | None,
    cost: float | None,
    currency: str | None,
) -> dict[str, Any]:
    """The retained session JSON: the car's current or latest charging session, its
    energy (kWh) and cost (None without a tariff) as the sessions API gives them."""
    return {
        "id": session_id,
        "active": active,
        "startedAt": started_at,
        "endedAt": ended_at,
        "endReason": end_reason,
        "energyKwh": energy_kwh,
        "cost": cost,
        "currency": currency,
    }


def command_payload(
    *,
    command_id: str,
    action: str,
    state: str,
    attempts: int,
    failure_reason: str | None,
    updated_at: str | None,
) -> dict[str, Any]:
    """The retained last-command JSON of a command evlink made."""
    return {
        "id": command_id,
        "action": action,
        "state": state,
        "code": None,
        "message": failure_reason,
        "attempts": attempts,
        "updatedAt": updated_at,
    }


def refusal_payload(action: str, code: str, message: str, at: str | None) -> dict[str, Any]:
    """The last-command JSON of a request evlink refused (no command made or sent)."""
    return {
        "id": None,
        "action": action,
        "state": "REFUSED",
        "code": code,
        "message": message,
        "attempts": 0,
        "updatedAt": at,
    }
