"""A message on a charging switch's command topic, run as the user's charging command.

``ON`` starts and ``OFF`` stops charging through
:func:`evlink.resolvers.charging.set_charging`, as that user: ownership, tier,
quotas and every charging rule apply as on REST and GraphQL. What came of it is
told on the event bus (:func:`outcome_topic`), so that the instance that
publishes state publishes it too: the command made (followed to its end) or the
refusal with its error code.

A message that is not ``ON`` or ``OFF``, a retained one (a stale command must
not run at every reconnection), one for a topic id with publishing off, or one
for a car that is not the user's is dropped with one log line. A redelivered
message (QoS 1) sends nothing twice: ``set_charging`` returns the command
already pending for the same action, or refuses (already charging) without
sending.
"""

from __future__ import annotations

import logging

from evlink.domain import ChargingAction
from evlink.errors import EvlinkError, ForbiddenOwner, NotFound
from evlink.mqtt.accounts import publishing_user
from evlink.mqtt.topics import Topics
from evlink.resolvers.charging import set_charging
from evlink.services import Services

__all__ = ["MADE", "OUTCOME", "REFUSED", "handle", "outcome_topic", "parse_switch"]

logger = logging.getLogger(__name__)

OUTCOME = "mqttOutcome"  # the key that marks an outcome message on the event bus
MADE = "made"
REFUSED = "refused"
MAX_LOGGED = 40  # characters of a dropped payload shown in the log


def outcome_topic(vehicle_id: str) -> str:
    """The event-bus topic telling the publisher what came of a switch command."""
    return f"vehicle:{vehicle_id}:mqtt-switch"


def parse_switch(payload: bytes) -> ChargingAction | None:
    """START for ``ON``, STOP for ``OFF`` (Home Assistant's switch payloads); None for
    anything else."""
    try:
        text = payload.decode().strip().upper()
    except UnicodeDecodeError:
        return None
    return {"ON": ChargingAction.START, "OFF": ChargingAction.STOP}.get(text)


def _dropped(topic: str, payload: bytes, why: str) -> None:
    logger.warning("mqtt: dropped a message on %s (%r): %s", topic, payload[:MAX_LOGGED], why)


async def handle(
    services: Services, topics: Topics, topic: str, payload: bytes, *, retained: bool
) -> None:
    """Run one switch message; never raises (a failure is one log line)."""
    try:
        await _handle(services, topics, topic, payload, retained=retained)
    except Exception:
        logger.exception("mqtt: the command on %s failed", topic)


async def _handle(
    services: Services, topics: Topics, topic: str, payload: bytes, *, retained: bool
) -> None:
    target = topics.parse_charging_set(topic)
    if target is None:
        _dropped(topic, payload, "not a charging switch's topic")
        return
    if retained:
        _dropped(topic, payload, "retained; a command must be sent, not stored")
        return
    action = parse_switch(payload)
    if action is None:
        _dropped(topic, payload, "expected ON or OFF")
        return
    topic_id, vehicle_id = target
    user = await publishing_user(topic_id)
    if user is None:
        _dropped(topic, payload, "no user publishes under this topic id")
        return
    try:
        requested = await set_charging(services, user, vehicle_id, action)
    except (NotFound, ForbiddenOwner):
        _dropped(topic, payload, "no such car of this user")
        return
    except EvlinkError as refused:
        logger.info("mqtt: %s on vehicle %s refused: %s", action.value, vehicle_id, refused.code)
        message = {"action": action.value, "code": refused.code, "message": refused.message}
        await services.events.publish(outcome_topic(vehicle_id), {OUTCOME: REFUSED, **message})
        return
    await services.events.publish(
        outcome_topic(vehicle_id), {OUTCOME: MADE, "commandId": str(requested.command.id)}
    )
