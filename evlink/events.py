"""Publish and subscribe of vehicle and command events.

Topics are strings (:func:`charge_state_topic`, :func:`command_topic`);
messages are JSON-compatible dicts, so that a bus across processes (Redis
pub/sub) can carry them unchanged. The in-process :class:`MemoryEventBus` is
the default.

Subscribe *before* reading the current state, then read it, then follow the
messages: nothing that happens in between is lost. A read that raises
:class:`~evlink.errors.StreamInterrupted` means messages may have been missed
(the Redis link broke, was down when the subscription began, or has just come
back): read the state again, or end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import uuid
from collections.abc import AsyncIterator, Callable, Hashable
from types import TracebackType
from typing import Any, Protocol, TypeVar
from uuid import UUID

import redis.asyncio

from evlink.errors import StreamInterrupted
from evlink.mailbox import Mailbox

__all__ = [
    "EventBus",
    "MemoryEventBus",
    "RedisEventBus",
    "Subscription",
    "build_event_bus",
    "charge_state_topic",
    "charging_session_topic",
    "command_topic",
    "command_wake_topic",
    "delivery_topic",
    "shared",
]

logger = logging.getLogger(__name__)

Message = dict[str, Any]


def charge_state_topic(vehicle_id: UUID | str) -> str:
    return f"vehicle:{vehicle_id}:charge-state"


def charging_session_topic(vehicle_id: UUID | str) -> str:
    """A car's charging session opened, grew or ended (evlink.resolvers.sessions)."""
    return f"vehicle:{vehicle_id}:charging-session"


def command_topic(command_id: UUID | str) -> str:
    return f"command:{command_id}"


def delivery_topic(delivery_id: str) -> str:
    """Announces that a webhook delivery has been worked off."""
    return f"delivery:{delivery_id}"


def command_wake_topic(command_id: UUID | str) -> str:
    """Tells the watcher following a command to look again (provider action changed)."""
    return f"command:{command_id}:wake"


T = TypeVar("T")
_SHARED = 128  # recent (object, make) pairs with what was made of them
# id(object), make -> (the object, what was made of it); the object is kept alive with it.
_made: dict[tuple[int, Hashable], tuple[object, object]] = {}


def shared(obj: object, make: Callable[[Any], T]) -> T:
    """``make(obj)``, made once for every subscriber handed the same ``obj``: the bus
    gives each local subscriber of a message the same message object, and whatever is
    made of it once is shared in turn (a subscription's payload: evlink.schema.fanout)."""
    key = (id(obj), make)
    known = _made.get(key)
    if known is not None and known[0] is obj:
        made: T = known[1]  # type: ignore[assignment]
        return made
    made = make(obj)
    if len(_made) >= _SHARED:
        del _made[next(iter(_made))]
    # The object is kept alive with what was made of it, so its id is not reused meanwhile.
    _made[key] = (obj, made)
    return made


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

    def forward(self, to: Callable[[Message], None], ended: Callable[[Exception], None]) -> None:
        """Hand each message to ``to`` from now on, and an interruption's error to ``ended``
        (then nothing more): the subscription needs no reader."""
        ...

    def close(self) -> None:
        """Unsubscribe at once (what ``async with`` does at its end)."""
        ...


class EventBus(Protocol):
    @property
    def live(self) -> bool:
        """Whether every instance's messages reach this instance's subscribers now."""
        ...

    async def publish(self, topic: str, message: Message) -> None: ...

    def subscribe(self, *topics: str) -> Subscription: ...

    async def aclose(self) -> None: ...


class _MemorySubscription(Mailbox[Message]):
    """A subscription's mailbox (evlink.mailbox): the messages not read yet, and the
    reader's waiter."""

    __slots__ = ("_bus", "_ended", "_forward", "_max_queue", "_topics")

    def __init__(self, bus: MemoryEventBus, topics: tuple[str, ...], max_queue: int) -> None:
        super().__init__()
        self._bus = bus
        self._topics = topics
        self._max_queue = max_queue
        self._forward: Callable[[Message], None] | None = None
        self._ended: Callable[[Exception], None] | None = None

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
        self.close()

    def close(self) -> None:
        """Unsubscribe: no message is delivered from now on."""
        for topic in self._topics:
            subscribers = self._bus.subscribers.get(topic)
            if subscribers is not None:
                subscribers.discard(self)
                if not subscribers:
                    del self._bus.subscribers[topic]

    def forward(self, to: Callable[[Message], None], ended: Callable[[Exception], None]) -> None:
        """From now on hand each message to ``to`` as it is delivered, in order, the
        messages not read yet first; an interruption (one waiting, or one to come) goes to
        ``ended`` with its error, once, and nothing is handed on after it. No reader is
        needed any more. Neither may raise (evlink.schema.fanout)."""
        waiting, self._items = self._items, []
        self._forward, self._ended = to, ended
        for message in waiting:
            self.deliver(message)

    def deliver(self, message: Message) -> None:
        forward = self._forward
        if forward is not None:
            if _INTERRUPTED not in message:
                forward(message)
                return
            ended = self._ended
            self._forward, self._ended = _dropped, None  # nothing more after an interruption
            if ended is not None:
                ended(_error_of(message))
            return
        messages = self._items
        if len(messages) >= self._max_queue:
            # A slow reader loses the oldest message, never the newest state.
            del messages[0]
            logger.warning("events: slow subscriber on %s dropped a message", self._topics)
        self.put(message)

    def interrupt(self, reason: str, error: Exception | None = None) -> None:
        """Tell the reader its stream ended: the next read raises ``error``, by default
        :class:`StreamInterrupted` (the stream broke). Never leaves the process."""
        self.deliver({_INTERRUPTED: reason, _ERROR: error})

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            yield _checked(await self.take())

    async def get(self, timeout: float | None = None) -> Message | None:
        try:
            return _checked(await asyncio.wait_for(self.take(), timeout))
        except TimeoutError:
            return None


