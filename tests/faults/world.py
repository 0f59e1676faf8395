"""What a fault test serves: an account in a fresh database, and the requests it sends."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from evlink.models import Tier
from evlink.models.database import open_database
from evlink.resolvers import accounts
from evlink.resolvers.auth import issue_key
from tests.conftest import _truncate

__all__ = ["Account", "account", "graphql", "status", "through", "timed", "upstream"]

T = TypeVar("T")
VEHICLES = "query { vehicles { id name } }"


@dataclass(frozen=True)
class Account:
    """A PRO user with simulated cars. ``keys`` are all unused: each one's first use
    reads the database, whatever the read cache holds."""

    keys: list[str]
    vehicle_ids: list[str]  # one per profile asked for, in that order

    @property
    def vehicle_id(self) -> str:
        return self.vehicle_ids[0]


async def account(
    database_url: str, keys: int = 4, profiles: tuple[str, ...] = ("plugged",)
) -> Account:
    """Empty the database and make the account (so `evlink serve` makes no demo)."""
    await _truncate(database_url)
    async with open_database(database_url):
        user = await accounts.create_user(f"{uuid.uuid4().hex[:8]}@example.com", Tier.PRO)
        secrets = [(await issue_key(user)).secret for _ in range(keys)]
        vehicles = [
            await accounts.add_vehicle(
                user,
                provider="simulator",
                provider_vehicle_id=f"sim-{profile}-{uuid.uuid4().hex[:12]}",
                name=f"Faulty ({profile})",
            )
            for profile in profiles
        ]
    return Account(secrets, [str(vehicle.id) for vehicle in vehicles])


def upstream(database_url: str) -> tuple[str, int]:
    """The host and port a PostgreSQL URL points at."""
    parts = urlsplit(database_url)
    return parts.hostname or "127.0.0.1", parts.port or 5432


def through(database_url: str, port: int) -> str:
    """The same database reached through 127.0.0.1:``port`` (a proxy)."""
    parts = urlsplit(database_url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def timed(call: Awaitable[T]) -> tuple[T, float]:
    """What ``call`` gives, and the seconds it took."""
    started = time.monotonic()
    result = await call
    return result, time.monotonic() - started


async def status(http: httpx.AsyncClient, key: str, vehicle_id: str) -> httpx.Response:
    return await http.get(f"/api/status/{vehicle_id}", headers={"Authorization": f"Bearer {key}"})


async def graphql(http: httpx.AsyncClient, key: str, query: str = VEHICLES) -> httpx.Response:
    return await http.post(
        "/graphql", json={"query": query}, headers={"Authorization": f"Bearer {key}"}
    )
