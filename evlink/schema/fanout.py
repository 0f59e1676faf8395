"""Subscription events to many subscribers: executed and encoded once, sent by one loop.

When a car's charge state changes, every ``chargeState`` subscriber of that car
gets the same event. Done the plain way, each subscriber's task wakes, graphql-core
executes its selection set, Strawberry builds and encodes the ``next`` message and
the socket frames it: about 200 µs of the server's CPU per subscriber, seconds for
10,000 (bench/README.md). Here:

- :func:`evlink.resolvers.follow.follow_charge_state` hands every subscriber of one
  message the same state, and :func:`shared_payload` makes one payload of it;
- :class:`SharedEventExecutor` executes a document with its variables once per such
  payload and hands the same result to the others that sent the same document with the
  same variables. Only payloads of :data:`SHAREABLE` types are shared: plain data whose
  fields read neither the context nor the caller, so the answer cannot depend on who
  asks. Results with errors are never shared;
- once a subscription's first state has gone out the plain way, its later events are
  *forwarded* (:meth:`Forwarding.state`): the event bus calls it as it delivers the
  message, and it writes the message to the socket at once (on uvicorn's
  websockets-sansio protocol without compression, as one frame straight to its
  transport: :class:`_Frames`), with no task woken. The
  message's payload (``{"data": …}``) is encoded once per (document, variables,
  payload) for all subscribers (:func:`encoded_payload`), and each subscriber's message is
  that text with its own opening spliced in: its operation id and its protocol's type
  (``next`` on graphql-transport-ws, ``data`` on graphql-ws), byte for byte what
  Strawberry would have sent. A socket that cannot take more (its write buffer is full)
  keeps at most :data:`~evlink.events.MAILBOX` messages, in order, written by one task
  of its own once it can, and drops the oldest past that, as the event bus's mailbox
  does;
- the follow then hands its event subscription and vehicle watch over
  (:meth:`Forwarding.take`) and ends, and so do the resolver, graphql-core's iterator,
  Strawberry's stream and the operation's task: the :class:`Forwarding` is the
  subscription from then on. An interruption (a lost car, a broken stream) reaches it
  from the bus; it lets go of what it holds and its :class:`Owner` (the protocol
  handler) sends the error, as Strawberry would have (:func:`error_payload`), then
  ``complete``. A client's ``complete`` or ``stop`` and the socket's end reach it from
  the handler (:meth:`Forwarding.end`).

The protocol handlers (:mod:`evlink.schema.view`) make each operation's
:class:`Forwarding` and set it in :data:`_FORWARDING` for the operation's task, where
the executor and the resolver find it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import weakref
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from typing import Any, Protocol

from graphql import ExecutionResult, GraphQLError
from graphql.language import OperationDefinitionNode
from starlette.types import Message
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from evlink.domain import ChargeStateData
from evlink.events import MAILBOX, Subscription, shared
from evlink.events import Message as EventMessage
from evlink.metrics import Metrics
from evlink.schema.errors import format_error
from evlink.schema.types import ChargeState

try:  # uvicorn's sans-I/O websocket protocol, whose internals _Frames reads
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # a uvicorn without it: every message goes through the ASGI send
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]

__all__ = [
    "FORWARDED_FIELD",
    "SHAREABLE",
    "Forwarding",
    "Owner",
    "SharedEventExecutor",
    "encoded_payload",
    "error_payload",
    "forward_with",
    "forwarding",
    "running",
    "shared_payload",
]

logger = logging.getLogger(__name__)

# A socket's ASGI send (Starlette's WebSocket.send: a coroutine function).
Send = Callable[[Message], Coroutine[Any, Any, None]]

# Payload types whose fields are plain data: executing them cannot depend on the caller.
SHAREABLE: tuple[type, ...] = (ChargeState,)
_REMEMBERED = 1024  # (document, variables) pairs with their latest shared result

_Key = tuple[int, str]
# (document, variables) -> (the operation node, the payload, the result), the latest.
_results: dict[_Key, tuple[OperationDefinitionNode, object, ExecutionResult]] = {}


class SharedEventExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor, sharing the result of a subscription event (above); the
    first event of an operation that can be forwarded makes it forwardable."""

    def execute_operation(self, serially: bool | None = None) -> Any:
        payload = self.root_value
        if not isinstance(payload, SHAREABLE):
            return super().execute_operation(serially)
        key = (id(self.operation), _variables_key(self.variable_values.coerced))
        result = self.shared_result(key)
        target = _FORWARDING.get()
        if target is not None and target.key is None and isinstance(result, ExecutionResult):
            target.executing(self, key)  # executed at once: its later events can be too
        return result

    def shared_result(self, key: _Key) -> Any:
        """The result for this payload, executed once per ``key`` (document, variables)."""
        payload = self.root_value
        known = _results.get(key)
        if known is not None and known[0] is self.operation and known[1] is payload:
            return known[2]
        result = super().execute_operation(False)
        if isinstance(result, ExecutionResult) and not result.errors:
            _remember(_results, key, (self.operation, payload, result))
        return result


