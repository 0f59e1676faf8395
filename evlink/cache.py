"""The read cache: what the hot read paths answer from memory, and how it stays true.

Home Assistant polls the same status every few seconds and GraphQL clients ask
the same query again and again; without a cache each of those requests is three
database queries (the key, the vehicle, its charge state) or a whole GraphQL
execution. The cache keeps, per process:

- accepted keys: ``("key", the key's SHA-256)`` -> its :class:`~evlink.models.User`,
  tagged ``user:<id>``; a hit needs neither the key's format check nor a lookup;
- vehicle statuses (REST ``/api/status``, ``/api/ha/status``): ``("status", the id as
  asked)`` -> the :class:`~evlink.resolvers.vehicles.VehicleStatus` (the REST bodies
  rendered from it are kept on it), tagged ``vehicle:<id>``, and only until the stored
  state passes the max age (:func:`evlink.resolvers.vehicles.read_status`); it is
  answered only to the vehicle's owner (403 otherwise) and never mutated (a refresh
  reads the vehicle from the database);
- GraphQL answers: ``("graphql", user id, SHA-256 of the body)`` -> the answer's
  bytes, tagged ``user:<id>`` and ``vehicle:<id>`` of each vehicle shown; which
  queries qualify and how a hit is charged is :mod:`evlink.schema.results`'.

Writers that invalidate: recording a provider report (every refresh, webhook or
simulator step: the vehicle; a car added or brought back: its owner too), the
webhook's deletions and lost credentials (the vehicles and their owners), revoking a
key, a tier change, adding a car and linking a vehicle account (the user).

Coherence. Every entry carries *tags* (``vehicle:<id>``, ``user:<id>``) with the
version each tag had when the entry's data was read. A write that changes what a
tag covers calls :meth:`ReadCache.invalidate`, which bumps the tag's version here
at once and publishes the tags on :data:`CACHE_TOPIC`, so that every instance on
the same event bus drops them too (:func:`follow_invalidations`). An entry whose
tags moved on is a miss. Two more rules close the gaps:

- a read that overlapped any invalidation is not stored (:meth:`begin` /
  :meth:`put`): it may have read the database before the write;
- no entry lives longer than ``ttl`` seconds (``EVLINK_CACHE_TTL``), which bounds
  what an instance can miss: writes by the CLI in another process without Redis,
  and messages lost while Redis was away (the cache is also emptied then).

``ttl = 0`` turns the cache off: every read goes to the database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from evlink.errors import StreamInterrupted
from evlink.events import EventBus

__all__ = [
    "CACHE_TOPIC",
    "ReadCache",
    "follow_invalidations",
    "user_tag",
    "vehicle_tag",
]

logger = logging.getLogger(__name__)

CACHE_TOPIC = "cache:invalidate"
DEFAULT_MAX_ENTRIES = 10_000
# Bytes of the values stored with a size (GraphQL answers): callers choose their
# documents, so the entry count alone would not bound the memory.
DEFAULT_MAX_BYTES = 32 * 1024 * 1024


def vehicle_tag(vehicle_id: UUID | str) -> str:
    """A vehicle's row or its charge state."""
    return f"vehicle:{vehicle_id}"


def user_tag(user_id: int) -> str:
    """A user's row (tier, links), its keys and which vehicles it has."""
    return f"user:{user_id}"


@dataclass(frozen=True, slots=True)
class _Entry:
    value: Any
    expires: float
    tags: tuple[tuple[str, int], ...]
    size: int


class ReadCache:
    """Entries with tags, a time to live and size bounds; see the module docstring."""

    def __init__(
        self,
        ttl: float,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self.bytes = 0  # the sizes of the entries stored with one
        self.events: EventBus | None = None
        self._entries: dict[Hashable, _Entry] = {}
        self._versions: dict[str, int] = {}
        # Bumped by every invalidation: a read that saw it change is not stored.
        self._generation = 0
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Any | None:
        """The value stored under ``key`` while it is fresh and none of its tags moved."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        fresh = entry.expires > self.clock()
        if fresh:
            versions = self._versions
            for tag, version in entry.tags:  # a loop, not any(): every read comes here
                if versions.get(tag, 0) != version:
                    fresh = False
                    break
        if not fresh:
            self._remove(key)
            self.misses += 1
            return None
        self.hits += 1
        return entry.value

    def begin(self) -> int:
        """Call before reading what will be stored; pass the result to :meth:`put`."""
        return self._generation

    def put(
        self,
        key: Hashable,
        value: Any,
        *,
        tags: Iterable[str],
        began: int,
        max_age: float | None = None,
        size: int = 0,
    ) -> bool:
        """Store ``value`` for at most ``max_age`` seconds (and never past the ttl);
        ``size``: its bytes, counted against ``max_bytes``.

        Not stored (False) when the cache is off, when anything was invalidated
        since :meth:`begin` returned ``began`` (the value may predate that write), or
        when it alone would take more than a tenth of ``max_bytes``.
        """
        if not self.enabled or began != self._generation or size > self.max_bytes // 10:
            return False
        lifetime = self.ttl if max_age is None else min(self.ttl, max_age)
        if lifetime <= 0:
            return False
        self._remove(key)
        while self._entries and (
            len(self._entries) >= self.max_entries or self.bytes + size > self.max_bytes
        ):
            self._remove(next(iter(self._entries)))  # the oldest first (insertion order)
        self._entries[key] = _Entry(
            value,
            self.clock() + lifetime,
            tuple((tag, self._versions.get(tag, 0)) for tag in tags),
            size,
        )
        self.bytes += size
        return True

    def _remove(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size

    def drop(self, *tags: str) -> None:
        """Invalidate ``tags`` in this process only (what the bus listener calls)."""
        self._generation += 1
        for tag in tags:
            self._versions[tag] = self._versions.get(tag, 0) + 1

    def clear(self) -> None:
        """Forget everything (the event stream broke: invalidations may have been lost)."""
        self._generation += 1
        self._entries.clear()
        self.bytes = 0

    async def invalidate(self, *tags: str) -> None:
        """Invalidate ``tags`` here at once, then on every instance sharing the event bus."""
        if not tags:
            return
        self.drop(*tags)
        if self.events is not None:
            await self.events.publish(CACHE_TOPIC, {"tags": list(tags)})


async def follow_invalidations(
    cache: ReadCache, events: EventBus, listening: asyncio.Event | None = None
) -> None:
    """Apply the tags other instances invalidate; empty the cache when the stream breaks
    and again when it is back (what was invalidated in between never arrived).

    Runs for the app's life (a task of the lifespan), which waits for ``listening``
    before it serves. Messages from this instance come back too and bump the same
    tags again, which costs a few misses only.
    """
    async with events.subscribe(CACHE_TOPIC) as messages:
        if listening is not None:
            listening.set()
        while True:
            try:
                async for message in messages:
                    tags = message.get("tags")
                    if isinstance(tags, list):
                        cache.drop(*(str(tag) for tag in tags))
            except StreamInterrupted:
                # The bus logs the outage; invalidations may have been missed meanwhile.
                logger.info("cache: events may have been missed; emptying the read cache")
                cache.clear()
