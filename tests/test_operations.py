"""Operating evlink: health, readiness, metrics, request ids and structured logs."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    enable_created_metrics,
    generate_latest,
)
from starlette.routing import Route

from evlink.logs import JsonFormatter, configure_logging
from evlink.metrics import LATENCY_BUCKETS, Metrics
from evlink.settings import Settings
from tests.conftest import Server, _truncate, run_server


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_healthz_and_readyz(server: Server) -> None:
    health = await server.http.get("/healthz")
    ready = await server.http.get("/readyz")

    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "database": "ok"}


async def test_readyz_reports_an_unreachable_redis_as_degraded_but_ready(
    settings: Settings,
) -> None:
    # Port 9 on loopback: nothing listens there, the connection is refused at once.
    await _truncate(settings.database_url)
    async with run_server(replace(settings, redis_url="redis://127.0.0.1:9/0")) as server:
        ready = await server.http.get("/readyz")
        status = await server.http.get("/healthz")

    # The instance still serves (rate limits count in memory): it stays in the balancer.
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "database": "ok", "redis": "degraded"}
    assert status.status_code == 200


async def test_request_id_is_echoed_or_made(server: Server) -> None:
    given = await server.http.get("/healthz", headers={"X-Request-ID": "abc-123"})
    made = await server.http.get("/healthz")
    forged = await server.http.get(
        "/healthz", headers={"X-Request-ID": " ".join(["x INFO fake=1"] * 9)}
    )

    assert given.headers["x-request-id"] == "abc-123"
    assert len(made.headers["x-request-id"]) == 32
    assert " " not in forged.headers["x-request-id"]  # not carried into log lines


async def test_metrics_count_requests_commands_and_provider_calls(server: Server) -> None:
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))
    await server.http.get(f"/api/status/{vehicle.id}", headers=auth(key))
    await server.http.post(
        f"/api/charging/{vehicle.id}", json={"action": "START"}, headers=auth(key)
    )

    text = (await server.http.get("/metrics")).text

    assert (
        'evlink_http_requests_total{method="GET",route="/api/status/{vehicle_id}",status="200"} 2.0'
        in text
    )
    assert (
        'evlink_http_request_duration_seconds_count{method="GET",route="/api/status/{vehicle_id}"}'
        in text
    )
    assert 'evlink_charging_commands_total{state="PENDING"} 1.0' in text
    provider_calls = 'evlink_provider_calls_total{operation="set_charging",outcome="ok"'
    assert provider_calls + ',provider="simulator"} 1.0' in text
    assert "evlink_websocket_connections 0.0" in text
    assert str(vehicle.id) not in text  # routes, never raw paths: labels stay bounded


async def test_a_body_refused_before_routing_is_counted_under_its_route(server: Server) -> None:
    # A declared Content-Length over the limit is refused by the edge, before the router.
    user, key = await server.user()
    vehicle = await server.vehicle(user, "plugged")
    body = b'{"action": "START", "pad": "' + b"x" * 70_000 + b'"}'
    headers = {**auth(key), "Content-Type": "application/json"}
    refused = await server.http.post(f"/api/charging/{vehicle.id}", content=body, headers=headers)
    assert refused.status_code == 413

    text = (await server.http.get("/metrics")).text
    route = 'method="POST",route="/api/charging/{vehicle_id}",status="413"'
    assert f"evlink_http_requests_total{{{route}}} 1.0" in text
    assert 'route="unmatched",status="413"' not in text


def _told_by_prometheus_client(
    observed: list[tuple[str, str, int, float]],
) -> tuple[str, list[str]]:
    """What prometheus_client's own Counter and Histogram tell for the same requests."""
    registry = CollectorRegistry()
    requests = Counter(
        "evlink_http_requests",
        "HTTP requests by route, method and status",
        ["route", "method", "status"],
        registry=registry,
    )
    latency = Histogram(
        "evlink_http_request_duration_seconds",
        "HTTP request latency by route",
        ["route", "method"],
        registry=registry,
        buckets=LATENCY_BUCKETS,
    )
    for route, method, status, elapsed in observed:
        requests.labels(route, method, str(status)).inc()
        latency.labels(route, method).observe(elapsed)
    return _without_times(generate_latest(registry).decode())


def _without_times(text: str) -> tuple[str, list[str]]:
    """The exposition with each ``_created`` value cut off, and those lines' names."""
    lines, created = [], []
    for line in text.splitlines():
        name, _, _ = line.rpartition(" ")
        if "_created{" in line and not line.startswith("#"):
            created.append(name)
            line = name
        lines.append(line)
    return "\n".join(lines), created


@pytest.mark.parametrize("with_created", [True, False])
def test_request_metrics_are_told_as_prometheus_client_tells_them(with_created: bool) -> None:
    status_route = Route("/api/status/{vehicle_id}", lambda request: None)
    # On each bound (le: at most the bound), between bounds, past the last, and nought.
    elapsed = [*LATENCY_BUCKETS, 0.0, 0.007, 0.3, 75.0, 0.005]
    observed = [("/api/status/{vehicle_id}", "GET", 200, seconds) for seconds in elapsed]
    observed += [("/api/status/{vehicle_id}", "GET", 404, 0.02), ("unmatched", "POST", 404, 3.0)]
    if not with_created:
        disable_created_metrics()
    try:
        metrics = Metrics()
        for route, method, status, seconds in observed:
            scope = {"route": status_route} if route != "unmatched" else {}
            metrics.observe_request(scope, method, status, seconds)
        ours = _without_times(metrics.render().decode())
        theirs = _told_by_prometheus_client(observed)
    finally:
        enable_created_metrics()

    ours_text = "\n".join(line for line in ours[0].splitlines() if "evlink_http_request" in line)
    theirs_text = "\n".join(
        line for line in theirs[0].splitlines() if "evlink_http_request" in line
    )
    assert ours_text == theirs_text
    assert 'le="0.005",method="GET",route="/api/status/{vehicle_id}"} 3.0' in ours_text
    assert len(ours[1]) == (5 if with_created else 0)  # 3 counter series, 2 histograms


def test_request_metrics_before_any_request_are_told_as_prometheus_client_tells_them() -> None:
    ours = Metrics().render().decode()
    theirs = _told_by_prometheus_client([])[0]

    def told(text: str) -> list[str]:
        return [line for line in text.splitlines() if "evlink_http_request" in line]

    assert told(ours) == told(theirs)
    assert not any("_created" in line for line in told(ours))


def test_a_method_that_is_not_http_s_own_is_counted_as_other() -> None:
    metrics = Metrics()
    for method in ("PROPFIND", "M-SEARCH", "get", "GET"):
        metrics.observe_request({}, method, 405, 0.001)
    text = metrics.render().decode()

    assert 'evlink_http_requests_total{method="other",route="unmatched",status="405"} 3.0' in text
    assert 'evlink_http_requests_total{method="GET",route="unmatched",status="405"} 1.0' in text
    assert "PROPFIND" not in text


def test_json_logs_carry_the_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", "json")
        logging.getLogger("evlink.test").warning("hello %s", "world")
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    entry = json.loads(line)
    assert entry["message"] == "hello world"
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "evlink.test"
    assert entry["request_id"] == "-"
    assert isinstance(JsonFormatter().format(logging.makeLogRecord({"msg": "x"})), str)