def _remember(memory: dict[_Key, Any], key: _Key, entry: Any) -> None:
    """``entry`` under ``key``, the oldest of ``memory`` forgotten past its bound."""
    memory.pop(key, None)
    if len(memory) >= _REMEMBERED:
        del memory[next(iter(memory))]
    # The node and the payload are kept alive with it: their ids stay theirs.
    memory[key] = entry


def shared_payload(state: ChargeStateData) -> ChargeState:
    """The ``chargeState`` payload of ``state``, one for all its subscribers."""
    return shared(state, ChargeState.from_data)


# (document, variables) -> an executor of it, while a subscription forwarded holds it.
_executors: weakref.WeakValueDictionary[_Key, SharedEventExecutor] = weakref.WeakValueDictionary()
# (document, variables) -> (the operation node, the payload, its encoded payload), the latest.
_encoded: dict[_Key, tuple[OperationDefinitionNode, object, bytes]] = {}


def encoded_payload(target: Forwarding, payload: object, metrics: Metrics) -> bytes:
    """The rest of a message after its opening: the JSON of its payload (``{"data": …}``,
    with ``errors`` if any) for ``target``'s document and variables on ``payload``, and
    the message's closing brace, encoded once for all the subscribers that sent them, as
    Strawberry encodes a message."""
    executor, key = target.executor, target.key
    assert executor is not None
    assert key is not None
    known = _encoded.get(key)
    if known is not None and known[0] is executor.operation and known[1] is payload:
        return known[2]
    event = executor.build_per_event_executor(payload)
    assert isinstance(event, SharedEventExecutor)
    result = event.shared_result(key)
    body: dict[str, object] = {"data": result.data}
    if result.errors:
        body["errors"] = [format_error(error).formatted for error in result.errors]
    encoded = (json.dumps(body, separators=(",", ":")) + "}").encode()
    metrics.fanout_encoded.inc()
    if not result.errors:  # as results: one with errors is never shared
        _remember(_encoded, key, (executor.operation, payload, encoded))
    return encoded


class Owner(Protocol):
    """The protocol handler of a forwarded operation's socket (evlink.schema.view): it
    keeps the operation's id while the subscription lasts without its task, and sends
    what ends it."""

    def forwarded(self, target: Forwarding) -> bool:
        """``target``'s operation goes on without its task from now on; False if the
        operation is already over (stopped by its client: nothing is taken over)."""
        ...

    async def forwarded_ended(self, target: Forwarding, error: Exception) -> None:
        """``target``'s subscription was interrupted (and has let go of what it held): send
        ``error`` as the operation's result (:func:`error_payload`), then ``complete``,
        and free its id."""
        ...


_OPEN, _TAKEN, _ENDED = 0, 1, 2  # a Forwarding's states: its task runs it, it runs alone, over
# The subscription field whose events are forwarded (its payload is SHAREABLE's one type).
FORWARDED_FIELD = "chargeState"
# Tasks that end interrupted subscriptions (held here: the loop keeps only weak references).
_ending: set[asyncio.Task[None]] = set()


