"""Publish and subscribe of vehicle and command events.

Topics are strings (:func:`charge_state_topic`, :func:`command_topic`);
messages are JSON-compatible dicts, so that a bus across processes (Redis
pub/sub) can carry them unchanged. The in-process :class:`MemoryEventBus` is
the default.

Subscribe *before* reading the current state, then read it, then follow the
messages: nothing that happens in between is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Protocol
from uuid import UUID

__all__ = [
    "EventBus",
    "MemoryEventBus",
    "Subscription",
    "charge_state_topic",
    "command_topic",
    "command_wake_topic",
    "delivery_topic",
]

logger = logging.getLogger(__name__)

Message = dict[str, Any]


def charge_state_topic(vehicle_id: UUID | str) -> str:
    return f"vehicle:{vehicle_id}:charge-state"


def command_topic(command_id: UUID | str) -> str:
    return f"command:{command_id}"


def delivery_topic(delivery_id: str) -> str:
    """Announces that a webhook delivery has been worked off."""
    return f"delivery:{delivery_id}"


def command_wake_topic(command_id: UUID | str) -> str:
    """Tells the watcher following a command to look again (provider action changed)."""
    return f"command:{command_id}:wake"


class Subscription(Protocol):
    """An open subscription: an async context manager that iterates messages."""

    async def __aenter__(self) -> Subscription: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def __aiter__(self) -> AsyncIterator[Message]: ...

    async def get(self, timeout: float | None = None) -> Message | None:
        """The next message, or None when ``timeout`` seconds pass without one."""
        ...


class EventBus(Protocol):
    async def publish(self, topic: str, message: Message) -> None: ...

    def subscribe(self, *topics: str) -> Subscription: ...

    async def aclose(self) -> None: ...


class _MemorySubscription:
    def __init__(self, bus: MemoryEventBus, topics: tuple[str, ...], max_queue: int) -> None:
        self._bus = bus
        self._topics = topics
        self.queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=max_queue)

    async def __aenter__(self) -> _MemorySubscription:
        for topic in self._topics:
            self._bus.subscribers.setdefault(topic, set()).add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for topic in self._topics:
            subscribers = self._bus.subscribers.get(topic)
            if subscribers is not None:
                subscribers.discard(self)
                if not subscribers:
                    del self._bus.subscribers[topic]

    def deliver(self, message: Message) -> None:
        if self.queue.full():
            # A slow reader loses the oldest message, never the newest state.
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            logger.warning("events: slow subscriber on %s dropped a message", self._topics)
        self.queue.put_nowait(message)

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            yield await self.queue.get()

    async def get(self, timeout: float | None = None) -> Message | None:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None


class MemoryEventBus:
    """Events within one process."""

    def __init__(self, max_queue: int = 100) -> None:
        self.subscribers: dict[str, set[_MemorySubscription]] = {}
        self._max_queue = max_queue

    async def publish(self, topic: str, message: Message) -> None:
        for subscription in tuple(self.subscribers.get(topic, ())):
            subscription.deliver(message)

    def subscribe(self, *topics: str) -> _MemorySubscription:
        return _MemorySubscription(self, topics, self._max_queue)

    async def aclose(self) -> None:
        self.subscribers.clear()
