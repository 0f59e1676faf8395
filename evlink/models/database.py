"""Opening the database outside the app (CLI, tests) and applying migrations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from tortoise.context import TortoiseContext
from tortoise.migrations.api import migrate

from evlink.settings import Settings, tortoise_config

__all__ = ["apply_migrations", "ensure_sqlite_directory", "open_command_database", "open_database"]


def ensure_sqlite_directory(database_url: str) -> None:
    """Create the folder of a SQLite file (``sqlite://var/evlink.sqlite3`` -> ``var/``)."""
    if not database_url.startswith("sqlite://"):
        return
    path = database_url.removeprefix("sqlite://").split("?", 1)[0]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


@asynccontextmanager
async def open_database(
    database_url: str, *, timeout: float | None = None, connect_timeout: float | None = None
) -> AsyncIterator[TortoiseContext]:
    """A Tortoise context of its own, for work outside the running app; with
    ``timeout``, its calls bounded as the server's are (:mod:`evlink.models.backends`);
    else with ``connect_timeout``, its connecting alone (the CLI)."""
    ensure_sqlite_directory(database_url)
    config = tortoise_config(database_url, timeout=timeout, connect_timeout=connect_timeout)
    async with TortoiseContext() as ctx:
        await ctx.init(config=config)
        yield ctx


def open_command_database(settings: Settings) -> AbstractAsyncContextManager[TortoiseContext]:
    """The settings' database for a CLI command: Tortoise's own clients (a command may
    take its time), its connecting bounded by ``EVLINK_DATABASE_TIMEOUT``."""
    return open_database(settings.database_url, connect_timeout=settings.database_timeout)


async def apply_migrations(database_url: str, *, connect_timeout: float | None = None) -> list[str]:
    """Apply every migration not yet applied; returns the names applied."""
    applied: list[str] = []

    def progress(event: str, app_label: str, name: str) -> None:
        if event == "apply_done":
            applied.append(f"{app_label}.{name}")

    async with open_database(database_url, connect_timeout=connect_timeout):
        config = tortoise_config(database_url, connect_timeout=connect_timeout)
        await migrate(config=config, progress=progress)
    return applied
