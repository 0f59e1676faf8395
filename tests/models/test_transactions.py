"""evlink's transactions (evlink.models.backends.transaction) on real databases: all or
nothing, their statements in them, a savepoint inside one; through the server's bounded
clients and through Tortoise's own (migrations, the CLI)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid

import asyncpg
import pytest
from tortoise.exceptions import IntegrityError

from evlink.models import Tier, User
from evlink.models.backends import BoundedClient, transaction
from evlink.models.database import open_database
from tests.conftest import TIMEOUT, _truncate

BOUNDS = [pytest.param(5.0, id="bounded"), pytest.param(None, id="tortoise")]


def _email() -> str:
    return f"{uuid.uuid4().hex[:8]}@example.com"


async def _committed_emails(database_url: str) -> set[str]:
    """The users' emails as another connection sees them (only what is committed)."""
    if database_url.startswith("sqlite://"):
        with sqlite3.connect(database_url.removeprefix("sqlite://")) as other:
            return {row[0] for row in other.execute("SELECT email FROM users")}
    other = await asyncpg.connect(database_url)
    try:
        return {row["email"] for row in await other.fetch("SELECT email FROM users")}
    finally:
        await other.close()


async def _writes_then_fails(new: str, taken: str) -> None:
    """A transaction that writes a user, updates it, then fails: ``taken`` is in use."""
    async with transaction():
        user = await User.create(email=new, tier=Tier.FREE)
        await User.filter(id=user.id).update(tier=Tier.PRO)
        await User.create(email=taken, tier=Tier.FREE)


@pytest.mark.parametrize("timeout", BOUNDS)
async def test_a_transaction_that_fails_halfway_leaves_nothing_written(
    database_url: str, timeout: float | None
) -> None:
    await _truncate(database_url)
    first, second = _email(), _email()
    async with open_database(database_url, timeout=timeout) as ctx:
        client = next(iter(ctx.connections.all()))
        assert isinstance(client, BoundedClient) is (timeout is not None)
        with pytest.raises(IntegrityError):
            await _writes_then_fails(first, taken=first)
        assert await _committed_emails(database_url) == set()
        # The connection is whole again: the next transaction commits.
        async with transaction():
            await User.create(email=second, tier=Tier.FREE)
    assert await _committed_emails(database_url) == {second}


@pytest.mark.parametrize("timeout", BOUNDS)
async def test_statements_inside_a_transaction_use_it(
    database_url: str, timeout: float | None
) -> None:
    await _truncate(database_url)
    email = _email()
    async with open_database(database_url, timeout=timeout):
        async with transaction() as client:
            await User.create(email=email, tier=Tier.FREE)
            # Seen inside, through the models and the client it gives; not outside yet.
            assert await User.filter(email=email).exists()
            _, rows = await client.execute_query("SELECT email FROM users")
            assert [row["email"] for row in rows] == [email]
            assert await _committed_emails(database_url) == set()
        assert await _committed_emails(database_url) == {email}


async def test_a_transaction_inside_one_is_a_savepoint_of_it(database_url: str) -> None:
    """On PostgreSQL a failed statement spoils its transaction: a savepoint keeps the rest."""
    await _truncate(database_url)
    kept, undone = _email(), _email()
    async with open_database(database_url, timeout=5.0), transaction():
        await User.create(email=kept, tier=Tier.FREE)
        with pytest.raises(IntegrityError):
            await _writes_then_fails(undone, taken=kept)
        assert not await User.filter(email=undone).exists()
        await User.filter(email=kept).update(tier=Tier.PRO)
    assert await _committed_emails(database_url) == {kept}


async def test_a_transaction_cut_short_is_rolled_back_and_its_connection_freed(
    database_url: str,
) -> None:
    """A client gone (its task cancelled) in the middle of a transaction: nothing of it
    is committed, and the connection it held serves the next one."""
    await _truncate(database_url)
    abandoned, next_one = _email(), _email()
    inside = asyncio.Event()

    async def cut_short() -> None:
        async with transaction():
            await User.create(email=abandoned, tier=Tier.FREE)
            inside.set()
            await asyncio.Event().wait()  # until cancelled

    async with open_database(database_url, timeout=5.0):
        task = asyncio.create_task(cut_short())
        await asyncio.wait_for(inside.wait(), TIMEOUT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with transaction():
            await User.create(email=next_one, tier=Tier.FREE)
    assert await _committed_emails(database_url) == {next_one}
