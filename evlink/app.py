"""create_app(settings) -> Starlette. The lifespan opens and closes everything."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from tortoise import Tortoise
from tortoise.context import get_current_context
from tortoise.contrib.starlette import RegisterTortoise

from evlink import compat_rest, webhooks
from evlink.cache import ReadCache, follow_invalidations
from evlink.compat_rest.errors import exception_handlers
from evlink.connections import ConnectionLimits
from evlink.domain import ProviderUpdate
from evlink.edge import EdgeApp, HttpEdge, direct_routes
from evlink.errors import EvlinkError
from evlink.events import RedisEventBus, build_event_bus
from evlink.guards import BodyLimit, BodyLimits
from evlink.metrics import CountedProvider, Metrics, metrics_endpoint
from evlink.models.backends import database_answers
from evlink.models.database import ensure_sqlite_directory
from evlink.mqtt.bridge import build_bridge
from evlink.playground import page as playground
from evlink.providers import Provider, build_provider
from evlink.ratelimit import Limiter
from evlink.resolvers.auth import KEY_USE_FLUSH_INTERVAL, KeyUses
from evlink.resolvers.charging import CommandWatcher, ingest_provider_update
from evlink.revocation import check_interval, follow_sockets
from evlink.schema import build_schema
from evlink.schema.view import GraphQLView
from evlink.server import OpenSockets, tune_gc
from evlink.services import Services
from evlink.settings import Settings, connection_name

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


async def healthz(request: Request) -> JSONResponse:
    """The process is up and its lifespan has started."""
    return JSONResponse({"status": "ok"})


def _database(app: Starlette, settings: Settings) -> AbstractAsyncContextManager[object]:
    """Tortoise for this app's life. Tortoise keeps one global context per process, so a
    second app in the same process (tests of several instances) shares the first's."""
    current = get_current_context()
    if current is not None and current.inited:
        return contextlib.nullcontext()
    return RegisterTortoise(app, config=settings.tortoise_config())


def _cors(settings: Settings) -> list[Middleware]:
    """CORS only when origins are configured: Home Assistant and GraphQL clients need none."""
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if not origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After", "RateLimit", "RateLimit-Policy"],
            max_age=600,
        )
    ]


def _edge(settings: Settings, metrics: Metrics) -> list[Middleware]:
    """The HTTP edge (:class:`~evlink.edge.HttpEdge`), with the body limits in it; behind
    CORS when it is on, so that a 413 passes through CORS as every other answer does."""
    body_limits = BodyLimits(settings.max_body, webhooks.body_limits(settings))
    cors = _cors(settings)
    if not cors:
        return [Middleware(HttpEdge, metrics=metrics, body_limits=body_limits)]
    return [
        Middleware(HttpEdge, metrics=metrics),
        *cors,
        Middleware(BodyLimit, limits=body_limits),
    ]


# Seconds each readiness check may take: /readyz answers within 2 s whatever happens.
READY_TIMEOUT = 1.5


async def readyz(request: Request) -> JSONResponse:
    """Whether this instance can serve: 503 when its database does not answer.

    Redis is shared by the fleet and its loss does not stop an instance serving (rate
    limits count in memory, events stay within the instance): reported as
    ``"redis": "degraded"`` with 200, so a Redis outage does not take every instance
    out of the load balancer at once (docs/scaling.md).
    """
    services: Services = request.app.state.services
    database, redis = await asyncio.gather(_database_state(services), _redis_state(services))
    checks = {"database": database} if redis is None else {"database": database, "redis": redis}
    ready = database == "ok"
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", **checks}, status_code=200 if ready else 503
    )


async def _database_state(services: Services) -> str:
    client = Tortoise.get_connection(connection_name(services.settings.database_url))
    return "ok" if await database_answers(client, READY_TIMEOUT) else "unavailable"


async def _redis_state(services: Services) -> str | None:
    events = services.events
    if not isinstance(events, RedisEventBus):
        return None
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            answers = await events.ping()
    except TimeoutError:
        answers = False
    return "ok" if answers else "degraded"


async def _write_key_uses(uses: KeyUses) -> None:
    """The key uses noted since the last batch, written at shutdown."""
    try:
        await uses.flush()
    except EvlinkError as exc:
        logger.warning("key uses not written at shutdown (%s)", exc.code)


