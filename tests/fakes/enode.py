"""A fake Enode: its OAuth server and vehicle API as one Starlette app, for tests.

:class:`FakeEnode` keeps vehicles, charge actions and one webhook subscription
in memory and answers like Enode's API version 2024-10-01
(``/work/shared/contract/enode.md``): bearer tokens from ``POST /oauth2/token``,
paginated vehicle lists, START/STOP actions with their PENDING lifecycle and
rules (400, 422, same-kind reuse, other-kind CONFLICT), errors as
``application/problem+json``, and signed webhook deliveries.

Tests drive it from the outside: they build state (:meth:`FakeEnode.add_vehicle`,
:meth:`FakeEnode.update_vehicle`), resolve actions when they choose
(:meth:`FakeEnode.resolve_action`), and script faults (:meth:`FakeEnode.fail_next`,
:meth:`FakeEnode.hang_next`, :meth:`FakeEnode.expire_tokens`, ``latency``), and may
switch its own charging rules off (``checks_rules = False``: every START and STOP is
taken), so that only evlink's checks can refuse.
:meth:`FakeEnode.serve` runs it with uvicorn on a free port of 127.0.0.1 from
a socket that already listens, so a client may connect at once.

Fault order for an API request: a scripted hang, then a scripted failure, then
authentication (401), then the ``Enode-Version`` header (400), then the route.
``latency`` delays every API answer, after the request has been processed: a
client that times out on a slow POST has still created its action, as on the
real service.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import hashlib
import hmac
import json
import logging
import secrets
import socket
import string
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "API_VERSION",
    "PROBLEM_MEDIA_TYPE",
    "FakeEnode",
    "enode_signature",
    "format_time",
]

logger = logging.getLogger(__name__)

API_VERSION = "2024-10-01"
PROBLEM_BASE = "https://developers.enode.io/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"
SHUTDOWN_TIMEOUT = 10.0  # seconds serve() waits for uvicorn and deliveries on exit
DELIVERY_TIMEOUT = 10.0  # seconds a webhook POST may take
MAX_EVENTS_PER_DELIVERY = 100

CHARGE_STATE_FIELDS = (
    "batteryLevel",
    "range",
    "isPluggedIn",
    "isCharging",
    "isFullyCharged",
    "batteryCapacity",
    "chargeLimit",
    "chargeRate",
    "chargeTimeRemaining",
    "lastUpdated",
    "maxCurrent",
    "powerDeliveryState",
    "pluggedInChargerId",
)
CAPABILITIES = (
    "information",
    "chargeState",
    "location",
    "odometer",
    "setMaxCurrent",
    "startCharging",
    "stopCharging",
    "smartCharging",
)
ACTION_KINDS = ("START", "STOP")
RESOLVED_STATES = ("CONFIRMED", "FAILED", "CANCELLED")
# What a CONFIRMED action does to the vehicle's charge state.
CONFIRMED_EFFECT: dict[str, dict[str, Any]] = {
    "START": {"isCharging": True, "powerDeliveryState": "PLUGGED_IN:CHARGING"},
    "STOP": {"isCharging": False, "powerDeliveryState": "PLUGGED_IN:STOPPED"},
}
CAPABILITY_OF_KIND = {"START": "startCharging", "STOP": "stopCharging"}
DEFAULT_FAILURE = {"FAILED": "NO_RESPONSE", "CANCELLED": "REQUESTED_CANCELLATION"}

Endpoint = Callable[[Request], Awaitable[Response]]


def format_time(value: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and ``Z``, as Enode writes timestamps."""
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def enode_signature(secret: str, body: bytes) -> str:
    """The ``x-enode-signature`` header of a delivery: HMAC-SHA1 of the raw body."""
    digest = hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
    return f"sha1={digest}"


