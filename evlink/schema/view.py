"""The GraphQL endpoint: HTTP and both websocket protocols, context from the request.

A browser's ``GET /graphql`` gets the self-hosted playground (:mod:`evlink.playground`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from json import JSONDecodeError
from typing import Any, cast

import strawberry
from cross_web import AsyncHTTPRequestAdapter, HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter, GraphQL
from strawberry.exceptions import MissingQueryError
from strawberry.http import GraphQLRequestData
from strawberry.http.async_base_view import AsyncWebSocketAdapter
from strawberry.http.exceptions import NonTextMessageReceived
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    CompleteMessage as TransportComplete,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ConnectionInitMessage,
    NextMessage,
    NextMessagePayload,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    CompleteMessage,
    ConnectionErrorMessage,
    DataMessage,
    DataMessagePayload,
    OperationMessage,
)
from strawberry.subscriptions.protocols.graphql_ws.types import (
    ConnectionInitMessage as LegacyConnectionInitMessage,
)
from strawberry.types import ExecutionResult, SubscriptionExecutionResult
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UnsetType

from evlink import jsonbody
from evlink.compat_rest.errors import error_response
from evlink.errors import DatabaseUnavailable, EvlinkError, RateLimited, code_for_status
from evlink.metrics import Metrics
from evlink.playground.page import playground_response
from evlink.ratelimit import QuotaExceeded
from evlink.requestheaders import client_address, header
from evlink.resolvers import vehicles
from evlink.resolvers.auth import Caller, authenticate_request
from evlink.schema import direct, fanout
from evlink.schema.context import Context
from evlink.schema.introspection import IntrospectionAnswers
from evlink.schema.limits import ValidDocuments
from evlink.schema.results import ResultCache, capturing, read_body
from evlink.schema.socket_messages import message_problem
from evlink.server import SERVER_SEND, Admission, OpenSocket, OpenSockets, serve_until_closed
from evlink.services import Services

__all__ = ["GraphQLView"]

# A websocket whose key cannot be checked because the database is unavailable closes with
# 1011 (internal error) and a reason, on both protocols, rather than failing in ASGI.
_UNAVAILABLE = 1011


class _Rejected(Exception):
    """A websocket refused at ``connection_init``: closed with ``code`` and the error's
    message as the reason (graphql-ws also gets ``connection_error`` with the payload)."""

    def __init__(self, error: EvlinkError) -> None:
        super().__init__(error.message)
        self.code = _REJECTION_CODES.get(error.code, 4403)
        self.reason = error.message
        self.payload: dict[str, object] = {"message": error.message, "code": error.code}


# 4401: the key (get a new one); 4429: too many sockets or refused keys (wait); 4403 else.
_REJECTION_CODES = {"UNAUTHENTICATED": 4401, "RATE_LIMITED": 4429}


class _Forwarder:
    """What both protocols' handlers do alike with forwarded subscriptions
    (schema.fanout's ``Owner``): each one's :class:`~evlink.schema.fanout.Forwarding` in
    ``_forwarded`` by its operation id, and its end on an interruption, once, unless its
    client or the socket's end let it go first (then ``cleanup_operation`` has it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._forwarded: dict[str, fanout.Forwarding] = {}

    async def forwarded_ended(self, target: fanout.Forwarding, error: Exception) -> None:
        operation_id = target.operation_id
        if self._forwarded.get(operation_id) is not target:
            return  # its client's complete or stop, or the socket's end, came first
        del self._forwarded[operation_id]
        await self._send_ended(operation_id, error)

    async def _send_ended(self, operation_id: str, error: Exception) -> None:
        """The protocol's messages for ``error`` and ``complete``, as the operation's
        task would send them, and its id let go."""
        raise NotImplementedError


class _TransportWSHandler(_Forwarder, BaseGraphQLTransportWSHandler[Context, None]):
    """Strawberry's graphql-transport-ws, with forwarded subscriptions (schema.fanout).

    A forwarded subscription runs without its operation's task: the operation stays in
    ``operations`` (its id taken, counted against ``EVLINK_WS_MAX_OPERATIONS``) with no
    task, marked ``completed`` so that the task sends nothing at its end, and its
    :class:`~evlink.schema.fanout.Forwarding` in ``_forwarded``. What the task would do at
    the subscription's end is done here: an interruption's error then ``complete``
    (:meth:`forwarded_ended`); a client's ``complete`` and the socket's end let it go
    without a message (:meth:`cleanup_operation`), as Strawberry's cancelled task does."""

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        """Strawberry's, with the operation's later events forwarded (schema.fanout)."""
        metrics = self.context.services.metrics
        target = fanout.Forwarding.next_message(
            *_sends_of(self.websocket), operation.id, metrics, self
        )
        fanout.forward_with(target)
        try:
            await super().run_operation(operation)
        finally:
            if self._forwarded.get(operation.id) is target:
                operation.task = None  # over: the subscription goes on without it

    def forwarded(self, target: fanout.Forwarding) -> bool:
        operation = self.operations.get(target.operation_id)
        if operation is None or operation.completed:
            return False  # the client's complete came first
        operation.completed = True  # its task sends no complete at its end
        self._forwarded[target.operation_id] = target
        return True

    async def _send_ended(self, operation_id: str, error: Exception) -> None:
        try:
            with contextlib.suppress(Exception):  # the socket is closing
                payload = cast("NextMessagePayload", fanout.error_payload(error))
                await self.send_message(NextMessage(id=operation_id, type="next", payload=payload))
        finally:
            self.operations.pop(operation_id, None)  # its id is free before complete
        with contextlib.suppress(Exception):
            await self.send_message(TransportComplete(id=operation_id, type="complete"))

    async def cleanup_operation(self, operation_id: str) -> None:
        """A client's ``complete`` or the socket's end: Strawberry's, and a forwarded
        subscription let go."""
        target = self._forwarded.pop(operation_id, None)
        operation = self.operations.get(operation_id)
        if operation is not None and operation.task is None:  # forwarded, its task over
            del self.operations[operation_id]
        else:
            await super().cleanup_operation(operation_id)  # its task ends (cancelled)
        if target is not None:
            await target.end()

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        try:
            await super().handle_connection_init(message)
        except DatabaseUnavailable as unavailable:
            await self.websocket.close(_UNAVAILABLE, unavailable.message)
        except _Rejected as rejected:
            await self.websocket.close(rejected.code, rejected.reason)


class _LegacyWSHandler(_Forwarder, BaseGraphQLWSHandler[Context, None]):
    """Strawberry's graphql-ws, with forwarded subscriptions (schema.fanout).

    A forwarded subscription runs without its operation's task: its id stays in ``tasks``
    (taken, counted against ``EVLINK_WS_MAX_OPERATIONS``, ended by a ``start`` of the same
    id) with a future that is done in place of the task, which sends no ``complete`` at
    its end; its :class:`~evlink.schema.fanout.Forwarding` is in ``_forwarded``. What the
    task would do at the subscription's end is done here: an interruption's error then
    ``complete`` (:meth:`forwarded_ended`); a client's ``stop``, a ``start`` of the same
    id and the socket's end let it go and send ``complete`` (:meth:`cleanup_operation`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._over: asyncio.Future[None] | None = None  # in ``tasks`` for forwarded ones
        self._init_received = False

    async def handle_async_results(
        self,
        operation_id: str,
        query: str,
        operation_name: str | None,
        variables: dict[str, object] | None,
    ) -> None:
        """Strawberry's, with the operation's later events forwarded (schema.fanout)."""
        metrics = self.context.services.metrics
        target = fanout.Forwarding.data_message(
            *_sends_of(self.websocket), operation_id, metrics, self
        )
        fanout.forward_with(target)
        try:
            await super().handle_async_results(operation_id, query, operation_name, variables)
        finally:
            if self._forwarded.get(operation_id) is target:  # Strawberry forgot its id
                self.tasks[operation_id] = self._forwarded_task()

    def _forwarded_task(self) -> asyncio.Task[None]:
        """What stands in ``tasks`` for a forwarded subscription: done, nothing to cancel."""
        if self._over is None:
            self._over = asyncio.get_running_loop().create_future()
            self._over.set_result(None)
        return self._over  # type: ignore[return-value]

    def forwarded(self, target: fanout.Forwarding) -> bool:
        if self.tasks.get(target.operation_id) is not asyncio.current_task():
            return False  # stopped, or replaced by a start of the same id
        self._forwarded[target.operation_id] = target
        return True

    async def send_message(self, message: OperationMessage) -> None:
        """Strawberry's; a forwarded operation's task sends no ``complete`` at its end."""
        target = fanout.running()
        if (
            message["type"] == "complete"
            and target is not None
            and target.owner is self
            and target.taken
            and target.operation_id == message.get("id")
        ):
            return
        await super().send_message(message)

    async def _send_ended(self, operation_id: str, error: Exception) -> None:
        try:
            with contextlib.suppress(Exception):  # the socket is closing
                payload = cast("DataMessagePayload", fanout.error_payload(error))
                await self.send_message(DataMessage(type="data", id=operation_id, payload=payload))
                await self.send_message(CompleteMessage(type="complete", id=operation_id))
        finally:
            if self.tasks.get(operation_id) is self._over:
                del self.tasks[operation_id]

    async def cleanup_operation(self, operation_id: str) -> None:
        """A client's ``stop``, a ``start`` of the same id or the socket's end:
        Strawberry's, and a forwarded subscription let go, then ``complete`` as Strawberry's
        cancelled task sends it."""
        target = self._forwarded.pop(operation_id, None)
        await super().cleanup_operation(operation_id)
        if target is not None:
            await target.end()
            with contextlib.suppress(Exception):  # the socket is closing
                await self.send_message(CompleteMessage(type="complete", id=operation_id))

    async def handle_connection_init(self, message: LegacyConnectionInitMessage) -> None:
        # One per socket, as graphql-transport-ws has it: Strawberry's graphql-ws acks
        # every one and starts another keep-alive task for each, without limit.
        if self._init_received:
            await self.websocket.close(4429, "Too many initialisation requests")
            return
        self._init_received = True
        try:
            await super().handle_connection_init(message)
        except DatabaseUnavailable as unavailable:
            await self.websocket.close(_UNAVAILABLE, unavailable.message)
        except _Rejected as rejected:
            await self.send_message(
                ConnectionErrorMessage(type="connection_error", payload=rejected.payload)
            )
            await self.websocket.close(rejected.code, rejected.reason)


def _sends_of(websocket: AsyncWebSocketAdapter) -> tuple[fanout.Send, object]:
    """The socket's ASGI send through Starlette's checks (nothing after a close), and
    the server's own (evlink.edge), for the frames written directly (schema.fanout)."""
    assert isinstance(websocket, ASGIWebSocketAdapter)
    return websocket.ws.send, websocket.ws.scope.get(SERVER_SEND)


class _WebSocketAdapter(ASGIWebSocketAdapter):
    """Strawberry's, except that a message that is not JSON (or JSON evlink refuses:
    :mod:`evlink.jsonbody`), or of a shape its handlers cannot read
    (:mod:`evlink.schema.socket_messages`), closes the socket with 4400 on both protocols
    (graphql-ws would skip the first and fail on the second)."""

    async def iter_json(
        self, *, ignore_parsing_errors: bool = False
    ) -> AsyncGenerator[object, None]:
        try:
            while self.ws.application_state != WebSocketState.DISCONNECTED:
                try:
                    message = self.view.decode_json(await self.ws.receive_text())
                except jsonbody.Refused as refused:
                    await self.close(4400, refused.msg)
                    return
                except JSONDecodeError:  # graphql-ws used to skip these: both protocols close
                    await self.close(4400, "WebSocket message must be valid JSON")
                    return
                problem = message_problem(message)
                if problem is not None:
                    await self.close(4400, problem)
                    return
                yield message
        except KeyError as exc:  # a binary message
            raise NonTextMessageReceived from exc
        except WebSocketDisconnect:
            pass


class GraphQLView(GraphQL[Context, None]):
    websocket_adapter_class = _WebSocketAdapter
    graphql_transport_ws_handler_class = _TransportWSHandler
    graphql_ws_handler_class = _LegacyWSHandler

    def __init__(self, schema: strawberry.Schema, **kwargs: Any) -> None:
        super().__init__(schema, **kwargs)
        self.results = ResultCache(schema._schema)
        self.introspection = IntrospectionAnswers()
        self.plans = direct.Plans()
        # Known queries skip Strawberry's operation (schema.direct) only while nothing of
        # it acts per field: no extension with a resolve hook, no schema directive.
        self.direct = isinstance(getattr(schema, "documents", None), ValidDocuments) and not (
            schema.directives or any(e._implements_resolve() for e in schema.get_extensions())
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            await self._post(scope, receive, send)
            return
        if scope["type"] == "http":
            if scope["method"] == "HEAD":
                # Answered as GET (Starlette's route allows HEAD with GET; Strawberry
                # refused it 405 without an Allow); the server writes no body to HEAD.
                scope = {**scope, "method": "GET"}
            await self._http(scope, receive, send)
            return
        if scope["type"] != "websocket":
            await super().__call__(scope, receive, send)
            return
        await self._websocket(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A GraphQL websocket, held in :class:`OpenSockets` until it ends or must close
        (shutdown, a revoked key or a changed tier: evlink.revocation). Refused at the
        handshake (429) while its address has ``EVLINK_WS_PENDING_PER_ADDRESS`` sockets
        awaiting ``connection_init``; closed with 4408 when its own does not come in time."""
        app = scope["app"]
        open_sockets: OpenSockets = app.state.open_sockets
        settings = app.state.services.settings
        socket = open_sockets.open(
            client_address(HTTPConnection(scope)), settings.ws_pending_per_address
        )
        if socket is None:
            await _refuse_handshake(scope, receive, send, settings.ws_init_timeout)
            return
        metrics: Metrics = app.state.metrics
        metrics.websockets.inc()
        scope[_SOCKET] = socket
        # Strawberry times connection_init out on graphql-transport-ws only.
        overdue = asyncio.get_running_loop().call_later(
            settings.ws_init_timeout, _close_if_pending, socket
        )
        try:
            async with open_sockets.track(socket):
                handler = asyncio.ensure_future(super().__call__(scope, receive, send))
                await serve_until_closed(handler, socket, send)
        finally:
            overdue.cancel()
            metrics.websockets.dec()

    async def _post(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A POST: answered from the read cache when it holds the answer (schema.results)."""
        services: Services = scope["app"].state.services
        if not services.cache.enabled:
            await self._http(scope, receive, send)
            return
        body, receive = await read_body(receive)
        caller = await _authenticate(scope, services)
        found = await self.results.answer(scope, body, services.cache, services.limiter, caller)
        if isinstance(found, Response):
            await found(scope, receive, send)
            return
        if found is None:
            await self._http(scope, receive, send)
            return
        scope[_PENDING] = found
        send, chunks, status = capturing(send)
        await self._http(scope, receive, send)
        if status:
            self.results.store(services.cache, found, status[0], b"".join(chunks))

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Strawberry's HTTP handling, with its refusals of a malformed request (no query,
        a body that is not JSON, a batch, an unsupported content type) answered as JSON
        in the GraphQL error shape rather than Strawberry's plain text. A query of a known
        document is executed directly (:mod:`evlink.schema.direct`)."""
        try:
            response: Response | None = None
            if self.direct and scope["method"] == "POST" and direct.may_be_known(scope, self):
                body, receive = await read_body(receive)
                response = await self._direct(scope, body)
            if response is None:
                response = await self.run(Request(scope=scope, receive=receive))
        except HTTPException as refused:
            response = request_error(
                refused.status_code, _REASONS.get(refused.reason, refused.reason)
            )
        except DatabaseUnavailable as unavailable:  # 503 with Retry-After, in GraphQL's shape
            response = request_error(
                unavailable.status,
                unavailable.message,
                code=unavailable.code,
                headers=unavailable.headers(),
            )
        await response(scope, receive, send)

    async def _direct(self, scope: Scope, body: bytes) -> Response | None:
        """The answer to a known query (:mod:`evlink.schema.direct`), or None for
        Strawberry. The steps are the ones Strawberry's way takes for it, in its order:
        the context (the key, authenticated once: a refused or missing one goes
        Strawberry's way, which adopts the outcome), the charge
        (:class:`~evlink.schema.quotas.OperationQuotas`), the execution, the view's
        checks of the result (:meth:`_finish`), the JSON answer."""
        query = direct.known_query(scope, body, self, getattr(self.schema, "documents", None))
        if query is None:
            return None
        along: vehicles.StatusRead | None = None
        if _AUTHENTICATED not in scope:
            services: Services = scope["app"].state.services
            asked = direct.vehicle_asked(self.plans.plan(self.schema, query), query)
            if asked is not None:  # the key's statement reads the vehicle too
                along = vehicles.StatusRead(services, asked)
            await _authenticate(scope, services, along)
        if not isinstance(scope.get(_AUTHENTICATED), Caller):
            return None
        request = Request(scope)
        context = await self.get_context(request, cast(Response, None))  # it takes no response
        context.along = along
        try:
            await context.charge(reads=True)
        except QuotaExceeded as refused:
            raise refused from None  # the exception handlers answer 429, as _finish would
        except Exception as failed:
            result = direct.refused_before_execution(self.schema, failed)
        else:
            result = await direct.answer_known(self.schema, self.plans, query, context)
        await self._finish(result, context, query.text)
        # Strawberry's create_response, without a sub-response (no resolver sets one).
        data = await self.process_result(request, result)
        return Response(self.encode_json(data), status_code=200, media_type="application/json")

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        services: Services = request.app.state.services
        context = Context(
            services=services,
            authorization=request.headers.get("authorization"),
            open_socket=request.scope.get(_SOCKET),
            client=client_address(request),
            websocket=isinstance(request, WebSocket),
            pending=request.scope.get(_PENDING),
        )
        authenticated = request.scope.get(_AUTHENTICATED)
        if authenticated is not None:
            context.adopt(authenticated)  # by _post, for the answer cache
        elif not context.websocket and context.authorization:
            # Up front, so the operation can be charged (429) before it runs.
            await context.authenticate_now()
        return context

    async def execute_operation(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        request_data: GraphQLRequestData | list[GraphQLRequestData],
        context: Context,
        root_value: None,
        sub_response: Response,
    ) -> ExecutionResult | list[ExecutionResult] | SubscriptionExecutionResult:
        """Run the operation; answer 429 when :class:`~evlink.schema.quotas.OperationQuotas`
        refused it before it executed."""
        result = await super().execute_operation(
            request, request_adapter, request_data, context, root_value, sub_response
        )
        if context.refusal is not None:
            raise context.refusal  # the exception handlers answer 429 with Retry-After
        if isinstance(result, ExecutionResult):
            query = request_data.query if isinstance(request_data, GraphQLRequestData) else None
            await self._finish(result, context, query)
        elif context.authenticated and not context.charged:
            await context.charge(reads=False)  # as _finish does
        return result

    async def _finish(self, result: ExecutionResult, context: Context, query: str | None) -> None:
        """The view's checks of an HTTP operation's result: a failure on the database is
        a 503; an operation that never executed is charged its burst; a clean answer may
        go to the answer cache."""
        if _failed_on_database(result):
            raise DatabaseUnavailable()  # the whole answer is 503, not data with holes
        if context.authenticated and not context.charged:
            await context.charge(reads=False)  # it never executed (invalid): burst only
        pending = context.pending
        if (
            pending is not None
            and not result.errors
            and query is not None
            and context.authenticated
        ):
            pending.cacheable = self.results.document_cacheable(query)

    async def execute_single(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: Response,
        context: Context,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        """Strawberry's, less subscriptions: over HTTP it would run one as a query and fail
        inside the resolver (a 500). A subscription is refused (400) before it runs."""
        allowed = OperationType.from_http(request_adapter.method) - {OperationType.SUBSCRIPTION}
        # Introspection without a key: its answer is the schema's, kept once made.
        keyless = self.introspection.key(request_data) if context.bearer() is None else None
        if keyless is not None:
            answer = self.introspection.get(keyless)
            if answer is not None:
                self.introspection.served += 1
                return answer
        try:
            result = await self.schema.execute(
                request_data.query,
                root_value=root_value,
                variable_values=request_data.variables,
                context_value=context,
                operation_name=request_data.operation_name,
                allowed_operation_types=allowed,
                operation_extensions=request_data.extensions,
            )
        except CannotGetOperationTypeError as refused:
            raise HTTPException(400, refused.as_http_error_reason()) from None
        except InvalidOperationTypeError as refused:
            if refused.operation_type is OperationType.SUBSCRIPTION:
                raise HTTPException(400, SUBSCRIPTIONS_OVER_WEBSOCKETS) from None
            raise HTTPException(400, refused.as_http_error_reason(request_adapter.method)) from None
        except MissingQueryError:
            raise HTTPException(400, "No GraphQL query found in the request") from None
        if keyless is not None:
            self.introspection.put(keyless, result)
        return result

    def decode_json(self, data: str | bytes) -> object:
        """HTTP bodies, ``variables`` in a query string and websocket messages."""
        return jsonbody.loads(data)

    def parse_json(self, data: str | bytes) -> Any:
        """Strawberry parses the body (bytes) and the query string's ``variables`` and
        ``extensions`` (text) here. A body must be an object (or a batch's array, refused
        later): Strawberry fails on anything else (a 500)."""
        try:
            value = self.decode_json(data)
        except jsonbody.Refused as refused:
            raise HTTPException(400, refused.msg) from None
        except JSONDecodeError:
            raise HTTPException(400, "Unable to parse request body as JSON") from None
        if isinstance(data, bytes) and not isinstance(value, dict | list):
            raise HTTPException(400, "The body must be a JSON object")
        return value

    async def render_graphql_ide(self, request: Request) -> Response:
        """Strawberry's IDE page loads GraphiQL from a CDN: serve evlink's own instead."""
        return playground_response(request)

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, Any] | None:
        """Refuse a bad key before any operation runs (close 4401; graphql-ws also gets
        connection_error), or a socket past the per-user cap (4429); admit the socket for
        the key's user and the tier it runs under."""
        services = context.services
        socket = context.open_socket
        if socket is not None:
            services.open_sockets.initialised(socket)
        try:
            caller = await context.identify()
        except DatabaseUnavailable:
            raise  # not the client's fault: the socket closes with 1011 (_UNAVAILABLE)
        except EvlinkError as exc:
            raise _Rejected(exc) from None
        if socket is not None and socket.admission is None:
            cap = services.settings.ws_max_connections_per_user
            admission = Admission(caller.user.id, caller.key_hash, caller.user.tier.value)
            if not services.open_sockets.admit(socket, admission, cap):
                raise _Rejected(RateLimited(f"At most {cap} websockets per user"))
        return None


def request_error(
    status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """``{"errors": [{"message", "extensions": {"code"}}]}`` for a request GraphQL refused
    before any operation ran, or that failed on the database (GraphQL over HTTP: a
    request error has no ``data``)."""
    code = code or code_for_status(status)
    return JSONResponse(
        {"errors": [{"message": message, "extensions": {"code": code}}]},
        status_code=status,
        headers=headers,
    )


def _failed_on_database(result: ExecutionResult) -> bool:
    return any(
        (error.extensions or {}).get("code") == DatabaseUnavailable.code
        for error in result.errors or ()
    )


SUBSCRIPTIONS_OVER_WEBSOCKETS = (
    "Subscriptions are served over websockets only: open a websocket to /graphql "
    "with the graphql-transport-ws (or legacy graphql-ws) subprotocol"
)
# Strawberry's words for a refused request, where they do not say what to do.
_REASONS = {
    "Unsupported content type": (
        "Unsupported content type: send the body as application/json "
        "(or the query in the URL of a GET)"
    ),
}
_SOCKET = "evlink.open_socket"
_PENDING = "evlink.pending_result"
_AUTHENTICATED = "evlink.authenticated"
_INIT_TIMEOUT = 4408  # as Strawberry closes a late graphql-transport-ws


async def _authenticate(
    scope: Scope, services: Services, along: vehicles.StatusRead | None = None
) -> Caller | None:
    """The caller of a POST with ``Authorization``, for the answer cache or a known
    query; the outcome, a refusal included, is kept in the scope for the context
    (:meth:`Context.adopt`), so the request is authenticated (and a refused key counted)
    once. ``along``: a known query's ``vehicle(id:)``, read in the key's statement."""
    authorization = header(scope, b"authorization")
    if authorization is None:
        return None
    try:
        caller = await authenticate_request(
            services,
            authorization,
            client_address(HTTPConnection(scope)),
            along.lookup if along is not None else None,
        )
    except EvlinkError as refused:
        scope[_AUTHENTICATED] = refused
        return None
    scope[_AUTHENTICATED] = caller
    return caller


def _close_if_pending(socket: OpenSocket) -> None:
    if socket.pending:
        socket.close(_INIT_TIMEOUT, "Connection initialisation timeout")


async def _refuse_handshake(scope: Scope, receive: Receive, send: Send, retry_after: float) -> None:
    """The REST 429 (``Retry-After``, ``RATE_LIMITED``) as the handshake's answer."""
    websocket = WebSocket(scope, receive, send)
    await websocket.receive()  # websocket.connect
    refusal = RateLimited(
        "Too many websockets awaiting connection_init from this address", retry_after=retry_after
    )
    await websocket.send_denial_response(error_response(refusal))