async def _release_command_leases(watcher: CommandWatcher) -> None:
    """Hand this instance's command leases back at shutdown, so that another instance
    follows the commands at once; if the database refuses, they lapse on their own."""
    try:
        await watcher.aclose(release=True)
    except EvlinkError as exc:
        logger.warning(
            "command leases not released at shutdown (%s); they lapse on their own", exc.code
        )


def create_app(settings: Settings | None = None, *, provider: Provider | None = None) -> Starlette:
    """The evlink ASGI app. ``provider`` replaces the one the settings name (tests, demos)."""
    settings = settings or Settings.from_env()
    schema = build_schema(settings)
    graphql = GraphQLView(
        schema,
        keep_alive=True,
        keep_alive_interval=settings.ws_keepalive,
        connection_init_wait_timeout=timedelta(seconds=settings.ws_init_timeout),
        max_subscriptions_per_connection=settings.ws_max_operations,
    )
    metrics = Metrics()
    metrics.watch_documents(schema.documents)
    metrics.watch_known_queries(graphql.plans.answered)
    metrics.watch_introspection(lambda: graphql.introspection.served)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tune_gc()
        ensure_sqlite_directory(settings.database_url)
        async with _database(app, settings):
            events = build_event_bus(settings.redis_url, settings.database_url)
            if isinstance(events, RedisEventBus):
                await events.start()
            limiter = Limiter.from_settings(settings)
            await limiter.start()
            cache = ReadCache(settings.cache_ttl)
            key_uses = KeyUses()
            cache.events = events
            metrics.watch_cache(cache)
            services = Services(
                settings=settings,
                provider=CountedProvider(provider or build_provider(settings), metrics),
                events=events,
                metrics=metrics,
                limiter=limiter,
                open_sockets=app.state.open_sockets,
                cache=cache,
                key_uses=key_uses,
            )
            services.watcher = CommandWatcher(services)
            app.state.services = services

            async def sink(update: ProviderUpdate) -> None:
                await ingest_provider_update(services, update)

            await services.provider.start(sink)
            await services.watcher.start()
            # MQTT (EVLINK_MQTT_URL): connects in the background; a broker away stops nothing.
            mqtt = build_bridge(services, settings, check_interval(settings))
            app.state.mqtt = mqtt
            if mqtt is not None:
                await mqtt.start()
            resuming = asyncio.create_task(
                webhooks.resume_deliveries(services), name="resume-deliveries"
            )
            listening = asyncio.Event()
            following = asyncio.create_task(
                follow_invalidations(cache, events, listening), name="cache-invalidations"
            )
            writing_uses = asyncio.create_task(
                key_uses.flush_every(KEY_USE_FLUSH_INTERVAL), name="key-uses"
            )
            checking = asyncio.Event()
            rechecking = asyncio.create_task(
                follow_sockets(
                    app.state.open_sockets, events, cache, check_interval(settings), checking
                ),
                name="websocket-rechecks",
            )
            # No invalidation is missed once requests come in.
            await asyncio.gather(listening.wait(), checking.wait())
            logger.info("evlink ready (provider %s)", services.provider.name)
            try:
                yield
            finally:
                resuming.cancel()
                following.cancel()
                rechecking.cancel()
                if mqtt is not None:
                    await mqtt.aclose()
                writing_uses.cancel()
                await _write_key_uses(key_uses)
                for refresh in list(services.refreshes.values()):
                    refresh.task.cancel()  # reads served meanwhile; nobody waits on them
                await services.provider.aclose()
                await _release_command_leases(services.watcher)
                await services.events.aclose()
                await limiter.aclose()

    app = EdgeApp(
        routes=[
            # The routes clients poll come first: a request is matched against each in turn.
            Route("/graphql", graphql, methods=["GET", "POST"]),
            # Without Starlette's exception handler per route: the app's Handlers has it.
            *direct_routes(compat_rest.routes),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route(webhooks.PATH, webhooks.enode_webhook, methods=["POST"]),
            WebSocketRoute("/graphql", graphql),
            Mount(playground.STATIC_PATH, playground.static_files, name="playground"),
        ],
        middleware=_edge(settings, metrics),
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )
    # No redirect from a path with a trailing slash to the one without: Starlette builds
    # its Location from the request's Host header, which the client chooses. Such a path
    # is answered as any unknown one (404 NOT_FOUND).
    app.router.redirect_slashes = False
    app.state.metrics = metrics
    app.state.open_sockets = OpenSockets()
    app.state.connection_limits = ConnectionLimits.from_settings(settings)
    return app
