"""The in-process event bus: a subscriber that reads too slowly loses its oldest
messages, never the newest state nor the news that its stream ended."""

from __future__ import annotations

import logging

import pytest

from evlink.errors import StreamInterrupted
from evlink.events import MemoryEventBus
from tests.conftest import TIMEOUT


async def test_a_full_queue_drops_the_oldest_message_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = MemoryEventBus(max_queue=3)
    async with bus.subscribe("topic") as messages:
        with caplog.at_level(logging.WARNING, logger="evlink.events"):
            for n in range(1, 6):
                await bus.publish("topic", {"n": n})
        received = [await messages.get(timeout=TIMEOUT) for _ in range(3)]
        assert received == [{"n": 3}, {"n": 4}, {"n": 5}]
        assert messages.queue.empty()
    dropped = [r for r in caplog.records if "dropped a message" in r.getMessage()]
    assert len(dropped) == 2
    assert all(r.levelno == logging.WARNING for r in dropped)


async def test_an_interruption_reaches_a_reader_whose_queue_is_full() -> None:
    bus = MemoryEventBus(max_queue=2)
    async with bus.subscribe("topic") as messages:
        for n in range(1, 4):
            await bus.publish("topic", {"n": n})
        messages.interrupt("link lost")
        assert await messages.get(timeout=TIMEOUT) == {"n": 3}
        with pytest.raises(StreamInterrupted):
            await messages.get(timeout=TIMEOUT)
