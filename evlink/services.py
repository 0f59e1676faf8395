"""What the app holds open for its life: settings, provider, event bus, command watcher.

Built and closed by the lifespan in :mod:`evlink.app`; passed explicitly to the
use cases in :mod:`evlink.resolvers`, never reached through globals.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from uuid import UUID

from evlink.cache import ReadCache
from evlink.events import EventBus
from evlink.metrics import Metrics
from evlink.providers.base import Provider
from evlink.server import OpenSockets
from evlink.settings import Settings

if TYPE_CHECKING:
    from evlink.models.sessions import ChargingSession
    from evlink.ratelimit import Limiter
    from evlink.resolvers.auth import KeyUses
    from evlink.resolvers.charging import CommandWatcher
    from evlink.resolvers.vehicles import VehicleStatus

__all__ = ["Refresh", "Services"]


@dataclass(frozen=True, slots=True)
class Refresh:
    """A vehicle's refresh from the provider in flight; ``started`` is the loop's time."""

    task: asyncio.Task[VehicleStatus]
    started: float


@dataclass(eq=False)
class Services:
    settings: Settings
    provider: Provider
    events: EventBus
    # Refreshes in flight, one per vehicle: concurrent stale reads share one provider call.
    refreshes: dict[UUID, Refresh] = field(default_factory=dict)
    watcher: CommandWatcher | None = None
    metrics: Metrics = field(default_factory=Metrics)
    open_sockets: OpenSockets = field(default_factory=OpenSockets)
    # Tier quotas and rate limits; None (the CLI) limits nothing.
    limiter: Limiter | None = None
    # Keys, statuses and GraphQL results read from memory (evlink.cache); off (ttl 0)
    # unless the app's lifespan makes one from the settings.
    cache: ReadCache = field(default_factory=lambda: ReadCache(0.0))
    # Key uses noted for the next batched write of last_used_at (evlink.resolvers.auth);
    # None (the CLI): written at once.
    key_uses: KeyUses | None = None
    _vehicle_locks: dict[UUID, asyncio.Lock] = field(default_factory=dict)
    # Vehicles without a provider id already logged (once each: evlink.resolvers.vehicles).
    unlinked_logged: set[UUID] = field(default_factory=set)
    # Each car's open charging session as this process last wrote or read it
    # (evlink.resolvers.sessions: a hint, never trusted past a compare-and-set).
    open_sessions: dict[UUID, ChargingSession] = field(default_factory=dict)

    def vehicle_lock(self, vehicle_id: UUID) -> asyncio.Lock:
        """Serialises charging decisions for one vehicle within this process."""
        lock = self._vehicle_locks.get(vehicle_id)
        if lock is None:
            lock = self._vehicle_locks[vehicle_id] = asyncio.Lock()
        return lock
