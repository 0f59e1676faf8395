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
import hashlib
import json
import logging
import random
import uuid
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Protocol
from uuid import UUID

import redis.asyncio

from evlink.errors import StreamInterrupted

__all__ = [
    "EventBus",
    "MemoryEventBus",
    "RedisEventBus",
    "Subscription",
    "build_event_bus",
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

    def interrupt(self, reason: str, error: Exception | None = None) -> None:
        """End the reader's stream: its next read raises ``error``
        (:class:`StreamInterrupted` by default)."""
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

    def interrupt(self, reason: str, error: Exception | None = None) -> None:
        """Tell the reader its stream ended: the next read raises ``error``, by default
        :class:`StreamInterrupted` (the stream broke). Never leaves the process."""
        self.deliver({_INTERRUPTED: reason, _ERROR: error})

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            yield _checked(await self.queue.get())

    async def get(self, timeout: float | None = None) -> Message | None:
        try:
            return _checked(await asyncio.wait_for(self.queue.get(), timeout))
        except TimeoutError:
            return None


_INTERRUPTED = "__stream_interrupted__"
_ERROR = "__error__"


def _checked(message: Message) -> Message:
    if _INTERRUPTED in message:
        raise message.get(_ERROR) or StreamInterrupted()
    return message


class MemoryEventBus:
    """Events within one process."""

    def __init__(self, max_queue: int = 100) -> None:
        self.subscribers: dict[str, set[_MemorySubscription]] = {}
        self._max_queue = max_queue

    async def publish(self, topic: str, message: Message) -> None:
        self.deliver(topic, message)

    def deliver(self, topic: str, message: Message) -> None:
        for subscription in tuple(self.subscribers.get(topic, ())):
            subscription.deliver(message)

    def interrupt_all(self, reason: str) -> None:
        for subscriptions in tuple(self.subscribers.values()):
            for subscription in tuple(subscriptions):
                subscription.interrupt(reason)

    def subscribe(self, *topics: str) -> _MemorySubscription:
        return _MemorySubscription(self, topics, self._max_queue)

    async def aclose(self) -> None:
        self.subscribers.clear()


class RedisEventBus:
    """Events across instances over Redis pub/sub; local subscribers never wait on Redis.

    A message is delivered to this instance's subscribers at once and published
    to Redis with the instance's id; every instance reads one pattern
    subscription and delivers what other instances published. When the Redis
    connection breaks, every local subscription is told (its next read raises
    :class:`StreamInterrupted`) and the reader reconnects with backoff.
    """

    def __init__(self, url: str, *, prefix: str = "evlink:events:", max_queue: int = 100) -> None:
        self.local = MemoryEventBus(max_queue)
        self.instance = uuid.uuid4().hex
        self._prefix = prefix
        self._redis: redis.asyncio.Redis = redis.asyncio.from_url(url)
        self._reader: asyncio.Task[None] | None = None
        # Set while the pattern subscription is in place; cleared when the connection breaks.
        self.connected = asyncio.Event()

    @property
    def subscribers(self) -> dict[str, set[_MemorySubscription]]:
        return self.local.subscribers

    async def start(self, timeout: float = 2.0) -> None:
        """Start reading; returns once the pattern subscription is in place (or timeout)."""
        self._reader = asyncio.create_task(self._read_forever(), name="redis-events")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), timeout)

    async def publish(self, topic: str, message: Message) -> None:
        self.local.deliver(topic, message)
        payload = json.dumps({"origin": self.instance, "topic": topic, "message": message})
        try:
            await self._redis.publish(self._prefix + topic, payload)
        except (redis.RedisError, OSError) as exc:
            logger.warning("events: publishing %s to Redis failed: %s", topic, exc)

    def subscribe(self, *topics: str) -> _MemorySubscription:
        return self.local.subscribe(*topics)

    async def ping(self) -> bool:
        # Twice: the first try after Redis came back may meet a dead pooled connection.
        for _ in range(2):
            try:
                return bool(await self._redis.ping())
            except (redis.RedisError, OSError):
                continue
        return False

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._redis.aclose()
        await self.local.aclose()

    async def _read_forever(self) -> None:
        delay = 0.1
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.psubscribe(self._prefix + "*")
                    self.connected.set()
                    delay = 0.1
                    logger.info("events: reading Redis pub/sub")
                    async for raw in pubsub.listen():
                        self._dispatch(raw)
            except (redis.RedisError, OSError) as exc:
                if self.connected.is_set():
                    logger.warning("events: Redis connection lost (%s); reconnecting", exc)
                    self.local.interrupt_all("the event stream was interrupted")
                self.connected.clear()
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 10.0)

    def _dispatch(self, raw: dict[str, Any]) -> None:
        if raw.get("type") != "pmessage":
            return
        try:
            envelope = json.loads(raw["data"])
        except (ValueError, TypeError):
            logger.warning("events: unreadable message on %r", raw.get("channel"))
            return
        if envelope.get("origin") == self.instance:
            return  # delivered locally when it was published
        self.local.deliver(str(envelope["topic"]), dict(envelope["message"]))


def build_event_bus(redis_url: str, database_url: str) -> EventBus:
    """In-process events, or Redis pub/sub when a URL is configured.

    On Redis the channels are named after the database: instances that share a
    database share events, and other deployments on the same Redis stay apart.
    """
    if not redis_url:
        return MemoryEventBus()
    namespace = hashlib.sha256(database_url.encode()).hexdigest()[:12]
    return RedisEventBus(redis_url, prefix=f"evlink:{namespace}:events:")
