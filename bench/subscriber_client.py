"""One subscriber process of the subscription benchmark (:mod:`bench.subscriptions`).

``python -m bench.subscriber_client --port P --key KEY --vehicle ID --count N`` opens
``N`` websockets to ``ws://127.0.0.1:P/graphql``, each subscribing to the car's
``chargeState`` over ``graphql-transport-ws``, and then follows the orders the
orchestrator writes on stdin, one a line:

- ``round <n> <0|1>``: the car is about to be unplugged (0) or plugged (1). The process
  answers ``ARMED {json}`` once its sockets wait for that state (a message that came
  before would not count: the orchestrator changes the car only after). Once every
  socket of this process has received that state, the process prints ``ROUND {json}``:
  each socket's arrival time (``time.monotonic()``, one clock for the whole machine,
  comparable with the server's change time) and this process's CPU seconds from the
  order to the last arrival. A round not complete when the next order comes is
  reported then, incomplete.
- ``quit``: close every socket, print ``BYE {json}`` (CPU seconds in all), exit.

Once all are open (or one failed) it prints ``READY {json}`` (or ``FAILED {json}``).
A subscription refused with ``DATABASE_UNAVAILABLE`` while thousands are opened at
once (each reads the car and its state) is asked again after its ``retryAfter``, and
a socket closed for it at ``connection_init`` connects again a second later, at most
:data:`RETRIES` times each; the retries are counted in ``READY``.

It is kept light so that 10,000 subscribers measure the server, not the client:
plain asyncio protocols over raw sockets (no websocket library, no task per
socket), a handshake of our own, unmasked payloads under a zero mask key (legal:
the server cannot tell), one ``json.loads`` per message. Every message is still
checked: a ``next`` of operation ``1`` whose charge state has the expected plug
state and no errors counts; an ``error`` or a close before ``quit`` fails the run.
With ``--offer-deflate`` the handshake offers permessage-deflate as browsers do,
and compressed messages are inflated if the server accepts it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, cast

__all__ = ["main"]

QUERY = (
    "subscription Watch($id: ID!) { chargeState(vehicleId: $id) "
    "{ isPluggedIn powerDeliveryState batteryLevel lastUpdated } }"
)
OPEN_CONCURRENCY = 8  # subscriptions being opened at once, per process (4 processes: 32)
OPEN_TIMEOUT = 120.0  # seconds one socket may take to be subscribed (retries included)
RETRIES = 5  # subscriptions refused with DATABASE_UNAVAILABLE asked again, per socket
_BUSY = "The database is unavailable"  # evlink's message for DATABASE_UNAVAILABLE
_TAIL = b"\x00\x00\xff\xff"  # what permessage-deflate strips from each message


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def frame(opcode: int, payload: bytes) -> bytes:
    """A client frame: final, masked with the key 0 (so the payload goes as it is)."""
    length = len(payload)
    if length < 126:
        head = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + payload


@dataclass(slots=True)
class Round:
    number: int
    want_plugged: bool
    remaining: int
    cpu_at_start: float
    arrivals: list[float] = field(default_factory=list)


class Subscriber(asyncio.Protocol):
    """One websocket with one subscription, as a plain asyncio protocol."""

    def __init__(self, owner: Fleet) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.inflater: Any = None  # a zlib decompressor when deflate was accepted
        self.fresh_inflater = False  # server_no_context_takeover
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acknowledged = False
        self.operation = 0  # the id of this socket's subscription (again after a retry)
        self.round: Round | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        key = base64.b64encode(os.urandom(16)).decode()
        offer = (
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            if self.owner.offer_deflate
            else ""
        )
        self.transport.write(
            (
                f"GET /graphql HTTP/1.1\r\nHost: 127.0.0.1:{self.owner.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Protocol: graphql-transport-ws\r\n{offer}\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            if not self.upgraded and not self._handshake():
                return
            self._frames()
        except Exception as exc:  # a wrong answer: this socket fails the run
            self.fail(f"{type(exc).__name__}: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.owner.quitting:
            self.fail(f"connection lost: {exc!r}")

    # -- the protocol

    def _handshake(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[: end + 4]
        status = head.split("\r\n", 1)[0]
        if " 101 " not in status + " ":
            raise RuntimeError(f"handshake refused: {status}")
        lowered = head.lower()
        if "permessage-deflate" in lowered:
            self.owner.deflate_accepted = True
            self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            self.fresh_inflater = "server_no_context_takeover" in lowered
        self.upgraded = True
        init = {"type": "connection_init", "payload": {"Authorization": self.owner.key}}
        self.send(init)
        return True

    def send(self, message: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(frame(0x1, json.dumps(message).encode()))

    def _frames(self) -> None:
        buffer = self.buffer
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            length, at = second & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, at = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, at = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < at + length:
                return
            payload = bytes(buffer[at : at + length])
            del buffer[: at + length]
            self._frame(first, payload)

    def _frame(self, first: int, payload: bytes) -> None:
        opcode = first & 0x0F
        if not first & 0x80:
            raise RuntimeError("fragmented message (not expected for small events)")
        if opcode == 0x9:  # ping
            assert self.transport is not None
            self.transport.write(frame(0xA, payload))
        elif opcode == 0x8:
            raise RuntimeError(f"closed by the server: {payload[:2].hex()} {payload[2:]!r}")
        elif opcode in (0x1, 0x2):
            if first & 0x40:  # RSV1: compressed
                if self.fresh_inflater:
                    self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                payload = self.inflater.decompress(payload + _TAIL)
            self._message(json.loads(payload))

    def _message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        current = str(self.operation)
        if kind == "connection_ack" and not self.acknowledged:
            self.acknowledged = True
            self._subscribe()
        elif kind == "ping":
            self.send({"type": "pong"})
        elif kind == "pong" or (kind == "complete" and not self.subscribed.done()):
            pass  # the end of a subscription refused (it is asked again)
        elif kind == "next" and message.get("id") == current:
            payload = message["payload"]
            if payload.get("errors"):
                self._refused(payload["errors"])
                return
            state = payload["data"]["chargeState"]
            if not self.subscribed.done():
                self.subscribed.set_result(None)
            else:
                self._arrived(state["isPluggedIn"])
        else:
            raise RuntimeError(f"unexpected message: {str(message)[:200]}")

    def _subscribe(self) -> None:
        self.operation += 1
        subscribe = {"id": str(self.operation), "type": "subscribe"}
        self.send({**subscribe, "payload": self.owner.subscribe})

    def _refused(self, errors: list[dict[str, Any]]) -> None:
        """A subscription refused while the database is busy (the server reads the car
        and its state for each new one) is asked again after its ``retryAfter``, as a
        client would, a few times; any other error fails the run."""
        code = (errors[0].get("extensions") or {}).get("code")
        if self.subscribed.done() or code != "DATABASE_UNAVAILABLE" or self.operation > RETRIES:
            raise RuntimeError(f"errors: {errors}")
        self.owner.retries += 1
        retry_after = float(errors[0]["extensions"].get("retryAfter", 1))
        asyncio.get_running_loop().call_later(retry_after, self._subscribe)

    def _arrived(self, plugged: bool) -> None:
        current = self.round
        if current is not None and plugged == current.want_plugged:
            self.round = None
            current.arrivals.append(time.monotonic())
            current.remaining -= 1
            if current.remaining == 0:
                self.owner.complete(current)

    def fail(self, reason: str) -> None:
        """Before it is subscribed, its opening fails (and may be tried again); after,
        the run fails."""
        opening = self.subscribed
        if not opening.done():
            opening.set_exception(RuntimeError(reason))
        elif not opening.cancelled() and opening.exception() is None:
            self.owner.failed(reason)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(0x8, (1000).to_bytes(2, "big")))
            self.transport.close()


class Fleet:
    """This process's subscribers and the orders it follows."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.port: int = args.port
        self.key = f"Bearer {args.key}"
        self.subscribe = {"query": QUERY, "variables": {"id": args.vehicle}}
        self.offer_deflate: bool = args.offer_deflate
        self.count: int = args.count
        self.deflate_accepted = False
        self.retries = 0
        self.quitting = False
        self.sockets: list[Subscriber] = []
        self.current: Round | None = None
        self.failures: list[str] = []

    async def open_all(self) -> None:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)

        async def one() -> None:
            async with gate:
                for attempt in range(RETRIES + 1):
                    _, subscriber = await loop.create_connection(
                        lambda: Subscriber(self), "127.0.0.1", self.port
                    )
                    try:
                        await asyncio.wait_for(subscriber.subscribed, OPEN_TIMEOUT)
                    except RuntimeError as exc:
                        # Closed at connection_init while the database was busy (1011):
                        # a client connects again, a little later.
                        if _BUSY not in str(exc) or attempt == RETRIES:
                            raise
                        subscriber.close()
                        self.retries += 1
                        await asyncio.sleep(1.0)
                        continue
                    self.sockets.append(subscriber)
                    return

        await asyncio.gather(*(one() for _ in range(self.count)))

    def start_round(self, number: int, plugged: bool) -> None:
        if self.current is not None:
            self.report(self.current, complete=False)
        self.current = Round(number, plugged, len(self.sockets), cpu_seconds())
        for subscriber in self.sockets:
            subscriber.round = self.current
        say("ARMED", {"round": number})  # the change may come now: none is missed

    def complete(self, current: Round) -> None:
        if current is self.current:
            self.current = None
            self.report(current, complete=True)

    def report(self, current: Round, *, complete: bool) -> None:
        say(
            "ROUND",
            {
                "round": current.number,
                "complete": complete,
                "arrivals": current.arrivals,
                "cpu": cpu_seconds() - current.cpu_at_start,
            },
        )

    def failed(self, reason: str) -> None:
        if len(self.failures) < 5:
            self.failures.append(reason)
            say("FAILED", {"reason": reason})

    def close_all(self) -> None:
        self.quitting = True
        for subscriber in self.sockets:
            subscriber.close()


