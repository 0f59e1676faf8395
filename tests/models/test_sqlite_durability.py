"""The server's SQLite connection commits without waiting for the disk at each commit
(``synchronous=NORMAL`` under WAL) unless the database URL asks for more."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tortoise import connections

from evlink.settings import Settings, connection_name
from tests.conftest import run_server

# SQLite's numbers for PRAGMA synchronous.
NORMAL, FULL = 1, 2


async def _synchronous(settings: Settings) -> tuple[int, str]:
    async with run_server(settings) as server:
        assert (await server.http.get("/healthz")).status_code == 200
        client = connections.get(connection_name(settings.database_url))
        _, (mode,) = await client.execute_query("PRAGMA journal_mode")
        _, (synchronous,) = await client.execute_query("PRAGMA synchronous")
        return synchronous[0], mode[0]


async def test_the_server_commits_to_sqlite_s_wal_without_a_sync_per_commit(
    settings: Settings,
) -> None:
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("a SQLite setting; this backend is PostgreSQL")
    assert await _synchronous(settings) == (NORMAL, "wal")


async def test_the_database_url_can_ask_for_a_sync_per_commit(settings: Settings) -> None:
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("a SQLite setting; this backend is PostgreSQL")
    full = replace(settings, database_url=f"{settings.database_url}?synchronous=FULL")
    assert await _synchronous(full) == (FULL, "wal")
