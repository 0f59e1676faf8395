"""A list one reader waits on: the mailbox under evlink.events' subscriptions and
evlink.wsprotocol's websocket queue.

Not an ``asyncio.Queue``: an idle mailbox (the usual state of thousands of them) holds
an empty list and, while its reader waits, one future; a queue holds three deques and a
future of its own (bench/README.md, memory per subscription).
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

__all__ = ["Mailbox"]

T = TypeVar("T")


class Mailbox(Generic[T]):
    """Items in the order they are put, for one reader. An item stays until its reader
    takes it: a :meth:`take` cancelled after it came loses nothing."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: T) -> None:
        """Add ``item`` and wake the reader, if it waits."""
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> T:
        """The oldest item, waiting for one."""
        while not self._items:
            waiter = self._waiter
            if waiter is None or waiter.done():
                waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        return self._items.pop(0)
