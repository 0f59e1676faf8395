"""The in-process event bus's delivery: a subscription's mailbox (evlink.events)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from evlink.errors import StreamInterrupted
from evlink.events import MemoryEventBus


async def test_a_slow_reader_loses_the_oldest_messages_never_the_newest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = MemoryEventBus(max_queue=3)
    async with bus.subscribe("topic") as subscription:
        for n in range(5):
            await bus.publish("topic", {"n": n})
        read = [await subscription.get(timeout=1) for _ in range(3)]
        assert read == [{"n": 2}, {"n": 3}, {"n": 4}]
        assert await subscription.get(timeout=0.01) is None
    assert "slow subscriber" in caplog.text
    assert [r.levelno for r in caplog.records].count(logging.WARNING) == 2


async def test_a_read_cancelled_after_its_message_arrived_loses_nothing() -> None:
    bus = MemoryEventBus()
    async with bus.subscribe("topic") as subscription:
        reader = asyncio.ensure_future(subscription.get())
        await asyncio.sleep(0)  # one turn of the loop: the reader now waits
        await bus.publish("topic", {"n": 1})
        reader.cancel()  # before the reader has run again
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        assert await subscription.get(timeout=1) == {"n": 1}


async def test_messages_are_read_in_order_and_an_interruption_raises_in_its_turn() -> None:
    bus = MemoryEventBus()
    async with bus.subscribe("a", "b") as subscription:
        stream = aiter(subscription)
        await bus.publish("a", {"n": 1})
        await bus.publish("b", {"n": 2})
        subscription.interrupt("stop")
        assert await anext(stream) == {"n": 1}
        assert await anext(stream) == {"n": 2}
        with pytest.raises(StreamInterrupted):
            await anext(stream)
    assert bus.subscribers == {}


async def test_a_forwarded_subscription_hands_on_what_waited_first_then_its_interruption() -> None:
    """``forward``: the messages not read yet go first, in order, then each as it comes;
    an interruption's error goes to ``ended``, once, and nothing after it
    (evlink.schema.fanout forwards this way)."""
    bus = MemoryEventBus()
    forwarded: list[dict[str, int]] = []
    ended: list[Exception] = []
    async with bus.subscribe("topic") as subscription:
        await bus.publish("topic", {"n": 1})
        await bus.publish("topic", {"n": 2})
        subscription.forward(forwarded.append, ended.append)
        await bus.publish("topic", {"n": 3})
        assert forwarded == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert ended == []
        gone = LookupError("gone")
        subscription.interrupt("gone", gone)
        subscription.interrupt("again")
        await bus.publish("topic", {"n": 4})
    assert forwarded == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert ended == [gone]


async def test_an_interruption_waiting_ends_a_forwarded_subscription_after_what_came_first() -> (
    None
):
    bus = MemoryEventBus()
    forwarded: list[dict[str, int]] = []
    ended: list[Exception] = []
    async with bus.subscribe("topic") as subscription:
        await bus.publish("topic", {"n": 1})
        subscription.interrupt("broken")  # the stream broke: StreamInterrupted
        await bus.publish("topic", {"n": 2})
        subscription.forward(forwarded.append, ended.append)
    assert forwarded == [{"n": 1}]
    assert [type(error) for error in ended] == [StreamInterrupted]


async def test_a_closed_subscription_is_delivered_nothing() -> None:
    bus = MemoryEventBus()
    subscription = await bus.subscribe("topic", "other").__aenter__()
    subscription.close()
    assert bus.subscribers == {}
    await bus.publish("topic", {"n": 1})
    assert await subscription.get(timeout=0) is None