_INTERRUPTED = "__stream_interrupted__"
MAILBOX = 100  # messages a subscriber has not read yet, at most: then the oldest go
_ERROR = "__error__"
# Seconds a client is told to wait before it subscribes again (the reader retries
# Redis at least this often).
RESUBSCRIBE_AFTER = 1.0


def _checked(message: Message) -> Message:
    if _INTERRUPTED in message:
        raise _error_of(message)
    return message


def _error_of(interruption: Message) -> Exception:
    error: Exception | None = interruption.get(_ERROR)
    return error or StreamInterrupted(retry_after=RESUBSCRIBE_AFTER)


def _dropped(message: Message) -> None:
    """Where a forwarded subscription's messages go once it was interrupted."""


class MemoryEventBus:
    """Events within one process."""

    live = True  # one process: every message is delivered here

    def __init__(self, max_queue: int = MAILBOX) -> None:
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


# What a Redis call raises when Redis is away or its connection broke. RuntimeError too:
# on uvloop (what `evlink serve` runs) writing on a connection reset under redis-py
# raises "unable to perform operation on <TCPTransport closed=True>", not an OSError;
# redis-py drops that connection, so the next try opens a fresh one.
REDIS_FAILURES: tuple[type[BaseException], ...] = (redis.RedisError, OSError, RuntimeError)

# The reader's pause between two tries to reach Redis: doubling from the base, capped
# so that it is back within a second of Redis answering again.
RECONNECT_BASE = 0.1
RECONNECT_CAP = 0.5
# A pub/sub link silent for PING_AFTER seconds is pinged; one that has said nothing for
# SILENCE_LIMIT seconds is taken as dead (a frozen connection raises no error).
PING_AFTER = 1.0
SILENCE_LIMIT = 3.0
# Seconds a Redis command (a publish, a ping) may take: a frozen Redis must not hold
# a request that publishes for redis-py's default 5 s.
COMMAND_TIMEOUT = 1.0


