"""Prometheus metrics at ``/metrics`` and the access log, one registry per app.

Requests by route and status, latency histograms, open websockets and active
subscriptions, charging commands by end state, provider calls and errors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from evlink.errors import EvlinkError
from evlink.providers.base import (
    ChargeAction,
    ChargingAction,
    Provider,
    UpdateSink,
    VehicleData,
)

__all__ = ["CountedProvider", "Metrics", "MetricsMiddleware", "metrics_endpoint"]

access_log = logging.getLogger("evlink.access")
T = TypeVar("T")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "evlink_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "evlink_http_request_duration_seconds",
            "HTTP request latency by route",
            ["route", "method"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.websockets = Gauge(
            "evlink_websocket_connections", "Open GraphQL websockets", registry=self.registry
        )
        self.subscriptions = Gauge(
            "evlink_active_subscriptions",
            "Active GraphQL subscriptions by field",
            ["field"],
            registry=self.registry,
        )
        self.commands = Counter(
            "evlink_charging_commands",
            "Charging commands created and ended, by state",
            ["state"],
            registry=self.registry,
        )
        self.provider_calls = Counter(
            "evlink_provider_calls",
            "Provider calls by operation and outcome (ok or the error code)",
            ["provider", "operation", "outcome"],
            registry=self.registry,
        )

    @asynccontextmanager
    async def subscription(self, field: str) -> AsyncIterator[None]:
        gauge = self.subscriptions.labels(field=field)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    async def provider_call(
        self, provider: str, operation: str, call: Callable[[], Awaitable[T]]
    ) -> T:
        try:
            result = await call()
        except EvlinkError as exc:
            self.provider_calls.labels(provider, operation, exc.code).inc()
            raise
        except Exception:
            self.provider_calls.labels(provider, operation, "INTERNAL_ERROR").inc()
            raise
        self.provider_calls.labels(provider, operation, "ok").inc()
        return result

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CountedProvider:
    """A provider whose every call is counted by operation and outcome."""

    def __init__(self, inner: Provider, metrics: Metrics) -> None:
        self.inner = inner
        self.name = inner.name
        self._metrics = metrics

    def _count(self, operation: str, call: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        return self._metrics.provider_call(self.name, operation, call)

    async def start(self, sink: UpdateSink) -> None:
        await self.inner.start(sink)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def get_vehicle(self, vehicle_id: str) -> VehicleData:
        return await self._count("get_vehicle", lambda: self.inner.get_vehicle(vehicle_id))

    async def list_vehicles(self, user_id: str) -> list[VehicleData]:
        return await self._count("list_vehicles", lambda: self.inner.list_vehicles(user_id))

    async def set_charging(self, vehicle_id: str, action: ChargingAction) -> ChargeAction:
        return await self._count(
            "set_charging", lambda: self.inner.set_charging(vehicle_id, action)
        )

    async def get_action(self, action_id: str) -> ChargeAction:
        return await self._count("get_action", lambda: self.inner.get_action(action_id))

    async def cancel_action(self, action_id: str) -> ChargeAction:
        return await self._count("cancel_action", lambda: self.inner.cancel_action(action_id))

    async def link_user(self, user_id: str, redirect_uri: str) -> str:
        return await self._count("link_user", lambda: self.inner.link_user(user_id, redirect_uri))


def _route_of(scope: Scope) -> str:
    """The route's path template (bounded label values), not the raw path."""
    app: Any = scope.get("app")
    router = getattr(app, "router", None)
    for route in getattr(router, "routes", ()):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "other"))
    return "unmatched"


class MetricsMiddleware:
    """Counts and times every HTTP request; writes one access-log line for each."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_see(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_of(scope)
            method = scope["method"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(elapsed)
            access_log.info("%s %s %d %.1f ms", method, scope["path"], status, elapsed * 1000)


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
