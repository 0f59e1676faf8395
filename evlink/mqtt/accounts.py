"""Publishing per user: turned on and off by the operator (``evlink mqtt enable|disable``).

A user's topics carry a random topic id (:func:`new_topic_id`), made when
publishing is first turned on and kept when it is turned off, so that turning it
on again gives Home Assistant the same entities.
"""

from __future__ import annotations

import re
import secrets

from evlink.models import MqttUser, User, Vehicle
from evlink.mqtt.discovery import Car

__all__ = [
    "car_of",
    "disable",
    "enable",
    "is_topic_id",
    "new_topic_id",
    "published_cars",
    "publishing_user",
]

TOPIC_ID_BYTES = 8  # 16 hex characters: not guessable, short enough for topics
_TOPIC_ID = re.compile(f"[0-9a-f]{{{2 * TOPIC_ID_BYTES}}}")


def new_topic_id() -> str:
    """A random id for a user's topics: neither the email nor anything of a key."""
    return secrets.token_hex(TOPIC_ID_BYTES)


def is_topic_id(text: str) -> bool:
    """True when ``text`` has the form of :func:`new_topic_id`'s ids (checked before any
    query: a longer one would not even fit the column)."""
    return _TOPIC_ID.fullmatch(text) is not None


async def enable(user: User) -> MqttUser:
    """Publish ``user``'s cars; the topic id is made once and kept."""
    record, _ = await MqttUser.get_or_create(user=user, defaults={"topic_id": new_topic_id()})
    if not record.enabled:
        record.enabled = True
        await record.save(update_fields=["enabled"])
    return record


async def disable(user: User) -> MqttUser | None:
    """Stop publishing ``user``'s cars (a running publisher clears their retained topics)."""
    record = await MqttUser.get_or_none(user=user)
    if record is not None and record.enabled:
        record.enabled = False
        await record.save(update_fields=["enabled"])
    return record


async def publishing_user(topic_id: str) -> User | None:
    """The user whose topics carry ``topic_id``, while publishing is on for them."""
    record = await MqttUser.get_or_none(topic_id=topic_id, enabled=True).select_related("user")
    return None if record is None else record.user


async def published_cars() -> dict[str, Car]:
    """Every car evlink publishes now, by vehicle id: the cars (not removed) of the users
    with publishing on."""
    topic_ids = dict(await MqttUser.filter(enabled=True).values_list("user_id", "topic_id"))
    if not topic_ids:
        return {}
    cars: dict[str, Car] = {}
    for vehicle in await Vehicle.filter(user_id__in=list(topic_ids), deleted_at=None):
        user_id: int = vehicle.user_id  # type: ignore[attr-defined]
        cars[str(vehicle.id)] = car_of(vehicle, str(topic_ids[user_id]))
    return cars


def car_of(vehicle: Vehicle, topic_id: str) -> Car:
    """How discovery names ``vehicle``: its name, else brand and model, else its id."""
    information = vehicle.information or {}
    brand = information.get("brand") or vehicle.vendor
    model = information.get("model")
    fallback = " ".join(str(part) for part in (brand, model) if part)
    return Car(
        vehicle_id=str(vehicle.id),
        user_topic_id=topic_id,
        name=vehicle.name or fallback or f"Car {str(vehicle.id)[:8]}",
        manufacturer=str(brand) if brand else None,
        model=str(model) if model else None,
    )