class Forwarding:
    """Where an operation's later events go without its task: the socket's ``send``
    (and, on uvicorn's websockets-sansio protocol, the socket itself: :class:`_Frames`)
    and each message's opening (its id and type), once its first event has been
    executed at once (:meth:`executing`).

    Once the follow hands it its event subscription and its vehicle watch (:meth:`take`)
    the operation's task and all it held end, and this is the subscription: it counts in
    the active-subscription gauge, and it ends on an interruption (its error, then
    ``complete``: :meth:`Owner.forwarded_ended`) or when its handler ends it (a client's
    ``complete`` or ``stop``, the socket's end: :meth:`end`), letting go of both.
    Slotted: one per open subscription."""

    __slots__ = (
        "_draining",
        "_pending",
        "_state",
        "_subscription",
        "_watch",
        "executor",
        "frames",
        "key",
        "metrics",
        "opening",
        "operation_id",
        "owner",
        "send",
    )

    def __init__(
        self,
        send: Send,
        server_send: object,
        operation_id: str,
        opening: str,
        metrics: Metrics,
        owner: Owner,
    ) -> None:
        self.send = send
        self.frames = _Frames.of(server_send)
        self.operation_id = operation_id
        self.opening = opening.encode()
        self.metrics = metrics
        self.owner = owner
        self.executor: SharedEventExecutor | None = None
        self.key: _Key | None = None
        self._state = _OPEN
        self._subscription: Subscription | None = None
        self._watch: AbstractAsyncContextManager[None] | None = None
        self._pending: list[bytes] | None = None  # messages the socket could not take yet
        self._draining: asyncio.Task[None] | None = None

    @classmethod
    def next_message(
        cls, send: Send, server_send: object, operation_id: str, metrics: Metrics, owner: Owner
    ) -> Forwarding:
        """graphql-transport-ws: ``{"id":…,"type":"next","payload":…}``."""
        opening = f'{{"id":{json.dumps(operation_id)},"type":"next","payload":'
        return cls(send, server_send, operation_id, opening, metrics, owner)

    @classmethod
    def data_message(
        cls, send: Send, server_send: object, operation_id: str, metrics: Metrics, owner: Owner
    ) -> Forwarding:
        """graphql-ws: ``{"type":"data","id":…,"payload":…}``."""
        opening = f'{{"type":"data","id":{json.dumps(operation_id)},"payload":'
        return cls(send, server_send, operation_id, opening, metrics, owner)

    @property
    def taken(self) -> bool:
        """Whether the subscription runs without its operation's task (or did, and ended)."""
        return self._state != _OPEN

    def executing(self, executor: SharedEventExecutor, key: _Key) -> None:
        """Its first event was executed at once by ``executor``: the later ones can be,
        by the executor of the first subscriber with the same ``key`` (one for all)."""
        known = _executors.get(key)
        if known is None or known.operation is not executor.operation:
            _executors[key] = known = executor
        self.executor, self.key = known, key

    def take(
        self,
        messages: Subscription,
        watch: AbstractAsyncContextManager[None],
        passing: Callable[[EventMessage], None],
    ) -> bool:
        """The follow's event subscription and vehicle watch are this one's from now on
        (it hands each message to ``passing``, which calls :meth:`state` with what is
        newer); the operation's task may end. False when the operation is over already
        (the follow then lets go of them itself)."""
        if self._state != _OPEN or not self.owner.forwarded(self):
            self._state = _ENDED
            self._stop()
            return False
        self._state = _TAKEN
        self._subscription, self._watch = messages, watch
        self.metrics.subscriptions.labels(field=FORWARDED_FIELD).inc()
        messages.forward(passing, self._interrupted)
        return True

    def state(self, state: ChargeStateData) -> None:
        """Send ``state`` now (the bus calls this as it delivers; it never raises)."""
        if self.executor is None:
            return  # closed
        try:
            encoded = encoded_payload(self, shared_payload(state), self.metrics)
        except Exception:  # not the socket's business: the others still get theirs
            logger.exception("subscriptions: an event could not be encoded")
            return
        self._write(self.opening + encoded)

    async def end(self) -> None:
        """The subscription ends without a message of its own (its client stopped it, its
        socket ended): nothing more is sent, and what it held is let go."""
        if self._state != _TAKEN:
            self._state = _ENDED
            self._stop()
            return
        self._state = _ENDED
        self._stop()
        await self._let_go()

    def _interrupted(self, error: Exception) -> None:
        """The bus says the subscription is interrupted (a revoked car, a broken stream):
        nothing more is sent but its error and ``complete``, by a task of its own."""
        if self._state != _TAKEN:
            return
        self._state = _ENDED
        self._stop()
        # A fresh context: the delivering task's own (another operation's) is not this one's.
        ending = asyncio.get_running_loop().create_task(
            self._end_interrupted(error), context=contextvars.Context()
        )
        _ending.add(ending)
        ending.add_done_callback(_ending.discard)

    async def _end_interrupted(self, error: Exception) -> None:
        try:
            await self._let_go()
        finally:
            await self.owner.forwarded_ended(self, error)

    def _stop(self) -> None:
        """Nothing more is sent (what waits is dropped)."""
        self._pending = None
        if self._draining is not None:
            self._draining.cancel()
        self.executor = None

    async def _let_go(self) -> None:
        """Let go of the event subscription, the watch and the gauge, as the follow and
        the operation's task would have at their end."""
        subscription, watch = self._subscription, self._watch
        self._subscription = self._watch = None
        try:
            if subscription is not None:
                subscription.close()
            if watch is not None:
                await watch.__aexit__(None, None, None)
        finally:
            self.metrics.subscriptions.labels(field=FORWARDED_FIELD).dec()

    def _write(self, message: bytes) -> None:
        if self._draining is not None:  # messages are waiting: this one after them
            pending = self._pending
            if pending is None:
                pending = self._pending = []
            if len(pending) >= MAILBOX:
                del pending[0]  # as the bus's mailbox: the oldest goes
            pending.append(message)
            return
        if self.frames is not None and self.frames.write(message):
            return
        try:
            waiting = _start(self.send(_text(message)))
        except Exception:  # the socket is closing: its handler ends the operation
            return
        if waiting is not None:
            self._draining = asyncio.ensure_future(self._drain(waiting))

    async def _drain(self, waiting: Coroutine[Any, Any, None]) -> None:
        """Finish the send that had to wait, then write what came meanwhile."""
        try:
            await waiting
            while self._pending:
                await self.send(_text(self._pending.pop(0)))
        except Exception:  # the socket is closing: its handler ends the operation
            self._pending = None
        finally:
            self._draining = None


