"""Open websockets follow revoked keys, deleted users, tier changes and lost vehicles.

A websocket is admitted once, on ``connection_init``, for a key, its user and the
tier the user had then (:class:`evlink.server.OpenSocket`). While it is open:

- its key is revoked or its user deleted: the socket closes with 4401;
- its user's tier changes, up or down: the socket closes with 4403 and a reason
  that asks the client to reconnect, so that each socket runs under one tier;
- its user no longer owns a vehicle one of its subscriptions follows: that
  subscription ends with ``FORBIDDEN_OWNER`` (another user's now) or
  ``NOT_FOUND`` (gone), and the socket stays open.

:func:`recheck` decides this from the database (never from the read cache),
with one query per :data:`BATCH` keys and one per :data:`BATCH` vehicles.
:func:`follow_sockets` runs it:

- at once for the sockets of a user whose ``user:<id>`` tag is invalidated on
  the event bus (:mod:`evlink.cache`: ``revoke_key``, ``set_tier``, vehicles
  added, moved or deleted; from every instance and, with Redis, from the CLI);
- for every open socket every ``EVLINK_CACHE_TTL`` seconds (every second with
  the cache off). This catches what no one published: the CLI without Redis, a
  user deleted in the database, invalidations lost while Redis was away.

Each operation on a socket is also checked as an HTTP request is
(:meth:`evlink.schema.context.Context.recheck`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar
from uuid import UUID

from evlink.cache import CACHE_TOPIC, ReadCache, user_tag
from evlink.errors import EvlinkError, ForbiddenOwner, NotFound, StreamInterrupted
from evlink.events import EventBus, Message
from evlink.models import ApiKey, Vehicle
from evlink.server import Admission, OpenSocket, OpenSockets
from evlink.settings import Settings

__all__ = [
    "BATCH",
    "KEY_REVOKED",
    "TIER_CHANGED",
    "check_interval",
    "follow_sockets",
    "recheck",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Keys (or vehicles) per query of a re-check.
BATCH = 500
# Close codes, after graphql-transport-ws's 4401 Unauthorized and 4403 Forbidden.
KEY_REVOKED = 4401
TIER_CHANGED = 4403
_USER_TAG = user_tag(0).removesuffix("0")


def check_interval(settings: Settings) -> float:
    """Seconds between two re-checks of every open socket: the read cache's ttl, so that
    a socket lasts no longer than a cached key would; every second with the cache off."""
    return settings.cache_ttl if settings.cache_ttl > 0 else 1.0


async def recheck(sockets: Iterable[OpenSocket], cache: ReadCache) -> None:
    """Close the sockets whose key no longer works or whose user's tier changed; end
    the subscriptions following a vehicle their user no longer owns."""
    admitted = [(s, s.admission) for s in sockets if s.admission is not None]
    if not admitted:
        return
    tiers = await _key_tiers({admission.key_hash for _, admission in admitted})
    refused: set[int] = set()
    for socket, admission in admitted:
        tier = tiers.get(admission.key_hash)
        if tier is None:
            socket.close(KEY_REVOKED, "API key revoked or user deleted")
        elif tier != admission.tier:
            socket.close(TIER_CHANGED, f"Tier changed to {tier}: reconnect")
        else:
            continue
        refused.add(admission.user_id)
    if refused:
        # A client that reconnects at once must not get in on a cached key or tier.
        cache.drop(*(user_tag(user_id) for user_id in refused))
    await _end_lost_vehicles([(s, a) for s, a in admitted if s.watching])


async def _key_tiers(key_hashes: set[str]) -> dict[str, str]:
    """The active keys among ``key_hashes``, each with its user's tier."""
    tiers: dict[str, str] = {}
    for batch in _batches(sorted(key_hashes)):
        rows = await ApiKey.filter(hash__in=batch, revoked_at=None).values_list(
            "hash", "user__tier"
        )
        tiers.update((str(key_hash), str(tier)) for key_hash, tier in rows)
    return tiers


async def _end_lost_vehicles(sockets: Sequence[tuple[OpenSocket, Admission]]) -> None:
    watched = sorted({vehicle_id for s, _ in sockets for vehicle_id in s.watching}, key=str)
    owners: dict[UUID, int] = {}
    for batch in _batches(watched):
        rows = await Vehicle.filter(id__in=batch, deleted_at=None).values_list("id", "user_id")
        owners.update((UUID(str(vehicle_id)), int(owner)) for vehicle_id, owner in rows)
    for socket, admission in sockets:
        for vehicle_id, watchers in tuple(socket.watching.items()):
            owner = owners.get(vehicle_id)
            if owner == admission.user_id:
                continue
            error: type[EvlinkError] = NotFound if owner is None else ForbiddenOwner
            for watcher in tuple(watchers):
                watcher.interrupt("the vehicle is no longer the user's", error())


def _batches(items: Sequence[T]) -> Iterator[list[T]]:
    for start in range(0, len(items), BATCH):
        yield list(items[start : start + BATCH])


async def follow_sockets(
    open_sockets: OpenSockets,
    events: EventBus,
    cache: ReadCache,
    interval: float,
    listening: asyncio.Event | None = None,
) -> None:
    """Re-check sockets on their users' invalidations and every ``interval`` seconds.

    Runs for the app's life (a task of the lifespan, which waits for ``listening``);
    a failed check (the database away) is logged and tried again at the next turn.
    """
    loop = asyncio.get_running_loop()
    async with events.subscribe(CACHE_TOPIC) as messages:
        if listening is not None:
            listening.set()
        due = loop.time() + interval
        while True:
            message: Message | None = None
            wait = due - loop.time()
            if wait > 0:
                # Invalidations lost while the stream was broken: the timed check finds them.
                with contextlib.suppress(StreamInterrupted):
                    message = await messages.get(timeout=wait)
            if message is not None:
                await _checked(_sockets_of_users(open_sockets, message), cache)
            if loop.time() >= due:
                await _checked(open_sockets, cache)
                due = loop.time() + interval


def _sockets_of_users(open_sockets: OpenSockets, message: Message) -> list[OpenSocket]:
    tags = message.get("tags")
    if not isinstance(tags, list):
        return []
    sockets: list[OpenSocket] = []
    for tag in tags:
        if isinstance(tag, str) and tag.startswith(_USER_TAG):
            user_id = tag.removeprefix(_USER_TAG)
            if user_id.isdecimal():
                sockets.extend(open_sockets.of_user(int(user_id)))
    return sockets


async def _checked(sockets: Iterable[OpenSocket], cache: ReadCache) -> None:
    try:
        await recheck(sockets, cache)
    except Exception as exc:  # the database away: the next turn tries again
        logger.warning("websockets: re-checking keys failed: %s", type(exc).__name__)
