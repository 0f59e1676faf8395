"""Where evlink publishes and listens on the broker (docs/home-assistant.md lists them).

``<prefix>`` is ``EVLINK_MQTT_PREFIX``, ``<discovery>`` is
``EVLINK_MQTT_DISCOVERY_PREFIX``, ``<user>`` the user's random topic id (never
the email or a key), ``<vehicle>`` evlink's vehicle id:

- ``<prefix>/status``: ``online`` / ``offline`` (retained; the last will says offline)
- ``<prefix>/<user>/<vehicle>/state``: the charge state as JSON (retained)
- ``<prefix>/<user>/<vehicle>/command``: the last charging command as JSON (retained)
- ``<prefix>/<user>/<vehicle>/session``: the current or latest charging session as JSON
  (retained)
- ``<prefix>/<user>/<vehicle>/charging/set``: ON or OFF from Home Assistant's switch
- ``<discovery>/<component>/evlink_<user>/<vehicle>_<entity>/config``: discovery
- ``<discovery>/status``: Home Assistant says ``online`` when it (re)starts
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

__all__ = ["SHARE_GROUP", "Topics"]

# The MQTT 5 shared-subscription group of every evlink instance: the broker hands each
# command to one of them.
SHARE_GROUP = "evlink"


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str = "evlink"
    discovery_prefix: str = "homeassistant"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    @property
    def ha_status(self) -> str:
        return f"{self.discovery_prefix}/status"

    def car(self, user_topic_id: str, vehicle_id: UUID | str) -> str:
        return f"{self.prefix}/{user_topic_id}/{vehicle_id}"

    def state(self, user_topic_id: str, vehicle_id: UUID | str) -> str:
        return f"{self.car(user_topic_id, vehicle_id)}/state"

    def command(self, user_topic_id: str, vehicle_id: UUID | str) -> str:
        return f"{self.car(user_topic_id, vehicle_id)}/command"

    def session(self, user_topic_id: str, vehicle_id: UUID | str) -> str:
        return f"{self.car(user_topic_id, vehicle_id)}/session"

    def charging_set(self, user_topic_id: str, vehicle_id: UUID | str) -> str:
        return f"{self.car(user_topic_id, vehicle_id)}/charging/set"

    @property
    def charging_set_filter(self) -> str:
        """Every car's switch, shared between the instances (one takes each message)."""
        return f"$share/{SHARE_GROUP}/{self.prefix}/+/+/charging/set"

    def discovery(self, component: str, user_topic_id: str, object_id: str) -> str:
        return f"{self.discovery_prefix}/{component}/evlink_{user_topic_id}/{object_id}/config"

    def parse_charging_set(self, topic: str) -> tuple[str, str] | None:
        """(user topic id, vehicle id) of a switch's command topic; None for any other."""
        head = f"{self.prefix}/"
        if not topic.startswith(head):
            return None
        levels = topic.removeprefix(head).split("/")
        if len(levels) != 4 or levels[2:] != ["charging", "set"] or not all(levels[:2]):
            return None
        return levels[0], levels[1]
