"""`evlink serve` as run in production, in a process of its own: the logs of its
``--workers`` processes, and a REST ``?wait`` request in flight when it is told to stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import httpx
import pytest

from evlink.settings import Settings
from tests.conftest import TIMEOUT, ServerLog, _truncate, serve_process, user_with_car


async def stopped(log: ServerLog) -> None:
    """SIGTERM the server (the supervisor, under ``--workers``); return once it has ended
    cleanly and written all it had to say."""
    assert log.process is not None
    log.process.send_signal(signal.SIGTERM)
    # A single server ends by raising the signal it caught again, once it has shut
    # down; the supervisor of ``--workers`` exits with 0.
    assert await asyncio.wait_for(log.process.wait(), TIMEOUT * 2) in (0, -signal.SIGTERM)
    await log.until_ended()


async def send_raw(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    return answer


def workers_env(settings: Settings) -> dict[str, str]:
    """The environment ``--workers`` needs (PostgreSQL and Redis), or skip."""
    redis_url = os.environ.get("EVLINK_TEST_REDIS_URL")
    if settings.is_sqlite:
        pytest.skip("--workers needs PostgreSQL; this backend is SQLite")
    if not redis_url:
        pytest.skip("EVLINK_TEST_REDIS_URL is not set: Redis tests skipped")
    return {"EVLINK_REDIS_URL": redis_url}


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_workers_log_as_the_single_process_does(settings: Settings, log_format: str) -> None:
    """Under ``--workers 2`` each worker logs with evlink's format and level: its startup,
    the access line with the request id, a client's path with its control characters
    escaped, and uvicorn's line about a malformed request at INFO without a traceback."""
    env = workers_env(settings)
    await _truncate(settings.database_url)
    log = ServerLog()
    async with serve_process(
        settings.database_url, args=["--workers", "2"], log=log, EVLINK_LOG_FORMAT=log_format, **env
    ) as url:
        # The supervisor listens on its socket; each worker serves once it is ready.
        await log.lines_with(b"evlink ready", count=2)
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
            health = await http.get("/healthz", headers={"X-Request-ID": "worker-check-1"})
            missing = await http.get("/x%0aforged%20ERROR%20line")
        malformed = await send_raw(url, b"NOT HTTP AT ALL\r\n\r\n")
        access = await log.line_with(b"evlink.access", b"worker-check-1")
        escaped = await log.line_with(b"evlink.access", b"/x")
        mistake = await log.line_with(b"Invalid HTTP request received.")
        await stopped(log)

    assert health.status_code == 200
    assert missing.status_code == 404
    assert malformed.startswith(b"HTTP/1.1 400")
    assert not [line for line in log.lines if b"Traceback" in line]
    if log_format == "json":
        entries = [json.loads(line) for line in log.lines]  # every line of every process
        assert {e["logger"] for e in entries} >= {"evlink.access", "evlink.app", "uvicorn.error"}
        assert json.loads(access)["request_id"] == "worker-check-1"
        assert json.loads(access)["message"].startswith("GET /healthz 200 ")
        assert json.loads(escaped)["message"].startswith("GET /x\nforged ERROR line 404 ")
        assert json.loads(mistake)["level"] == "INFO"
        assert "exception" not in json.loads(mistake)
    else:
        assert b" INFO evlink.access [worker-check-1] GET /healthz 200 " in access
        assert b"GET /x\\x0aforged ERROR line 404 " in escaped
        assert b" INFO uvicorn.error [-] Invalid HTTP request received." in mistake


@pytest.mark.parametrize("workers", [1, 2], ids=["one process", "workers"])
async def test_a_waiting_request_answers_pending_when_the_server_stops(
    settings: Settings, workers: int
) -> None:
    """SIGTERM while ``POST /api/charging/{id}?wait=60`` waits for a car that takes its
    time: the request answers at once with the command as it stands (PENDING) in the
    documented body, within the graceful period, and nothing is logged as an error;
    under ``--workers`` too."""
    env = workers_env(settings) if workers > 1 else {}
    await _truncate(settings.database_url)
    key, vehicle = await user_with_car(settings.database_url)
    log = ServerLog()
    async with (
        serve_process(
            settings.database_url,
            args=["--workers", str(workers)],
            log=log,
            EVLINK_SIMULATOR_ACTION_DELAY="600",
            **env,
        ) as url,
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT * 3) as http,
    ):
        await log.lines_with(b"evlink ready", count=workers)
        waiting = asyncio.create_task(
            http.post(
                f"/api/charging/{vehicle}?wait=60",
                json={"action": "START"},
                headers={"Authorization": f"Bearer {key}"},
            )
        )
        await log.line_with(b"evlink.resolvers.charging", b") sent to vehicle")  # in flight
        asked = time.monotonic()
        stopping = asyncio.create_task(stopped(log))
        answer = await asyncio.wait_for(waiting, TIMEOUT * 2)
        took = time.monotonic() - asked
        await stopping

    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["status"] == "success"
    assert body["vehicle_id"] == vehicle
    assert body["action"] == "START"
    assert body["state"] == "PENDING"
    assert took < 5  # well within uvicorn's 10 s graceful period
    assert not [line for line in log.lines if b" ERROR " in line or b"Traceback" in line]
    assert [line for line in log.lines if b"POST /api/charging/" in line and b" 200 " in line]
