"""Test harness: a real uvicorn on 127.0.0.1 over a migrated database, per backend.

Every test that uses ``server`` runs once on SQLite and once on PostgreSQL
(when ``EVLINK_TEST_DATABASE_URL`` is set; skipped with a reason otherwise).
Each PostgreSQL run gets a database of its own with a random name, dropped at
the end. The provider is the simulator on a :class:`ManualClock`: tests move
time with ``await server.clock.advance(seconds)``, never with sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import uvicorn
from gql import Client, GraphQLRequest, gql
from gql.transport.websockets import WebsocketsTransport

from evlink.app import create_app
from evlink.domain import ChargingAction
from evlink.models import ChargingCommand, CommandState, Tier, User, Vehicle
from evlink.models.database import apply_migrations, open_database
from evlink.providers.base import Provider
from evlink.providers.enode import EnodeProvider
from evlink.providers.simulator import ManualClock, SimulatedVehicle, Simulator
from evlink.resolvers import accounts
from evlink.resolvers.auth import issue_key
from evlink.server import EvlinkServer, server_options
from evlink.services import Services
from evlink.settings import Settings, connection_name
from tests.fakes.enode import FakeEnode, listening_socket

TABLES = (
    "charging_samples",
    "charging_sessions",
    "tariffs",
    "simulator_actions",
    "simulator_cars",
    "webhook_deliveries",
    "mqtt_leases",
    "mqtt_users",
    "charging_commands",
    "charge_states",
    "vehicles",
    "api_keys",
    "users",
)
PROTOCOLS = (WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL, WebsocketsTransport.APOLLO_SUBPROTOCOL)
TIMEOUT = 10.0  # seconds any awaited event may take before a test fails


def _postgres_database(base_url: str, name: str) -> str:
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database for this session, on each backend."""
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path_factory.mktemp('db') / 'evlink.sqlite3'}"
        asyncio.run(apply_migrations(url))
        yield url
        return
    base = os.environ.get("EVLINK_TEST_DATABASE_URL")
    if not base:
        pytest.skip("EVLINK_TEST_DATABASE_URL is not set: PostgreSQL tests skipped")
    name = f"evlink_test_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(base)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(base)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    url = _postgres_database(base, name)
    try:
        asyncio.run(apply_migrations(url))
        yield url
    finally:
        asyncio.run(drop())


async def _truncate(database_url: str) -> None:
    async with open_database(database_url) as ctx:
        conn = ctx.connections.get(connection_name(database_url))
        for table in TABLES:
            await conn.execute_script(f"DELETE FROM {table}")  # noqa: S608 (constant names)


def _test_settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        status_max_age=60.0,
        charging_fresh_age=5.0,
        charging_max_attempts=3,
        charging_deadline=30.0,
        charging_poll_interval=0.05,
        charging_poll_max_interval=0.2,
        charging_retry_backoff=0.01,
        simulator_action_delay=1.0,
        # Rate limits far above what any test does; tests/test_ratelimit.py sets its own.
        quotas="free=1000000/day;basic=1000000/day;pro=1000000/day",
        command_quotas="free=1000000/day;basic=1000000/day;pro=1000000/day",
        burst="1000000/minute",
        auth_failures="1000000/minute",
        vehicle_limits="free=unlimited;basic=unlimited;pro=unlimited",
    )


