"""A message on a charging switch's command topic, run as the user's charging command.

``ON`` starts and ``OFF`` stops charging through
:func:`evlink.resolvers.charging.set_charging`, as that user: ownership, tier,
quotas and every charging rule apply as on REST and GraphQL. What came of it is
told on the event bus (:func:`outcome_topic`), so that the instance that
publishes state publishes it too: the command made (followed to its end) or the
refusal with its error code.

A message that is not ``ON`` or ``OFF``, a retained one (a stale command must
not run at every reconnection), one for a topic id with publishing off, or one
for a car that is not the user's is dropped with one log line (a topic id or
vehicle id not of evlink's form is dropped before any query). These lines show
at most :data:`MAX_LOGGED` characters of the topic and payload, and at most one
line a second per reason: the next one counts the lines left out. A redelivered
message (QoS 1) sends nothing twice: ``set_charging`` returns the command
already pending for the same action, or refuses (already charging) without
sending.
"""

from __future__ import annotations

import logging
import time
import uuid

from evlink.domain import ChargingAction
from evlink.errors import EvlinkError, ForbiddenOwner, NotFound
from evlink.mqtt.accounts import is_topic_id, publishing_user
from evlink.mqtt.topics import Topics
from evlink.resolvers.charging import set_charging
from evlink.services import Services

__all__ = [
    "DROPPED_INTERVAL",
    "MADE",
    "OUTCOME",
    "REFUSED",
    "LogLimiter",
    "handle",
    "outcome_topic",
    "parse_switch",
    "shown",
]

logger = logging.getLogger(__name__)

OUTCOME = "mqttOutcome"  # the key that marks an outcome message on the event bus
MADE = "made"
REFUSED = "refused"
MAX_LOGGED = 40  # characters of a dropped payload, or of any topic, shown in the log
DROPPED_INTERVAL = 1.0  # seconds: at most one "dropped" line per reason this often


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


def shown(topic: str) -> str:
    """``topic`` as logged: cut after :data:`MAX_LOGGED` characters (a topic can be huge)."""
    if len(topic) <= MAX_LOGGED:
        return topic
    return f"{topic[:MAX_LOGGED]}…({len(topic)} chars)"


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


class LogLimiter:
    """At most one line per key every ``interval`` seconds, counting those left out."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def allow(self, key: str, now: float) -> int | None:
        """The count of lines left out since the last one when a line may go out now;
        None when it must be left out."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._left_out[key] = self._left_out.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._left_out.pop(key, 0)


def _dropped(limiter: LogLimiter, topic: str, payload: bytes, why: str) -> None:
    left_out = limiter.allow(why, time.monotonic())
    if left_out is None:
        return
    more = f" ({left_out} more left out of the log)" if left_out else ""
    logger.warning(
        "mqtt: dropped a message on %s (%r): %s%s",
        shown(topic),
        payload[:MAX_LOGGED],
        why,
        more,
    )


async def handle(
    services: Services,
    topics: Topics,
    topic: str,
    payload: bytes,
    *,
    retained: bool,
    limiter: LogLimiter,
) -> None:
    """Run one switch message; never raises (a failure is one log line). ``limiter``
    (one per bridge, :data:`DROPPED_INTERVAL`) paces the "dropped" lines."""
    try:
        target = topics.parse_charging_set(topic)
        dropped = await _run(services, target, payload, retained=retained)
        if dropped is not None:
            _dropped(limiter, topic, payload, dropped)
    except Exception:
        logger.exception("mqtt: the command on %s failed", shown(topic))


async def _run(
    services: Services, target: tuple[str, str] | None, payload: bytes, *, retained: bool
) -> str | None:
    """Run the switch message to ``target`` (its topic id and vehicle id): why it was
    dropped, or None."""
    if target is None:
        return "not a charging switch's topic"
    if retained:
        return "retained; a command must be sent, not stored"
    action = parse_switch(payload)
    if action is None:
        return "expected ON or OFF"
    topic_id, vehicle_id = target
    if not is_topic_id(topic_id):
        return "not a topic id of evlink's form"
    if not _is_uuid(vehicle_id):
        return "not a vehicle id (a UUID)"
    user = await publishing_user(topic_id)
    if user is None:
        return "no user publishes under this topic id"
    try:
        requested = await set_charging(services, user, vehicle_id, action)
    except (NotFound, ForbiddenOwner):
        return "no such car of this user"
    except EvlinkError as refused:
        logger.info("mqtt: %s on vehicle %s refused: %s", action.value, vehicle_id, refused.code)
        message = {"action": action.value, "code": refused.code, "message": refused.message}
        await services.events.publish(outcome_topic(vehicle_id), {OUTCOME: REFUSED, **message})
        return None
    await services.events.publish(
        outcome_topic(vehicle_id), {OUTCOME: MADE, "commandId": str(requested.command.id)}
    )
    return None