def say(kind: str, data: dict[str, Any]) -> None:
    sys.stdout.write(f"{kind} {json.dumps(data)}\n")
    sys.stdout.flush()


async def follow_orders(fleet: Fleet) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        if line[0] == "round":
            fleet.start_round(int(line[1]), line[2] == "1")
        elif line[0] == "quit":
            break


async def run(args: argparse.Namespace) -> None:
    fleet = Fleet(args)
    started, cpu = time.monotonic(), cpu_seconds()
    try:
        await fleet.open_all()
    except Exception as exc:
        fleet.close_all()
        say("FAILED", {"reason": f"opening: {type(exc).__name__}: {exc}"[:500]})
        return
    say(
        "READY",
        {
            "opened": len(fleet.sockets),
            "seconds": time.monotonic() - started,
            "cpu": cpu_seconds() - cpu,
            "deflate": fleet.deflate_accepted,
            "retries": fleet.retries,
        },
    )
    try:
        await follow_orders(fleet)
    finally:
        fleet.close_all()
        await asyncio.sleep(0)  # let the close frames go out
        say("BYE", {"cpu": cpu_seconds()})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--vehicle", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--offer-deflate", action="store_true")
    args = parser.parse_args(argv)
    from bench.common import raise_nofile_limit

    raise_nofile_limit(args.count + 256)
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run(args))


if __name__ == "__main__":
    main()
