"""Prometheus metrics at ``/metrics`` and the access log, one registry per app.

Requests by route and status, latency histograms, open websockets and active
subscriptions, charging commands by end state, provider calls and errors.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sized
from functools import partial
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from evlink.cache import ReadCache
from evlink.domain import ChargeAction, ChargingAction, VehicleData
from evlink.errors import EvlinkError
from evlink.providers.base import Provider, UpdateSink

__all__ = ["CountedProvider", "HttpRequests", "Metrics", "metrics_endpoint"]

T = TypeVar("T")

# The methods counted by name (RFC 9110's); any other a client sends is counted as "other".
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _Latency:
    """One route and method's latency histogram: each bucket's own count (not summed)."""

    __slots__ = ("buckets", "created", "total")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size
        self.total = 0.0
        self.created = time.time()


class _Series:
    """One route, method and status: its count, and its route and method's histogram."""

    __slots__ = ("count", "created", "latency")

    def __init__(self, latency: _Latency) -> None:
        self.count = 0
        self.created = time.time()
        self.latency = latency


class HttpRequests(Collector):
    """``evlink_http_requests`` (a counter by route, method and status) and
    ``evlink_http_request_duration_seconds`` (a histogram by route and method), counted
    in plain numbers and told as prometheus_client's ``Counter`` and ``Histogram`` tell
    theirs, ``_created`` series included (tests/test_operations.py compares them).

    Every HTTP request is counted here, and those two take a lock for each of their
    three increments (about 1.5 µs a request, against 0.3 µs here: bench/README.md).
    Only the event loop's thread counts, and a scrape reads on the same loop.
    """

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(float(bound) for bound in buckets)
        # Bounded: routes x methods x statuses (unmatched paths share one route label).
        self._series: dict[tuple[str, str, int], _Series] = {}
        self._latencies: dict[tuple[str, str], _Latency] = {}

    def observe(self, route: str, method: str, status: int, elapsed: float) -> None:
        """Count and time one request."""
        series = self._series.get((route, method, status))
        if series is None:
            series = self._new_series(route, method, status)
        series.count += 1
        latency = series.latency
        latency.total += elapsed
        latency.buckets[bisect_left(self.bounds, elapsed)] += 1  # le: the first bound >= it

    def _new_series(self, route: str, method: str, status: int) -> _Series:
        latency = self._latencies.get((route, method))
        if latency is None:
            latency = self._latencies[(route, method)] = _Latency(len(self.bounds) + 1)
        series = self._series[(route, method, status)] = _Series(latency)
        return series

    def collect(self) -> Iterator[Metric]:
        # As prometheus_client's own: no _created series once they are turned off
        # (PROMETHEUS_DISABLE_CREATED_SERIES=true, disable_created_metrics()).
        with_created = getattr(prometheus_metrics, "_use_created", True)
        requests = CounterMetricFamily(
            "evlink_http_requests",
            "HTTP requests by route, method and status",
            labels=["route", "method", "status"],
        )
        for (route, method, status), series in self._series.items():
            created_at = series.created if with_created else None
            requests.add_metric([route, method, str(status)], series.count, created_at)
        yield requests
        name = "evlink_http_request_duration_seconds"
        documentation = "HTTP request latency by route"
        latency = HistogramMetricFamily(name, documentation, labels=["route", "method"])
        created = GaugeMetricFamily(f"{name}_created", documentation, labels=["route", "method"])
        edges = [_bucket_name(bound) for bound in self.bounds] + ["+Inf"]
        for labels, timed in self._latencies.items():
            below, buckets = 0, []
            for edge, count in zip(edges, timed.buckets, strict=True):
                below += count
                buckets.append((edge, below))
            latency.add_metric(list(labels), buckets, timed.total)
            created.add_metric(list(labels), timed.created)
        yield latency
        if with_created and created.samples:  # none before the first request, as theirs
            yield created

    def describe(self) -> Iterator[Metric]:
        return iter(())  # registered without describing: nothing is checked for clashes


