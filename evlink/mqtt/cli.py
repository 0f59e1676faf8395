"""``evlink mqtt enable|disable --user EMAIL``: publishing per user, off by default.

``enable`` prints the user's topic id, the topics, and the Mosquitto ACL lines
that give that user's Home Assistant only its own topics (docs/home-assistant.md).
A running server picks the change up within ``EVLINK_CACHE_TTL``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from evlink.models.database import open_command_database
from evlink.mqtt import accounts
from evlink.mqtt.topics import Topics
from evlink.resolvers.accounts import find_user
from evlink.settings import Settings

__all__ = ["COMMANDS", "acl_lines", "add_parser"]


def add_parser(commands: Any) -> None:
    """The ``mqtt`` command and its actions, on the CLI's subparsers."""
    mqtt = commands.add_parser(
        "mqtt", help="publish a user's cars over MQTT (Home Assistant discovery)"
    ).add_subparsers(dest="action", required=True)
    enable = mqtt.add_parser("enable", help="publish the user's cars; prints topics and ACL")
    enable.add_argument("--user", required=True, help="the user's email")
    disable = mqtt.add_parser("disable", help="stop publishing the user's cars")
    disable.add_argument("--user", required=True, help="the user's email")


def _print(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def acl_lines(topics: Topics, topic_id: str, mqtt_username: str) -> list[str]:
    """Mosquitto ACL lines for one Home Assistant: its user's topics and nothing else."""
    return [
        f"user {mqtt_username}",
        f"topic read {topics.status}",
        f"topic read {topics.prefix}/{topic_id}/+/state",
        f"topic read {topics.prefix}/{topic_id}/+/command",
        f"topic read {topics.prefix}/{topic_id}/+/session",
        f"topic write {topics.prefix}/{topic_id}/+/charging/set",
        f"topic read {topics.discovery_prefix}/+/evlink_{topic_id}/#",
        f"topic readwrite {topics.ha_status}",
    ]


async def _enable(settings: Settings, args: argparse.Namespace) -> None:
    async with open_command_database(settings):
        user = await find_user(args.user)
        record = await accounts.enable(user)
    topics = Topics(settings.mqtt_prefix, settings.mqtt_discovery_prefix)
    _print(f"mqtt publishing on for {user.email}: topic id {record.topic_id}")
    _print(f"topics: {topics.prefix}/{record.topic_id}/<vehicle id>/state|command|charging/set")
    if not settings.mqtt_url:
        _print("EVLINK_MQTT_URL is not set: nothing is published until it is")
    _print("Mosquitto ACL for this user's Home Assistant (name its MQTT user as you like):")
    for line in acl_lines(topics, record.topic_id, "<home assistant's mqtt user>"):
        _print(f"  {line}")


async def _disable(settings: Settings, args: argparse.Namespace) -> None:
    async with open_command_database(settings):
        user = await find_user(args.user)
        record = await accounts.disable(user)
    state = "off" if record is not None else "was never on"
    _print(f"mqtt publishing {state} for {user.email}")


COMMANDS: dict[tuple[str, str | None], Callable[[Settings, Any], Coroutine[Any, Any, None]]] = {
    ("mqtt", "enable"): _enable,
    ("mqtt", "disable"): _disable,
}