class Problem(Exception):
    """An API failure, answered as ``application/problem+json``."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:  # a status http.HTTPStatus does not list, from fail_next
            phrase = "Error"
        self.status = status
        self.slug = slug or phrase.lower().replace(" ", "-")
        self.title = phrase
        self.detail = detail
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"type": PROBLEM_BASE + self.slug, "title": self.title, "detail": self.detail}
        return JSONResponse(
            body, status_code=self.status, headers=self.headers, media_type=PROBLEM_MEDIA_TYPE
        )


class _RecordRequests:
    """ASGI middleware appending (method, path) of every HTTP request to the fake."""

    def __init__(self, app: ASGIApp, fake: FakeEnode) -> None:
        self.app = app
        self.fake = fake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.fake.requests.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)


def listening_socket() -> socket.socket:
    """A socket listening on a free port of 127.0.0.1, for uvicorn to serve on (the fake
    and tests.conftest's servers)."""
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only
    # when the listening socket says TCP; with proto 0, Nagle adds ~40 ms per answer.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def _random_vin() -> str:
    alphabet = "ABCDEFGHJKLMNPRSTUVWXYZ" + string.digits  # VINs have no I, O or Q
    return "".join(secrets.choice(alphabet) for _ in range(17))


class FakeEnode:
    """Enode's OAuth server and vehicle API, in memory, with scriptable faults.

    State is plain JSON as Enode shapes it: ``vehicles`` and ``actions`` by id,
    ``webhook`` once a subscription is registered. Objects returned by the
    builders are the stored ones, so a test may edit them in place (e.g. a
    capability); every answer and event carries a copy taken at that moment.
    """

    def __init__(
        self,
        client_id: str = "client-id",
        client_secret: str = "client-secret",  # noqa: S107 (a fake's test credential)
        token_lifetime: int = 3599,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime

        self.vehicles: dict[str, dict[str, Any]] = {}
        self.actions: dict[str, dict[str, Any]] = {}
        self.webhook: dict[str, Any] | None = None
        self.links: dict[str, dict[str, Any]] = {}  # link token -> the link request
        self.requests: list[tuple[str, str]] = []
        self.token_requests = 0

        self.latency = 0.0
        self.never_confirm = False  # a flag for tests: actions are left PENDING
        # False: START/STOP take any car (only the action's kind is checked), so that
        # only evlink's own checks can refuse a request (tests/resolvers/test_rules_*).
        self.checks_rules = True
        self.webhooks_enabled = True
        # Every webhook POST made: {"id", "events", "statuses"}; failed background ones too.
        self.deliveries: list[dict[str, Any]] = []
        self.delivery_errors: list[BaseException] = []
        self.base_url: str | None = None

        self._tokens: dict[str, float] = {}  # live token -> monotonic expiry
        self._failures: deque[tuple[int, int | None]] = deque()
        self._hangs: deque[bool] = deque()  # one entry per request to hang: processed first?
        self._release = asyncio.Event()
        self._hanging_changed = asyncio.Event()
        self.hanging = 0  # requests hanging right now
        self._closing = False
        self._order: dict[str, int] = {}  # vehicle id -> position in lists (cursor key)
        self._next_order = 0
        self._last_time: datetime | None = None
        self._updated_fields: dict[str, list[str]] = {}
        self._background: set[asyncio.Task[None]] = set()

        api = self._api
        self.app = Starlette(
            routes=[
                Route("/oauth2/token", self._token, methods=["POST"]),
                Route("/vehicles", api(self._list_vehicles), methods=["GET"]),
                Route("/vehicles/actions/{actionId}", api(self._get_action), methods=["GET"]),
                Route(
                    "/vehicles/actions/{actionId}/cancel",
                    api(self._cancel_action),
                    methods=["POST"],
                ),
                Route("/vehicles/{vehicleId}", api(self._get_vehicle), methods=["GET"]),
                Route("/vehicles/{vehicleId}/charging", api(self._charging), methods=["POST"]),
                Route("/users/{userId}/vehicles", api(self._user_vehicles), methods=["GET"]),
                Route("/users/{userId}/link", api(self._link), methods=["POST"]),
                Route("/webhooks", api(self._list_webhooks), methods=["GET"]),
                Route("/webhooks", api(self._create_webhook), methods=["POST"]),
                Route("/webhooks/{webhookId}", api(self._delete_webhook), methods=["DELETE"]),
                Route("/link/{linkToken}", self._link_page, methods=["GET"]),
            ],
            middleware=[Middleware(_RecordRequests, fake=self)],
            exception_handlers={HTTPException: self._http_exception},
        )

    # ----------------------------------------------------------------- state

    def now(self) -> str:
        """The current time as Enode writes it, strictly later than any time given before.

        Timestamps have millisecond resolution; two changes in the same
        millisecond would look simultaneous to a client that keeps the newest.
        """
        current = datetime.now(UTC)
        current = current.replace(microsecond=current.microsecond // 1000 * 1000)
        if self._last_time is not None and current <= self._last_time:
            current = self._last_time + timedelta(milliseconds=1)
        self._last_time = current
        return format_time(current)

    def add_vehicle(
        self, user_id: str = "user-1", *, vehicle_id: str | None = None, **charge_state: Any
    ) -> dict[str, Any]:
        """A full vehicle object of ``user_id`` (contract example), charge state overridden.

        Unless given, ``isPluggedIn`` follows ``isCharging`` and
        ``powerDeliveryState`` follows both (CHARGING, STOPPED or UNPLUGGED).
        """
        _check_charge_fields(charge_state)
        now = self.now()
        vehicle_id = vehicle_id or str(uuid.uuid4())
        if vehicle_id in self.vehicles:
            raise ValueError(f"vehicle {vehicle_id} exists already")
        state: dict[str, Any] = {
            "batteryLevel": 18,
            "range": 98.28,
            "isPluggedIn": False,
            "isCharging": False,
            "isFullyCharged": False,
            "batteryCapacity": 91,
            "chargeLimit": None,
            "chargeRate": None,
            "chargeTimeRemaining": None,
            "lastUpdated": now,
            "maxCurrent": None,
            "powerDeliveryState": "UNPLUGGED",
            "pluggedInChargerId": None,
        }
        state.update(charge_state)
        if "isPluggedIn" not in charge_state and state["isCharging"]:
            state["isPluggedIn"] = True
        if "powerDeliveryState" not in charge_state:
            state["powerDeliveryState"] = (
                "PLUGGED_IN:CHARGING"
                if state["isCharging"]
                else "PLUGGED_IN:STOPPED"
                if state["isPluggedIn"]
                else "UNPLUGGED"
            )
        vehicle: dict[str, Any] = {
            "id": vehicle_id,
            "userId": user_id,
            "vendor": "XPENG",
            "lastSeen": now,
            "isReachable": True,
            "information": {
                "vin": _random_vin(),
                "brand": "XPENG",
                "model": "G6",
                "year": 2024,
                "displayName": "XPENG G6",
            },
            "chargeState": state,
            "smartChargingPolicy": {"isEnabled": False, "deadline": None, "minimumChargeLimit": 0},
            "location": {"id": None, "longitude": 18.07, "latitude": 59.33, "lastUpdated": now},
            "odometer": {"distance": 12345.6, "lastUpdated": now},
            "capabilities": {
                name: {"isCapable": name != "setMaxCurrent", "interventionIds": []}
                for name in CAPABILITIES
            },
            "scopes": ["vehicle:read:data", "vehicle:read:location", "vehicle:control:charging"],
        }
        self.vehicles[vehicle_id] = vehicle
        self._position(vehicle_id)
        return vehicle

    def update_vehicle(self, vehicle_id: str, **charge_state: Any) -> dict[str, Any]:
        """Change charge state fields as given; bump ``lastUpdated`` and ``lastSeen``."""
        _check_charge_fields(charge_state)
        vehicle = self.vehicles[vehicle_id]
        self._change_charge_state(vehicle, charge_state)
        return vehicle

    def remove_vehicle(self, vehicle_id: str) -> dict[str, Any]:
        """Forget a vehicle (as when a user unlinks it); returns the last object."""
        self._order.pop(vehicle_id, None)
        self._updated_fields.pop(vehicle_id, None)
        return self.vehicles.pop(vehicle_id)

    def set_smart_charging(self, vehicle_id: str, enabled: bool) -> None:
        """Put the vehicle under (or out of) smart-charging control: START/STOP answer 422."""
        vehicle = self.vehicles[vehicle_id]
        vehicle["smartChargingPolicy"]["isEnabled"] = enabled
        vehicle["lastSeen"] = self.now()

    def pending_actions(self, vehicle_id: str | None = None) -> list[dict[str, Any]]:
        """The PENDING actions, oldest first, of one vehicle or all."""
        return [
            action
            for action in self.actions.values()
            if action["state"] == "PENDING"
            and (vehicle_id is None or action["targetId"] == vehicle_id)
        ]

    # --------------------------------------------------------------- actions

    def resolve_action(
        self,
        action_id: str,
        state: str = "CONFIRMED",
        failure_type: str | None = None,
        *,
        apply: bool = True,
    ) -> dict[str, Any]:
        """Resolve a PENDING action; deliver its webhook events in the background.

        FAILED without ``failure_type`` gets ``NO_RESPONSE``, CANCELLED gets
        ``REQUESTED_CANCELLATION``. Await :meth:`wait_deliveries` (or use
        :meth:`resolve_action_and_notify`) to know the events have arrived.
        """
        action, events = self._resolve(action_id, state, failure_type, apply=apply)
        self._notify_in_background(events)
        return action

    async def resolve_action_and_notify(
        self,
        action_id: str,
        state: str = "CONFIRMED",
        failure_type: str | None = None,
        *,
        apply: bool = True,
    ) -> dict[str, Any]:
        """:meth:`resolve_action`, returning once the webhook delivery has been answered."""
        action, events = self._resolve(action_id, state, failure_type, apply=apply)
        await self._notify(events)
        return action

    def _resolve(
        self, action_id: str, state: str, failure_type: str | None, *, apply: bool
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        if state not in RESOLVED_STATES:
            raise ValueError(f"an action resolves to one of {RESOLVED_STATES}, not {state!r}")
        action = self.actions[action_id]
        if action["state"] != "PENDING":
            raise ValueError(f"action {action_id} is {action['state']} already")
        failure_type = failure_type or DEFAULT_FAILURE.get(state)
        detail = f"The vendor action ended as {state}" if failure_type else None
        self._finish(action, state, failure_type, detail)
        events: list[dict[str, Any]] = []
        vehicle = self.vehicles.get(action["targetId"])
        if state == "CONFIRMED" and apply and vehicle is not None:
            changed = self._change_charge_state(vehicle, CONFIRMED_EFFECT[action["kind"]])
            if changed:
                events.append(self.vehicle_event(vehicle["id"], updated_fields=changed))
        events.append(self.action_event(action_id))
        return action, events

    def _finish(
        self, action: dict[str, Any], state: str, failure_type: str | None, detail: str | None
    ) -> None:
        now = self.now()
        action["state"] = state
        action["updatedAt"] = now
        action["completedAt"] = now
        action["failureReason"] = (
            {"type": failure_type, "detail": detail} if failure_type is not None else None
        )

    # ---------------------------------------------------------------- faults

    def fail_next(self, count: int, status: int = 503, retry_after: int | None = None) -> None:
        """The next ``count`` API requests answer ``status`` (problem+json), after earlier ones."""
        self._failures.extend([(status, retry_after)] * count)

    def hang_next(self, count: int, *, processed: bool = False) -> None:
        """The next ``count`` API requests get no answer until :meth:`release_hanging`.

        By default a request hangs before it is looked at (it never arrived);
        with ``processed=True`` it takes effect first and only the answer hangs.
        """
        self._hangs.extend([processed] * count)

    def release_hanging(self) -> None:
        """Let every hanging request go on (and be answered); later hangs wait anew."""
        self._release.set()
        self._release = asyncio.Event()

    async def wait_hanging(self, count: int = 1) -> None:
        """Return once at least ``count`` requests are hanging (no polling, no sleeps)."""
        while self.hanging < count:
            self._hanging_changed.clear()
            await self._hanging_changed.wait()

    def expire_tokens(self) -> None:
        """Every token issued so far answers 401 from now on."""
        self._tokens.clear()

    # -------------------------------------------------------------- webhooks

    async def deliver(
        self,
        events: list[dict[str, Any]],
        *,
        delivery_id: str | None = None,
        signature: str | None = None,
        repeat: int = 1,
    ) -> list[httpx.Response]:
        """POST ``events`` to the registered webhook ``repeat`` times with one delivery id.

        The body is the exact JSON array signed (unless ``signature`` is given)
        with the registered secret. Raises when no webhook is registered, and
        whatever httpx raises when the receiver cannot be reached.
        """
        if self.webhook is None:
            raise RuntimeError("no webhook registered: POST /webhooks first")
        if len(events) > MAX_EVENTS_PER_DELIVERY:
            raise ValueError(f"Enode sends at most {MAX_EVENTS_PER_DELIVERY} events at once")
        body = json.dumps(events, separators=(",", ":")).encode()
        delivery_id = delivery_id or str(uuid.uuid4())
        headers = {
            "content-type": "application/json",
            "x-enode-delivery": delivery_id,
            "x-enode-signature": signature or enode_signature(self.webhook["secret"], body),
        }
        record: dict[str, Any] = {"id": delivery_id, "events": events, "statuses": []}
        self.deliveries.append(record)
        responses: list[httpx.Response] = []
        async with httpx.AsyncClient(timeout=DELIVERY_TIMEOUT, trust_env=False) as client:
            for _ in range(repeat):
                response = await client.post(self.webhook["url"], content=body, headers=headers)
                record["statuses"].append(response.status_code)
                responses.append(response)
        return responses

    def vehicle_event(
        self,
        vehicle_id: str,
        name: str = "user:vehicle:updated",
        updated_fields: list[str] | None = None,
    ) -> dict[str, Any]:
        """An event carrying the vehicle as it is now.

        ``updatedFields`` defaults, for ``user:vehicle:updated``, to the fields
        the last change of this vehicle touched (e.g. ``chargeState.isCharging``).
        """
        vehicle = self.vehicles[vehicle_id]
        if updated_fields is None:
            updated_fields = (
                list(self._updated_fields.get(vehicle_id, []))
                if name == "user:vehicle:updated"
                else []
            )
        return {
            "event": name,
            "createdAt": self.now(),
            "version": API_VERSION,
            "user": {"id": vehicle["userId"]},
            "vehicle": copy.deepcopy(vehicle),
            "updatedFields": updated_fields,
        }

    def action_event(self, action_id: str) -> dict[str, Any]:
        """``user:vendor-action:updated`` carrying the action as it is now."""
        action = self.actions[action_id]
        return {
            "event": "user:vendor-action:updated",
            "createdAt": self.now(),
            "version": API_VERSION,
            "user": {"id": action["userId"]},
            "vendorAction": copy.deepcopy(action),
        }

    def credentials_invalidated_event(self, user_id: str) -> dict[str, Any]:
        """``user:credentials:invalidated``: the user must link the vendor account again."""
        vendor = next(
            (v["vendor"] for v in self.vehicles.values() if v["userId"] == user_id), "XPENG"
        )
        return {
            "event": "user:credentials:invalidated",
            "createdAt": self.now(),
            "version": API_VERSION,
            "user": {"id": user_id},
            "vendor": vendor,
            "vendorType": "vehicle",
        }

    async def wait_deliveries(self) -> None:
        """Return once every background delivery started so far has finished."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def _subscribed(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not self.webhooks_enabled or self.webhook is None:
            return []
        names = self.webhook["events"]
        return [event for event in events if "*" in names or event["event"] in names]

    async def _notify(self, events: list[dict[str, Any]]) -> None:
        subscribed = self._subscribed(events)
        if subscribed:
            await self.deliver(subscribed)

    def _notify_in_background(self, events: list[dict[str, Any]]) -> None:
        subscribed = self._subscribed(events)
        if not subscribed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            logger.warning("fake Enode: no event loop, %d events not delivered", len(subscribed))
            return
        task = loop.create_task(self._deliver_logged(self.deliver(subscribed)))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _deliver_logged(self, delivery: Coroutine[Any, Any, list[httpx.Response]]) -> None:
        # Enode does not tell the API caller that a webhook failed; neither does the fake.
        try:
            await delivery
        except (httpx.HTTPError, OSError) as exc:
            logger.warning("fake Enode: webhook delivery failed: %r", exc)
            self.delivery_errors.append(exc)

    # --------------------------------------------------------------- serving

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Serve the fake with uvicorn on 127.0.0.1; yields its base URL."""
        sock = listening_socket()
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=int(SHUTDOWN_TIMEOUT),
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        self.base_url = f"http://127.0.0.1:{port}"
        self._closing = False
        try:
            yield self.base_url
        finally:
            self._closing = True
            self._hangs.clear()
            self.release_hanging()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wait_deliveries(), SHUTDOWN_TIMEOUT)
            server.should_exit = True
            await asyncio.wait_for(task, SHUTDOWN_TIMEOUT * 2)
            sock.close()

    # ----------------------------------------------------------------- OAuth

    async def _token(self, request: Request) -> Response:
        if not self._basic_auth_ok(request.headers.get("authorization", "")):
            return JSONResponse(
                {"error": "invalid_client", "error_description": "Client authentication failed"},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="enode"'},
            )
        # Parsed by hand: Starlette's request.form() needs python-multipart.
        form = urllib.parse.parse_qs((await request.body()).decode(errors="replace"))
        grant_type = form.get("grant_type", [""])[0]
        if grant_type != "client_credentials":
            return JSONResponse(
                {
                    "error": "unsupported_grant_type",
                    "error_description": f"grant_type {grant_type!r} is not supported",
                },
                status_code=400,
            )
        token = secrets.token_urlsafe(32)
        self._tokens[token] = time.monotonic() + self.token_lifetime
        self.token_requests += 1
        return JSONResponse(
            {"access_token": token, "token_type": "bearer", "expires_in": self.token_lifetime},
            headers={"Cache-Control": "no-store"},
        )

    def _basic_auth_ok(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        client_id, _, client_secret = decoded.partition(":")
        return hmac.compare_digest(client_id, self.client_id) and hmac.compare_digest(
            client_secret, self.client_secret
        )

    # ------------------------------------------------------------ API guard

    def _api(self, handler: Endpoint) -> Endpoint:
        """Wrap an API route: scripted hangs and failures, auth, version, latency."""

        async def endpoint(request: Request) -> Response:
            hang = self._hangs.popleft() if self._hangs and not self._closing else None
            if hang is False:
                await self._hang()
            try:
                if self._failures:
                    status, retry_after = self._failures.popleft()
                    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
                    raise Problem(status, "Injected failure", headers=headers)
                self._authenticate(request)
                response = await handler(request)
            except Problem as problem:
                response = problem.response()
            if hang is True:
                await self._hang()
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            return response

        return endpoint

    async def _hang(self) -> None:
        release = self._release
        self.hanging += 1
        self._hanging_changed.set()
        try:
            await release.wait()
        finally:
            self.hanging -= 1

    def _authenticate(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        expiry = self._tokens.get(token) if scheme.lower() == "bearer" else None
        if expiry is None or time.monotonic() >= expiry:
            self._tokens.pop(token, None)
            raise Problem(
                401,
                "Missing, invalid or expired access token",
                slug="unauthorized",
                headers={"WWW-Authenticate": 'Bearer realm="enode"'},
            )
        version = request.headers.get("enode-version")
        if version != API_VERSION:
            raise Problem(
                400,
                f"Header Enode-Version must be {API_VERSION}, got {version!r}",
                slug="invalid-api-version",
            )

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers) if exc.headers else None
        return Problem(exc.status_code, str(exc.detail), headers=headers).response()

    # -------------------------------------------------------------- vehicles

    async def _get_vehicle(self, request: Request) -> Response:
        return JSONResponse(copy.deepcopy(self._vehicle(request.path_params["vehicleId"])))

    async def _list_vehicles(self, request: Request) -> Response:
        return JSONResponse(self._page(request, list(self.vehicles.values())))

    async def _user_vehicles(self, request: Request) -> Response:
        user_id = request.path_params["userId"]
        owned = [v for v in self.vehicles.values() if v["userId"] == user_id]
        return JSONResponse(self._page(request, owned))

    def _vehicle(self, vehicle_id: str) -> dict[str, Any]:
        vehicle = self.vehicles.get(vehicle_id)
        if vehicle is None:
            raise Problem(404, f"Vehicle {vehicle_id} not found")
        return vehicle

    def _position(self, vehicle_id: str) -> int:
        # Cursors hold a position that survives vehicles added or removed meanwhile.
        if vehicle_id not in self._order:
            self._order[vehicle_id] = self._next_order
            self._next_order += 1
        return self._order[vehicle_id]

    def _page(self, request: Request, items: list[dict[str, Any]]) -> dict[str, Any]:
        query = request.query_params
        try:
            size = int(query.get("pageSize", "50"))
        except ValueError:
            size = 0
        if not 1 <= size <= 100:
            raise Problem(400, "pageSize must be an integer from 1 to 100")
        after, before = query.get("after"), query.get("before")
        if after and before:
            raise Problem(400, "Give either after or before, not both")
        ordered = sorted(items, key=lambda item: self._position(item["id"]))
        positions = [self._order[item["id"]] for item in ordered]
        if after:
            cursor = _decode_cursor(after)
            start = sum(1 for position in positions if position <= cursor)
            end = start + size
        elif before:
            cursor = _decode_cursor(before)
            end = sum(1 for position in positions if position < cursor)
            start = max(0, end - size)
        else:
            start, end = 0, size
        page = ordered[start:end]
        more_after = bool(page) and end < len(ordered)
        return {
            "data": copy.deepcopy(page),
            "pagination": {
                "before": _encode_cursor(positions[start]) if page and start > 0 else None,
                "after": _encode_cursor(positions[end - 1]) if more_after else None,
            },
        }

    # --------------------------------------------------------------- actions

    async def _charging(self, request: Request) -> Response:
        vehicle = self._vehicle(request.path_params["vehicleId"])
        body = await _json_object(request)
        kind = body.get("action")
        if kind not in ACTION_KINDS:
            raise Problem(400, f"action must be START or STOP, not {kind!r}")
        if self.checks_rules:
            self._check_charging(vehicle, kind)
        return JSONResponse(self._take_action(vehicle, kind))

    def _check_charging(self, vehicle: dict[str, Any], kind: str) -> None:
        """Enode's refusals of a START/STOP: smart charging (422), then plug, state and
        capability (400); with an action pending, plug and smart charging only."""
        if vehicle["smartChargingPolicy"].get("isEnabled"):
            raise Problem(
                422,
                "The vehicle is under smart charging control",
                slug="smart-charging-enabled",
            )
        state = vehicle["chargeState"]
        if kind == "START" and not state.get("isPluggedIn"):
            raise Problem(400, "The vehicle is not plugged in", slug="failed-precondition")
        # With an action in motion the charge state is about to change, so only plug
        # and smart charging are judged (one of the same kind is then returned again).
        if not self.pending_actions(vehicle["id"]):
            if kind == "START" and state.get("isCharging"):
                raise Problem(400, "The vehicle is already charging", slug="failed-precondition")
            if kind == "STOP" and not state.get("isCharging"):
                raise Problem(400, "The vehicle is not charging", slug="failed-precondition")
            capability = CAPABILITY_OF_KIND[kind]
            if not vehicle["capabilities"].get(capability, {}).get("isCapable"):
                raise Problem(
                    400, f"The vehicle is not capable of {capability}", slug="failed-precondition"
                )

    def _take_action(self, vehicle: dict[str, Any], kind: str) -> dict[str, Any]:
        """The PENDING action of this kind (made now, cancelling one of the other kind)."""
        pending = self.pending_actions(vehicle["id"])
        for action in pending:
            if action["kind"] == kind:
                return copy.deepcopy(action)
        events = []
        for other in pending:
            self._finish(other, "CANCELLED", "CONFLICT", f"Superseded by a {kind} action")
            events.append(self.action_event(other["id"]))
        now = self.now()
        action = {
            "id": str(uuid.uuid4()),
            "userId": vehicle["userId"],
            "createdAt": now,
            "updatedAt": now,
            "completedAt": None,
            "state": "PENDING",
            "targetId": vehicle["id"],
            "targetType": "vehicle",
            "kind": kind,
            "failureReason": None,
        }
        self.actions[action["id"]] = action
        self._notify_in_background(events)
        return copy.deepcopy(action)

    async def _get_action(self, request: Request) -> Response:
        return JSONResponse(copy.deepcopy(self._action(request.path_params["actionId"])))

    async def _cancel_action(self, request: Request) -> Response:
        action = self._action(request.path_params["actionId"])
        if action["state"] != "PENDING":
            raise Problem(409, f"Action {action['id']} is already {action['state']}")
        self._finish(action, "CANCELLED", "REQUESTED_CANCELLATION", "Cancelled by request")
        self._notify_in_background([self.action_event(action["id"])])
        return JSONResponse(copy.deepcopy(action))

    def _action(self, action_id: str) -> dict[str, Any]:
        action = self.actions.get(action_id)
        if action is None:
            raise Problem(404, f"Action {action_id} not found")
        return action

    def _change_charge_state(self, vehicle: dict[str, Any], changes: dict[str, Any]) -> list[str]:
        state = vehicle["chargeState"]
        changed = [f"chargeState.{key}" for key, new in changes.items() if state.get(key) != new]
        state.update(changes)
        if "lastUpdated" not in changes:
            state["lastUpdated"] = self.now()
        vehicle["lastSeen"] = state["lastUpdated"]
        self._updated_fields[vehicle["id"]] = changed
        return changed

    # ---------------------------------------------------- links and webhooks

    async def _link(self, request: Request) -> Response:
        body = await _json_object(request)
        scopes = body.get("scopes")
        if not (
            isinstance(body.get("vendorType"), str)
            and isinstance(scopes, list)
            and all(isinstance(scope, str) for scope in scopes)
            and isinstance(body.get("language"), str)
            and isinstance(body.get("redirectUri"), str)
        ):
            raise Problem(400, "vendorType, scopes, language and redirectUri are required")
        token = secrets.token_urlsafe(24)
        self.links[token] = {"userId": request.path_params["userId"], **body}
        base = str(request.base_url).rstrip("/")
        return JSONResponse({"linkUrl": f"{base}/link/{token}", "linkToken": token})

    async def _link_page(self, request: Request) -> Response:
        if request.path_params["linkToken"] not in self.links:
            raise HTTPException(404, "Unknown link")
        return HTMLResponse("<!doctype html><title>Enode Link</title><p>Link your vehicle.</p>")

    async def _create_webhook(self, request: Request) -> Response:
        body = await _json_object(request)
        url, secret, events = body.get("url"), body.get("secret"), body.get("events", ["*"])
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise Problem(400, "url must be an http(s) URL")
        if not isinstance(secret, str) or not secret:
            raise Problem(400, "secret is required")
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            raise Problem(400, "events must be a list of event names")
        self.webhook = {
            "id": str(uuid.uuid4()),
            "url": url,
            "secret": secret,
            "events": events,
            "apiVersion": body.get("apiVersion") or API_VERSION,
            "createdAt": self.now(),
            "isActive": True,
            "lastSuccess": None,
        }
        return JSONResponse(self._public_webhook())

    async def _list_webhooks(self, request: Request) -> Response:
        data = [self._public_webhook()] if self.webhook else []
        return JSONResponse({"data": data, "pagination": {"before": None, "after": None}})

    async def _delete_webhook(self, request: Request) -> Response:
        if self.webhook is None or self.webhook["id"] != request.path_params["webhookId"]:
            raise Problem(404, "Webhook not found")
        self.webhook = None
        return Response(status_code=204)

    def _public_webhook(self) -> dict[str, Any]:
        assert self.webhook is not None
        return {key: value for key, value in self.webhook.items() if key != "secret"}


def _check_charge_fields(fields: dict[str, Any]) -> None:
    unknown = sorted(set(fields) - set(CHARGE_STATE_FIELDS))
    if unknown:
        raise TypeError(f"unknown chargeState fields (camelCase expected): {unknown}")


def _encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(f"vehicles:{position}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, position = raw.partition(":")
        if prefix != "vehicles":
            raise ValueError(raw)
        return int(position)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Problem(400, f"Invalid pagination cursor {cursor!r}") from None


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise Problem(400, "The body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Problem(400, "The body must be a JSON object")
    return body
