"""Users, tiers, vehicles added by hand, and the demo account."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from tortoise.transactions import in_transaction

from evlink.cache import ReadCache, user_tag
from evlink.errors import BadRequest, NotFound
from evlink.models import Tier, User, Vehicle
from evlink.providers.simulator import simulator_vehicle_id
from evlink.ratelimit import check_vehicle_limit
from evlink.resolvers import vehicles
from evlink.resolvers.auth import IssuedKey, issue_key
from evlink.services import Services
from evlink.settings import Settings

__all__ = [
    "DEMO_EMAIL",
    "DemoAccount",
    "add_vehicle",
    "create_user",
    "ensure_demo",
    "find_user",
    "link_vehicle_account",
    "parse_tier",
    "set_tier",
    "sync_vehicles",
]

DEMO_EMAIL = "demo@evlink.local"
DEMO_VEHICLES = (
    ("unplugged", "Demo car (unplugged)"),
    ("plugged", "Demo car (plugged in)"),
    ("charging", "Demo car (charging)"),
)


def parse_tier(value: str) -> Tier:
    try:
        return Tier(value.strip().upper())
    except ValueError:
        raise BadRequest(f"tier must be one of {', '.join(t.value for t in Tier)}") from None


async def create_user(email: str, tier: Tier = Tier.FREE) -> User:
    email = email.strip().lower()
    if "@" not in email:
        raise BadRequest("email must be an email address")
    if await User.exists(email=email):
        raise BadRequest(f"a user with email {email} exists already")
    return await User.create(email=email, tier=tier)


async def find_user(email: str) -> User:
    user = await User.get_or_none(email=email.strip().lower())
    if user is None:
        raise NotFound(f"no user with email {email}")
    return user


async def set_tier(user: User, tier: Tier, cache: ReadCache | None = None) -> User:
    """Change the tier; ``cache`` is told (else servers see it within ``EVLINK_CACHE_TTL``)."""
    user.tier = tier
    await user.save(update_fields=["tier"])
    if cache is not None:
        await cache.invalidate(user_tag(user.id))
    return user


async def add_vehicle(
    user: User,
    *,
    provider: str,
    provider_vehicle_id: str | None,
    name: str | None = None,
    settings: Settings | None = None,
    cache: ReadCache | None = None,
) -> Vehicle:
    """Add a vehicle by hand. With ``settings``, 403 FORBIDDEN_TIER past the tier's
    vehicle limit (``EVLINK_VEHICLE_LIMITS``); without (the demo, tests), no limit.
    ``cache`` is told that the user's vehicles changed."""
    if settings is not None:
        await check_vehicle_limit(settings, user)
    vehicle = await Vehicle.create(
        user=user, provider=provider, provider_vehicle_id=provider_vehicle_id, name=name
    )
    if cache is not None:
        await cache.invalidate(user_tag(user.id))
    return vehicle


@dataclass(frozen=True, slots=True)
class DemoAccount:
    user: User
    vehicles: list[Vehicle]
    key: IssuedKey


async def ensure_demo() -> DemoAccount:
    """The demo user (Pro) with three cars of the simulator, and a new key for it.

    Safe to repeat: the user and its cars are made once. Keys are stored hashed
    and cannot be shown again, so each call issues a new one.
    """
    async with in_transaction():
        user, _ = await User.get_or_create(email=DEMO_EMAIL, defaults={"tier": Tier.PRO})
        vehicles = await Vehicle.filter(user=user, deleted_at=None).order_by("created_at", "id")
        if not vehicles:
            vehicles = [
                await add_vehicle(
                    user,
                    provider="simulator",
                    provider_vehicle_id=simulator_vehicle_id(profile),
                    name=name,
                )
                for profile, name in DEMO_VEHICLES
            ]
        key = await issue_key(user, name="demo")
    return DemoAccount(user=user, vehicles=vehicles, key=key)


async def link_vehicle_account(services: Services, user: User, redirect_uri: str) -> str:
    """The provider's link URL for ``user``, giving the user a provider identity if needed."""
    if not redirect_uri.startswith(("https://", "http://")):
        raise BadRequest("redirectUri must be an http(s) URL")
    if user.enode_user_id is None:
        user.enode_user_id = str(uuid.uuid4())
        await user.save(update_fields=["enode_user_id"])
        await services.cache.invalidate(user_tag(user.id))
    return await services.provider.link_user(user.enode_user_id, redirect_uri)


async def sync_vehicles(services: Services, user: User) -> list[Vehicle]:
    """Import every vehicle the provider lists for ``user`` (those within the tier's limit)."""
    if user.enode_user_id is None:
        raise BadRequest(f"{user.email} has not linked a vehicle account yet")
    listed = await services.provider.list_vehicles(user.enode_user_id)
    imported = [await vehicles.upsert_provider_vehicle(services, user, data) for data in listed]
    return [vehicle for vehicle in imported if vehicle is not None]