@dataclass
class Server:
    """A running evlink on 127.0.0.1 and the handles a test needs."""

    base_url: str
    app: Any
    clock: ManualClock
    provider: Provider
    http: httpx.AsyncClient
    settings: Settings
    keys: dict[int, str] = field(default_factory=dict)

    @property
    def simulator(self) -> Simulator:
        assert isinstance(self.provider, Simulator), "this server runs another provider"
        return self.provider

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/graphql"

    async def user(self, email: str | None = None, tier: Tier = Tier.PRO) -> tuple[User, str]:
        user = await accounts.create_user(email or f"{uuid.uuid4().hex[:8]}@example.com", tier)
        key = (await issue_key(user)).secret
        self.keys[user.id] = key
        return user, key

    async def vehicle(self, user: User, profile: str = "plugged", **simulated: Any) -> Vehicle:
        """A simulated car of ``user`` (unplugged|plugged|charging), tweaked by ``simulated``."""
        provider_id = f"sim-{profile}-{uuid.uuid4().hex[:12]}"
        car = self.simulator.vehicle(provider_id)
        for name, value in simulated.items():
            setattr(car, name, value)
        return await accounts.add_vehicle(
            user, provider="simulator", provider_vehicle_id=provider_id, name=f"Test {profile}"
        )

    def car(self, vehicle: Vehicle) -> SimulatedVehicle:
        assert vehicle.provider_vehicle_id is not None
        return self.simulator.vehicle(vehicle.provider_vehicle_id)

    async def graphql(
        self, query: str, variables: dict[str, Any] | None = None, *, key: str | None = None
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = await self.http.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def gql_client(self, key: str | None, protocol: str) -> Client:
        transport = WebsocketsTransport(
            url=self.ws_url,
            subprotocols=[protocol],
            init_payload={"Authorization": f"Bearer {key}"} if key else {},
        )
        return Client(transport=transport, fetch_schema_from_transport=False)


async def finished_command(vehicle: Vehicle, user: User) -> ChargingCommand:
    """A command of ``user`` that has ended, so no watcher calls the provider behind the test."""
    now = datetime.now(UTC)
    return await ChargingCommand.create(
        vehicle=vehicle,
        user=user,
        action=ChargingAction.START,
        state=CommandState.CONFIRMED,
        attempts=1,
        deadline_at=now + timedelta(minutes=5),
        completed_at=now,
    )


def subscription(session: Any, query: str, **variables: str) -> Any:
    """A gql subscription closed when the block ends, as a well-behaved client does
    (left open, the client waits out its close timeout)."""
    return aclosing(session.subscribe(GraphQLRequest(query, variable_values=variables)))


class Program:
    """A program a test runs (redis-server, mosquitto): its process while it runs, and
    the task that reads its output."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        """Kill it (its clients see their connections closed) and wait until it is gone."""
        process = self.process
        if process is None:
            return
        self.process = None
        if process.returncode is None:
            process.kill()  # SIGKILL also ends a frozen (stopped) process
        await asyncio.wait_for(process.wait(), TIMEOUT)
        if self._drain is not None:
            self._drain.cancel()


async def next_result(stream: Any) -> dict[str, Any]:
    """The subscription's next result, or a failure after TIMEOUT seconds."""
    result: dict[str, Any] = await asyncio.wait_for(anext(stream), TIMEOUT)
    return result


PLUGGED = "subscription($id: ID!) { chargeState(vehicleId: $id) { isPluggedIn } }"
PLUGGED_AND_STATE = (
    "subscription($id: ID!) { chargeState(vehicleId: $id) { isPluggedIn powerDeliveryState } }"
)


@contextlib.asynccontextmanager
async def plugged_subscribers(
    server: Server, key: str, *wanted: tuple[str, Vehicle]
) -> AsyncIterator[list[Any]]:
    """A subscription to each (document, car) of ``wanted`` with ``key``, each on a
    socket of its own (the second graphql-ws, the others graphql-transport-ws), the
    sockets opened first; each one's first result read, the car plugged in."""
    protocols = [PROTOCOLS[1] if index == 1 else PROTOCOLS[0] for index in range(len(wanted))]
    async with contextlib.AsyncExitStack() as stack:
        sessions = [
            await stack.enter_async_context(server.gql_client(key, protocol))
            for protocol in protocols
        ]
        streams = [
            await stack.enter_async_context(subscription(session, document, id=str(car.id)))
            for session, (document, car) in zip(sessions, wanted, strict=True)
        ]
        for stream in streams:
            assert (await next_result(stream))["chargeState"]["isPluggedIn"] is True
        yield streams


@contextlib.asynccontextmanager
async def run_server(
    settings: Settings, clock: ManualClock | None = None, simulator: Simulator | None = None
) -> AsyncIterator[Server]:
    """Serve evlink with uvicorn on a free port of 127.0.0.1 until the block ends.

    With the simulator (the default) its clock is a :class:`ManualClock`; with
    ``settings.provider == "enode"`` the app builds its real Enode client.
    """
    clock = clock or ManualClock()
    if settings.provider == "simulator" and simulator is None:
        simulator = Simulator(clock, action_delay=settings.simulator_action_delay)
    app = create_app(settings, provider=simulator)
    sock = listening_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", log_level="warning", **server_options(settings))
    server = EvlinkServer(config, app.state.open_sockets)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as http:
            # The socket already listens: this waits in its backlog until startup is done.
            ready = await http.get("/healthz")
            assert ready.status_code == 200
            services: Services = app.state.services
            # The app counts provider calls through a wrapper; tests drive the provider itself.
            inner = getattr(services.provider, "inner", services.provider)
            yield Server(base_url, app, clock, inner, http, settings)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, TIMEOUT)
        sock.close()