class RedisEventBus:
    """Events across instances over Redis pub/sub; local subscribers never wait on Redis.

    A message is delivered to this instance's subscribers at once and published
    to Redis with the instance's id; every instance reads one pattern
    subscription and delivers what other instances published.

    Subscribers are told (their next read raises :class:`StreamInterrupted`)
    whenever messages may have been missed: when the link breaks or falls
    silent, when they subscribe while it is down, and once more when it is back.
    The reader reconnects with a backoff capped at :data:`RECONNECT_CAP`. A
    publish that fails on a dead pooled connection is sent again on a fresh one;
    an outage is logged once, not per message.
    """

    def __init__(
        self, url: str, *, prefix: str = "evlink:events:", max_queue: int = MAILBOX
    ) -> None:
        self.local = MemoryEventBus(max_queue)
        self.instance = uuid.uuid4().hex
        self._prefix = prefix
        self._redis: redis.asyncio.Redis = redis.asyncio.from_url(
            url, socket_timeout=COMMAND_TIMEOUT, socket_connect_timeout=COMMAND_TIMEOUT
        )
        self._reader: asyncio.Task[None] | None = None
        # Set while the pattern subscription is in place; cleared when the connection breaks.
        self.connected = asyncio.Event()
        self._link_failing = False  # the reader's outage is logged
        self._publish_failing = False  # publishing's outage is logged

    @property
    def subscribers(self) -> dict[str, set[_MemorySubscription]]:
        return self.local.subscribers

    @property
    def live(self) -> bool:
        return self.connected.is_set()

    async def start(self, timeout: float = 2.0) -> None:
        """Start reading; returns once the pattern subscription is in place (or timeout)."""
        self._reader = asyncio.create_task(self._read_forever(), name="redis-events")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), timeout)

    async def publish(self, topic: str, message: Message) -> None:
        self.local.deliver(topic, message)
        payload = json.dumps({"origin": self.instance, "topic": topic, "message": message})
        try:
            await self._send(self._prefix + topic, payload)
        except REDIS_FAILURES as exc:
            if not self._publish_failing:
                self._publish_failing = True
                logger.warning(
                    "events: publishing to Redis failed (%s); other instances miss this "
                    "instance's events until it answers",
                    exc,
                )
            logger.debug("events: %s not published to Redis: %s", topic, exc)
            return
        if self._publish_failing:
            self._publish_failing = False
            logger.info("events: publishing to Redis works again")

    async def _send(self, channel: str, payload: str) -> None:
        try:
            await self._redis.publish(channel, payload)
        except (redis.ConnectionError, RuntimeError):
            # The pooled connection may have died with a Redis that has come back since,
            # or been reset under it. redis-py closed it: this try opens one afresh.
            await self._redis.publish(channel, payload)

    def subscribe(self, *topics: str) -> _MemorySubscription:
        subscription = self.local.subscribe(*topics)
        if not self.connected.is_set():
            # Other instances' messages cannot arrive now: the first read says so.
            subscription.interrupt("the event stream is down")
        return subscription

    async def ping(self) -> bool:
        # Twice: the first try after Redis came back may meet a dead pooled connection.
        for _ in range(2):
            try:
                return bool(await self._redis.ping())
            except REDIS_FAILURES:
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
        delay = RECONNECT_BASE
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await self._subscribe(pubsub)
                    self._link_up()
                    delay = RECONNECT_BASE
                    await self._listen(pubsub)
            except REDIS_FAILURES as exc:
                self._link_down(exc)
            except Exception as exc:  # never let the reader die: it would be stale for good
                logger.exception("events: the Redis reader failed; reading again")
                self._link_down(exc)
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, RECONNECT_CAP)

    async def _subscribe(self, pubsub: redis.asyncio.client.PubSub) -> None:
        """Subscribe to every channel of this deployment; return once Redis confirms it."""
        await pubsub.psubscribe(self._prefix + "*")
        confirmed = await pubsub.get_message(timeout=SILENCE_LIMIT)
        if confirmed is None or confirmed.get("type") != "psubscribe":
            raise redis.ConnectionError("Redis did not confirm the subscription")

    async def _listen(self, pubsub: redis.asyncio.client.PubSub) -> None:
        """Deliver what arrives until the link breaks or stays silent past the limit."""
        loop = asyncio.get_running_loop()
        heard = loop.time()
        pinged = False
        while True:
            raw = await pubsub.get_message(timeout=PING_AFTER / 2)
            now = loop.time()
            if raw is not None:
                heard, pinged = now, False
                self._dispatch(raw)
            elif now - heard >= SILENCE_LIMIT:
                raise redis.TimeoutError(f"no answer from Redis for {SILENCE_LIMIT:g} s")
            elif now - heard >= PING_AFTER and not pinged:
                await pubsub.ping()  # its answer comes back as a message
                pinged = True

    def _link_up(self) -> None:
        logger.info("events: reading Redis pub/sub")
        self._link_failing = False
        # Messages published while the link was down were missed: whoever stayed
        # subscribed reads what it follows again.
        self.local.interrupt_all("the event stream is back; read again")
        self.connected.set()

    def _link_down(self, exc: BaseException) -> None:
        if self.connected.is_set():
            self.connected.clear()
            self.local.interrupt_all("the event stream was interrupted")
        if not self._link_failing:
            self._link_failing = True
            logger.warning(
                "events: Redis pub/sub unavailable (%s); subscriptions end with "
                "STREAM_INTERRUPTED until it is back",
                exc,
            )

    def _dispatch(self, raw: dict[str, Any]) -> None:
        if raw.get("type") != "pmessage":
            return
        try:
            envelope = json.loads(raw["data"])
            if envelope["origin"] == self.instance:
                return  # delivered locally when it was published
            topic, message = str(envelope["topic"]), dict(envelope["message"])
        except (ValueError, TypeError, KeyError):
            # One bad message must not end the reader (its subscribers would go stale).
            logger.warning("events: unreadable message on %r", raw.get("channel"))
            return
        self.local.deliver(topic, message)


def build_event_bus(redis_url: str, database_url: str) -> EventBus:
    """In-process events, or Redis pub/sub when a URL is configured.

    On Redis the channels are named after the database: instances that share a
    database share events, and other deployments on the same Redis stay apart.
    """
    if not redis_url:
        return MemoryEventBus()
    namespace = hashlib.sha256(database_url.encode()).hexdigest()[:12]
    return RedisEventBus(redis_url, prefix=f"evlink:{namespace}:events:")
