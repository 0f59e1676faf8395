"""The server's PostgreSQL connections go back to the pool without a reset round trip."""

from __future__ import annotations

import asyncpg
import pytest

from tests.conftest import Server


async def test_a_pooled_connection_is_handed_back_without_asyncpg_s_reset(
    server: Server,
) -> None:
    # asyncpg's reset (RESET ALL and more, one round trip) would be the last statement
    # of every connection the server has handed back; evlink leaves no session state
    # to reset, so its last statement is evlink's own.
    if not server.settings.database_url.startswith("postgres"):
        pytest.skip("asyncpg's pool is PostgreSQL's; this backend is SQLite")
    user, key = await server.user()
    vehicle = await server.vehicle(user, "charging")
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(3):
        assert (await server.http.get(f"/api/status/{vehicle.id}", headers=headers)).is_success

    observer = await asyncpg.connect(server.settings.database_url)
    try:
        rows = await observer.fetch(
            "SELECT query FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await observer.close()

    last_statements = [str(row["query"]) for row in rows]
    assert last_statements  # the server's pool holds its connections
    assert not [q for q in last_statements if "RESET ALL" in q]