@dataclass(frozen=True)
class TwoInstances:
    """Two servers on one emptied database, talking to one simulated car park on one
    manual clock (the provider both instances share)."""

    a: Server
    b: Server
    clock: ManualClock
    car_park: Simulator


@contextlib.asynccontextmanager
async def two_instances(shared: Settings) -> AsyncIterator[TwoInstances]:
    await _truncate(shared.database_url)
    clock = ManualClock()
    car_park = Simulator(clock, action_delay=1.0)
    async with (
        run_server(shared, clock=clock, simulator=car_park) as a,
        run_server(shared, clock=clock, simulator=car_park) as b,
    ):
        yield TwoInstances(a, b, clock, car_park)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerLog:
    """What an ``evlink serve`` process writes to stderr, line by line as it comes, and
    the process itself (to signal it)."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.process: asyncio.subprocess.Process | None = None
        self.ended = False
        self._grew = asyncio.Event()

    def add(self, line: bytes) -> None:
        self.lines.append(line)
        self._grew.set()

    def end(self) -> None:
        self.ended = True
        self._grew.set()

    async def line_with(self, *markers: bytes) -> bytes:
        """The first line holding every marker, once it is written (within TIMEOUT)."""
        return (await self.lines_with(*markers))[0]

    async def lines_with(self, *markers: bytes, count: int = 1) -> list[bytes]:
        """The first ``count`` lines holding every marker, once written (within TIMEOUT)."""
        found: list[bytes] = []
        seen = 0
        async with asyncio.timeout(TIMEOUT):
            while True:
                for line in self.lines[seen:]:
                    if all(marker in line for marker in markers):
                        found.append(line)
                        if len(found) == count:
                            return found
                seen = len(self.lines)
                if self.ended:
                    raise AssertionError(f"the server ended before it logged {markers!r}")
                await self.changed()

    async def changed(self) -> None:
        """Return once another line is written or the process closed its stderr."""
        self._grew.clear()
        await self._grew.wait()

    async def until_ended(self) -> None:
        """Return once the process has closed its stderr (within TIMEOUT)."""
        async with asyncio.timeout(TIMEOUT):
            while not self.ended:
                await self.changed()


@contextlib.asynccontextmanager
async def serve_process(
    database_url: str,
    preexec: Callable[[], None] | None = None,
    *,
    args: Sequence[str] = (),
    log: ServerLog | None = None,
    graceful: bool = False,
    cwd: Path | None = None,
    printed: ServerLog | None = None,
    **env: str,
) -> AsyncIterator[str]:
    """``evlink serve`` (with ``args``) in a process of its own (its event loop is not the
    test's), on a free port of 127.0.0.1 with the simulator; ``env`` adds ``EVLINK_*``
    variables and ``preexec`` runs in the child before it starts; ``log`` gets what it
    logs (stderr, line by line) and ``printed`` what it prints (stdout); ``cwd`` is its
    folder (first on its ``sys.path``: the test's own by default). Yields the base URL
    once it listens. When the block ends it is killed with its workers (SIGKILL: no
    goodbye), or with ``graceful`` first told to stop (SIGTERM) and given TIMEOUT to do
    so."""
    port = free_port()
    environ = {
        **os.environ,
        "EVLINK_DATABASE_URL": database_url,
        "EVLINK_HOST": "127.0.0.1",
        "EVLINK_PORT": str(port),
        "EVLINK_LOG_LEVEL": "INFO",
        **env,
    }
    log = log if log is not None else ServerLog()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "evlink.cli",
        "serve",
        *args,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=preexec,
        cwd=cwd,
        start_new_session=True,  # its workers too are killed by the process group
    )
    log.process = process
    drain = asyncio.create_task(
        _drain(process, log, printed or ServerLog())
    )  # a full pipe would stall the server
    try:
        await log.line_with(b"Uvicorn running on")
        yield f"http://127.0.0.1:{port}"
    finally:
        if graceful and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await asyncio.wait_for(process.wait(), TIMEOUT)
        await asyncio.wait_for(drain, TIMEOUT)  # every line written is in the log


async def _drain(process: asyncio.subprocess.Process, log: ServerLog, printed: ServerLog) -> None:
    async def read(stream: asyncio.StreamReader | None, into: ServerLog) -> None:
        assert stream is not None
        async for line in stream:
            into.add(line)
        into.end()

    await asyncio.gather(read(process.stderr, log), read(process.stdout, printed))


def shared_settings(settings: Settings) -> Settings:
    """``settings`` for instances that share the database and Redis (skipped, with the
    reason, on SQLite or without EVLINK_TEST_REDIS_URL)."""
    redis_url = os.environ.get("EVLINK_TEST_REDIS_URL")
    if settings.is_sqlite:
        pytest.skip("several instances share PostgreSQL; this backend is SQLite")
    if not redis_url:
        pytest.skip("EVLINK_TEST_REDIS_URL is not set: Redis tests skipped")
    return replace(settings, redis_url=redis_url)


async def user_with_car(database_url: str, name: str = "Car") -> tuple[str, str]:
    """A PRO user's key and the id of its plugged-in simulated car, made outside any server."""
    async with open_database(database_url):
        user = await accounts.create_user(f"{uuid.uuid4().hex[:8]}@example.com", Tier.PRO)
        key = (await issue_key(user)).secret
        vehicle = await accounts.add_vehicle(
            user,
            provider="simulator",
            provider_vehicle_id=f"sim-plugged-{uuid.uuid4().hex[:12]}",
            name=name,
        )
    return key, str(vehicle.id)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return _test_settings(database_url)


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[Server]:
    await _truncate(settings.database_url)
    async with run_server(settings) as running:
        yield running


@pytest.fixture
def make_settings(settings: Settings) -> Any:
    def make(**changes: Any) -> Settings:
        return replace(settings, **changes)

    return make


__all__ = [
    "PROTOCOLS",
    "TIMEOUT",
    "EnodeWorld",
    "Server",
    "ServerLog",
    "free_port",
    "gql",
    "next_result",
    "run_enode_world",
    "run_server",
    "serve_process",
    "shared_settings",
    "subscription",
    "user_with_car",
]


WEBHOOK_SECRET = "whsec-test-secret"


@dataclass
class EnodeWorld:
    """evlink on the Enode provider, against a fake Enode on 127.0.0.1."""

    fake: FakeEnode
    server: Server

    async def linked_user(self, enode_user_id: str = "user-1") -> tuple[User, str]:
        user, key = await self.server.user()
        user.enode_user_id = enode_user_id
        await user.save(update_fields=["enode_user_id"])
        return user, key

    async def vehicle(self, user: User, **charge_state: Any) -> Vehicle:
        """A car at the fake Enode for ``user``, imported into evlink by a sync."""
        assert user.enode_user_id is not None
        raw = self.fake.add_vehicle(user.enode_user_id, **charge_state)
        await accounts.sync_vehicles(self.server.services, user)
        return await Vehicle.get(provider="enode", provider_vehicle_id=raw["id"])

    async def deliver(self, events: list[dict[str, Any]], delivery_id: str | None = None) -> Any:
        """Deliver signed events and return once evlink has worked them off."""
        from evlink.events import delivery_topic

        delivery_id = delivery_id or uuid.uuid4().hex
        async with self.server.services.events.subscribe(delivery_topic(delivery_id)) as done:
            (response,) = await self.fake.deliver(events, delivery_id=delivery_id)
            if response.json().get("status") == "accepted":
                assert await done.get(timeout=TIMEOUT) is not None, "delivery not worked off"
        return response


def enode_settings(settings: Settings, fake_url: str, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "provider": "enode",
        "enode_client_id": "client-id",
        "enode_client_secret": "client-secret",
        "enode_api_url": fake_url,
        "enode_oauth_url": fake_url,
        "enode_webhook_secret": WEBHOOK_SECRET,
        "enode_timeout": 1.0,
        "enode_breaker_cooldown": 30.0,
    }
    return replace(settings, **{**values, **changes})


@contextlib.asynccontextmanager
async def run_enode_world(settings: Settings, **changes: Any) -> AsyncIterator[EnodeWorld]:
    fake = FakeEnode()
    async with fake.serve() as fake_url:
        await _truncate(settings.database_url)
        async with run_server(enode_settings(settings, fake_url, **changes)) as server:
            provider = server.provider
            assert isinstance(provider, EnodeProvider)
            await provider.register_webhook(f"{server.base_url}/api/webhooks/enode", WEBHOOK_SECRET)
            yield EnodeWorld(fake, server)


@pytest.fixture
async def enode(settings: Settings) -> AsyncIterator[EnodeWorld]:
    async with run_enode_world(settings) as world:
        yield world