def error_payload(error: Exception) -> dict[str, object]:
    """The payload of the result that ends an interrupted subscription, as Strawberry
    makes it of an error its stream raised: no data, and the error as evlink shows it
    (:func:`~evlink.schema.errors.format_error`)."""
    graphql_error = (
        error if isinstance(error, GraphQLError) else GraphQLError(str(error), original_error=error)
    )
    return {"data": None, "errors": [format_error(graphql_error).formatted]}


def _text(message: bytes) -> Message:
    return {"type": "websocket.send", "text": message.decode()}


class _Frames:
    """A socket served by uvicorn's websockets-sansio protocol, with no extension
    negotiated (no compression): a text message is written to its transport as one
    frame made here (RFC 6455: FIN, text, the length, the payload unmasked), which is
    what the ``websockets`` library would make, for a tenth of its work. Declines
    (False) whenever the protocol would not send at once: the close sent, the
    transport closing, its buffer full; the message then goes through the ASGI send."""

    __slots__ = ("_protocol",)

    # What write() reads of the protocol: a uvicorn whose protocol lacks any of it (its
    # internals may change) gets every message through the ASGI send.
    _READS = ("conn", "transport", "close_sent", "writable")

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    @classmethod
    def of(cls, server_send: object) -> _Frames | None:
        protocol = getattr(server_send, "__self__", None)
        if WebSocketsSansIOProtocol is None or not isinstance(protocol, WebSocketsSansIOProtocol):
            return None
        if not all(hasattr(protocol, name) for name in cls._READS):
            return None
        if getattr(protocol.conn, "extensions", True):  # compression (or unknown): not ours
            return None
        return cls(protocol)

    def write(self, message: bytes) -> bool:
        protocol = self._protocol
        transport = protocol.transport
        if protocol.close_sent or not protocol.writable.is_set() or transport.is_closing():
            return False
        transport.write(_frame_header(len(message)) + message)
        return True


def _frame_header(length: int) -> bytes:
    """A final text frame's header from the server (no mask), for ``length`` bytes."""
    if length < 126:
        return bytes((0x81, length))
    if length < 1 << 16:
        return b"\x81\x7e" + length.to_bytes(2, "big")
    return b"\x81\x7f" + length.to_bytes(8, "big")


def _start(coroutine: Coroutine[Any, Any, None]) -> Coroutine[Any, Any, None] | None:
    """Run ``coroutine`` until it first waits: None when it is done by then (a socket
    that takes the message at once, the usual case), else what finishes it, to be run
    in a task. Python 3.11 has no eager tasks; this is one, for a send."""
    try:
        waited = coroutine.send(None)
    except StopIteration:
        return None
    return _resume(coroutine, waited)


async def _resume(coroutine: Coroutine[Any, Any, None], waited: Any) -> None:
    """Run ``coroutine`` on from where it waits for ``waited`` (what it yielded: a future,
    or None for a bare yield), as a task would; closed if this is cancelled."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            if waited is None:
                await asyncio.sleep(0)
            else:
                waited._asyncio_future_blocking = False  # as a task does with what it awaits
                woken = loop.create_future()
                waited.add_done_callback(functools.partial(_settle, woken))
                await woken  # ``waited``'s own outcome is the coroutine's to see
            waited = coroutine.send(None)
    except StopIteration:
        return
    finally:
        coroutine.close()


def _settle(future: asyncio.Future[None], _: object) -> None:
    if not future.done():
        future.set_result(None)


# The operation's Forwarding, set by the protocol handler in the operation's task.
_FORWARDING: ContextVar[Forwarding | None] = ContextVar("evlink_forwarding", default=None)


def forward_with(target: Forwarding) -> None:
    """``target`` is where the running operation's events may be forwarded (called by
    the protocol handler at the start of the operation's task)."""
    _FORWARDING.set(target)


def forwarding() -> Forwarding | None:
    """The running operation's :class:`Forwarding`, once its events can be forwarded."""
    target = _FORWARDING.get()
    return target if target is not None and target.executor is not None else None


def running() -> Forwarding | None:
    """The :class:`Forwarding` of the operation whose task runs this (None elsewhere)."""
    return _FORWARDING.get()


def _variables_key(variables: dict[str, Any]) -> str:
    return json.dumps(variables, sort_keys=True, default=str)