def _bucket_name(bound: float) -> str:
    """A bucket's ``le`` as prometheus_client writes it (``1.0``, ``0.005``, ``+Inf``)."""
    return repr(float(bound))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http = HttpRequests()
        self.registry.register(self.http)
        self.websockets = Gauge(
            "evlink_websocket_connections", "Open GraphQL websockets", registry=self.registry
        )
        self.subscriptions = Gauge(
            "evlink_active_subscriptions",
            "Active GraphQL subscriptions by field",
            ["field"],
            registry=self.registry,
        )
        # Forwarded subscription events (evlink.schema.fanout): one encoding per document,
        # variables and state, shared by all the subscribers that sent them.
        self.fanout_encoded = Counter(
            "evlink_subscription_payloads_encoded",
            "Payloads of forwarded subscription events encoded (each shared by the "
            "subscribers of one document, variables and state)",
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
        self.cache_lookups = Gauge(
            "evlink_read_cache_lookups",
            "Read-cache lookups since start, by outcome (hit or miss)",
            ["outcome"],
            registry=self.registry,
        )
        self.cache_entries = Gauge(
            "evlink_read_cache_entries", "Entries in the read cache", registry=self.registry
        )
        self.documents_kept = Gauge(
            "evlink_graphql_documents_kept",
            "Valid GraphQL documents kept parsed, by their text",
            registry=self.registry,
        )
        self.introspection_served = Gauge(
            "evlink_graphql_introspection_kept_answers",
            "Introspection requests without a key answered from the kept result of the "
            "same document since start",
            registry=self.registry,
        )
        self.known_queries = Gauge(
            "evlink_graphql_known_queries",
            "POST queries of known documents answered without Strawberry's operation "
            "since start, by way: plan (no graphql-core) or graphql-core",
            ["way"],
            registry=self.registry,
        )

    def watch_cache(self, cache: ReadCache) -> None:
        """Report ``cache``'s counts when scraped (it counts in plain integers)."""
        self.cache_lookups.labels(outcome="hit").set_function(lambda: cache.hits)
        self.cache_lookups.labels(outcome="miss").set_function(lambda: cache.misses)
        self.cache_entries.set_function(lambda: len(cache))

    def watch_documents(self, documents: Sized) -> None:
        """Report how many parsed GraphQL documents are kept (schema.limits.ValidDocuments)."""
        self.documents_kept.set_function(lambda: len(documents))

    def watch_introspection(self, served: Callable[[], int]) -> None:
        """Report the introspection requests answered from a kept result
        (schema.introspection.IntrospectionAnswers.served)."""
        self.introspection_served.set_function(served)

    def watch_known_queries(self, answered: Mapping[str, int]) -> None:
        """Report the known queries answered directly (schema.direct.Plans.answered)."""
        for way in answered:
            self.known_queries.labels(way=way).set_function(partial(answered.__getitem__, way))

    def observe_request(self, scope: Scope, method: str, status: int, elapsed: float) -> None:
        """Count and time one HTTP request, by its route's path template and its method
        (``other`` for a method that is not one of HTTP's own: the labels stay few)."""
        if method not in HTTP_METHODS:
            method = "other"
        self.http.observe(_route_of(scope), method, status, elapsed)

    def subscription(self, field: str) -> _Active:
        """While the ``async with`` block runs, one more active subscription ``field``."""
        return _Active(self.subscriptions.labels(field=field))

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
    """The route's path template (bounded label values), not the raw path: the router
    notes the route it chose in the scope."""
    route = scope.get("route")
    return "unmatched" if route is None else str(getattr(route, "path", "other"))


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


class _Active:
    """:meth:`Metrics.subscription`'s context manager: a slotted class, not a
    generator's, since each open subscription holds one for its life."""

    __slots__ = ("_gauge",)

    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge

    async def __aenter__(self) -> None:
        self._gauge.inc()

    async def __aexit__(self, *exc: object) -> None:
        self._gauge.dec()
