"""Users, tiers, vehicles added and removed by hand, Enode links, and the demo account.

Rules kept here:

- a user has at most as many cars as the tier allows (:func:`check_vehicle_limit`,
  ``EVLINK_VEHICLE_LIMITS``): adding one past it is 403 FORBIDDEN_TIER, and a car the
  provider reports past it is not added (:func:`upsert_provider_vehicle`, logged);
- a car is added only once its provider has it (:func:`register_vehicle`): the
  configured provider, and for Enode a car of the user's own link; so ``evlink
  vehicle add`` never stores a car without a provider id;
- a removed car (:func:`remove_vehicle`) stops counting against the tier's limit,
  answers 404, ends its PENDING commands as CANCELLED and its subscriptions with
  NOT_FOUND (through the ``user:<id>`` invalidation, :mod:`evlink.revocation`);
- a user gets exactly one Enode user id, ever (:func:`enode_user_id`): the
  database gives it, with a conditional UPDATE, whatever user object (a cached
  one) and however many concurrent calls on however many instances ask.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from evlink.cache import ReadCache, user_tag, vehicle_tag
from evlink.domain import VehicleData
from evlink.errors import BadRequest, ForbiddenTier, NotFound
from evlink.models import Tier, User, Vehicle
from evlink.providers.simulator import simulator_vehicle_id
from evlink.ratelimit import parse_tier_counts
from evlink.resolvers import charging, vehicles
from evlink.resolvers.auth import IssuedKey, issue_key
from evlink.services import Services
from evlink.settings import Settings

__all__ = [
    "DEMO_EMAIL",
    "DemoAccount",
    "add_vehicle",
    "check_vehicle_limit",
    "create_user",
    "enode_user_id",
    "ensure_demo",
    "find_user",
    "ingest_reported_vehicle",
    "link_vehicle_account",
    "parse_tier",
    "register_vehicle",
    "remove_vehicle",
    "set_tier",
    "sync_vehicles",
    "upsert_provider_vehicle",
    "vehicle_limit",
]

logger = logging.getLogger(__name__)

# The documented defaults are the settings' own; a tier left out of the variable keeps its.
_DEFAULT_VEHICLE_LIMITS = parse_tier_counts(Settings().vehicle_limits)
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


def vehicle_limit(settings: Settings, tier: Tier) -> int | None:
    """How many vehicles a user of ``tier`` may have (None: no limit)."""
    return parse_tier_counts(settings.vehicle_limits, _DEFAULT_VEHICLE_LIMITS).get(tier)


async def check_vehicle_limit(settings: Settings, user: User) -> None:
    """403 FORBIDDEN_TIER when ``user`` already has as many vehicles as the tier allows."""
    limit = vehicle_limit(settings, user.tier)
    if limit is None:
        return
    if await Vehicle.filter(user=user, deleted_at=None).count() >= limit:
        plural = "vehicle" if limit == 1 else "vehicles"
        raise ForbiddenTier(
            f"The {user.tier.value} tier allows {limit} {plural}; remove one or upgrade"
        )


async def add_vehicle(
    user: User,
    *,
    provider: str,
    provider_vehicle_id: str | None,
    name: str | None = None,
    settings: Settings | None = None,
    cache: ReadCache | None = None,
) -> Vehicle:
    """Store a vehicle the caller has checked (the demo's simulated cars, tests); cars
    from users and the CLI go through :func:`register_vehicle`. With ``settings``,
    403 FORBIDDEN_TIER past the tier's vehicle limit (``EVLINK_VEHICLE_LIMITS``);
    without, no limit. ``cache`` is told that the user's vehicles changed."""
    if settings is not None:
        await check_vehicle_limit(settings, user)
    vehicle = await Vehicle.create(
        user=user, provider=provider, provider_vehicle_id=provider_vehicle_id, name=name
    )
    if cache is not None:
        await cache.invalidate(user_tag(user.id))
    return vehicle


async def register_vehicle(
    services: Services,
    user: User,
    *,
    provider_vehicle_id: str | None,
    provider: str | None = None,
    name: str | None = None,
) -> Vehicle:
    """Add ``user``'s car once the provider has it, within the tier's vehicle limit.

    ``provider`` must be the configured one (``EVLINK_PROVIDER``). The simulator makes a
    ``sim-plugged-…`` car when no id is given and refuses ids that are not its own;
    Enode's car must exist and belong to the user's link. A car the user removed comes
    back with its evlink id; one another user removed is forgotten first (its commands
    and charge states with it) and added anew.
    """
    configured = services.provider.name
    if provider is not None and provider != configured:
        raise BadRequest(f"provider must be {configured}, the one EVLINK_PROVIDER names")
    if provider_vehicle_id is None:
        if configured != "simulator":
            raise BadRequest(
                f"a {configured} vehicle id is required "
                "(`evlink enode sync` imports every car of a linked user)"
            )
        provider_vehicle_id = simulator_vehicle_id("plugged")
    await check_vehicle_limit(services.settings, user)
    existing = await Vehicle.get_or_none(
        provider=configured, provider_vehicle_id=provider_vehicle_id
    )
    if existing is not None and existing.deleted_at is None:
        raise BadRequest(
            f"{configured} vehicle {provider_vehicle_id} is vehicle {existing.id} already"
        )
    data = await _provider_vehicle(services, user, provider_vehicle_id)
    if existing is not None and existing.user_id == user.id:  # type: ignore[attr-defined]
        existing.deleted_at = existing.removed_at = None
        existing.name = name or existing.name
        await existing.save(update_fields=["deleted_at", "removed_at", "name"])
        vehicle = existing
    else:
        if existing is not None:
            await existing.delete()  # another user's removed car: its history is theirs
        try:
            vehicle = await Vehicle.create(
                user=user, provider=configured, provider_vehicle_id=provider_vehicle_id, name=name
            )
        except IntegrityError:
            raise BadRequest(f"{configured} vehicle {provider_vehicle_id} was just added") from None
    await services.cache.invalidate(user_tag(user.id))
    await vehicles.record_vehicle_data(services, vehicle, data)
    return vehicle


async def _provider_vehicle(
    services: Services, user: User, provider_vehicle_id: str
) -> VehicleData:
    """The car as its provider has it; for Enode, only a car of the user's own link."""
    provider = services.provider.name
    if provider == "enode" and user.enode_user_id is None:
        raise BadRequest(
            f"{user.email} has no Enode link yet: `evlink enode link --user {user.email}`"
        )
    try:
        data = await services.provider.get_vehicle(provider_vehicle_id)
    except NotFound:
        raise NotFound(f"{provider} has no vehicle {provider_vehicle_id}") from None
    if provider == "enode" and data.user_id != user.enode_user_id:
        # Said as a missing car would be: whose car it is stays unsaid.
        raise NotFound(f"{provider} has no vehicle {provider_vehicle_id} in {user.email}'s link")
    return data


async def remove_vehicle(services: Services, vehicle: Vehicle) -> int:
    """Remove a car: it answers 404 and leaves the tier's count at once; its PENDING
    commands end CANCELLED; subscriptions following it end with NOT_FOUND. Returns how
    many commands were cancelled. The row stays (``deleted_at``, ``removed_at``): the
    provider's reports of the car (webhooks, sync) do not bring it back; adding it
    again does."""
    now = datetime.now(UTC)
    removed = await Vehicle.filter(id=vehicle.id, deleted_at=None).update(
        deleted_at=now, removed_at=now
    )
    if not removed:
        raise NotFound(f"no vehicle {vehicle.id}")
    cancelled = await charging.cancel_vehicle_commands(services, vehicle, "the vehicle was removed")
    owner_id: int = vehicle.user_id  # type: ignore[attr-defined]
    # The user's tag reaches the websockets of every instance (evlink.revocation).
    await services.cache.invalidate(vehicle_tag(vehicle.id), user_tag(owner_id))
    return cancelled


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
    return await services.provider.link_user(await enode_user_id(services, user), redirect_uri)


async def enode_user_id(services: Services, user: User) -> str:
    """The user's Enode user id, given on first use: one per user, ever.

    ``user`` may be seconds old (the auth cache) and other calls, here or on another
    instance, may be giving it an id right now. So the database decides: only a row
    still without an id takes this one (``UPDATE … WHERE enode_user_id IS NULL``), and
    the id is then read back, whoever's it is.
    """
    if user.enode_user_id is not None:
        return user.enode_user_id  # an id, once given, never changes
    await User.filter(id=user.id, enode_user_id__isnull=True).update(
        enode_user_id=str(uuid.uuid4())
    )
    stored = await User.get_or_none(id=user.id)
    if stored is None or stored.enode_user_id is None:
        raise NotFound(f"no user {user.email}")  # deleted meanwhile
    user.enode_user_id = stored.enode_user_id
    await services.cache.invalidate(user_tag(user.id))  # cached copies without the id
    return user.enode_user_id


async def upsert_provider_vehicle(
    services: Services, owner: User, data: VehicleData
) -> Vehicle | None:
    """Add a vehicle the provider reports for ``owner`` (or bring it back, unless it was
    removed by hand: ``evlink vehicle remove``), then record it.

    Past the tier's vehicle limit a new (or deleted) vehicle is not added: None, and
    a warning in the log. The provider's account may hold more cars than the plan;
    refusing the webhook would only make the provider send it again.
    """
    provider = services.provider.name
    vehicle = await Vehicle.get_or_none(provider=provider, provider_vehicle_id=data.id)
    if vehicle is not None and vehicle.removed_at is not None:
        logger.info(
            "vehicle %s (%s %s) was removed by hand: not added back", vehicle.id, provider, data.id
        )
        return None
    if vehicle is None or vehicle.deleted_at is not None:
        try:
            await check_vehicle_limit(services.settings, owner)
        except ForbiddenTier as refused:
            logger.warning(
                "vehicle %s %s of user %s not added: %s", provider, data.id, owner.id, refused
            )
            return None
    if vehicle is None:
        vehicle = await Vehicle.create(
            user=owner,
            provider=provider,
            provider_vehicle_id=data.id,
            provider_user_id=data.user_id,
        )
        logger.info("vehicle %s (%s %s) added for user %s", vehicle.id, provider, data.id, owner.id)
    elif vehicle.deleted_at is not None:
        vehicle.deleted_at = None
        await vehicle.save(update_fields=["deleted_at"])
    await services.cache.invalidate(user_tag(owner.id))  # its vehicles may have changed
    await vehicles.record_vehicle_data(services, vehicle, data)
    return vehicle


async def ingest_reported_vehicle(
    services: Services, provider_user_id: str, data: VehicleData
) -> None:
    """A vehicle the provider reports for one of its users (Enode's ``discovered`` and
    ``updated`` webhooks): recorded on its vehicle, or added (:func:`upsert_provider_vehicle`)
    to the evlink user linked to ``provider_user_id`` (the report's own when empty)."""
    provider = services.provider.name
    vehicle = await Vehicle.get_or_none(provider=provider, provider_vehicle_id=data.id)
    if vehicle is not None and vehicle.deleted_at is None:
        await vehicles.record_vehicle_data(services, vehicle, data)
        return
    owner = await User.get_or_none(enode_user_id=provider_user_id or data.user_id)
    if owner is None:
        logger.warning("vehicle %s %s belongs to no linked evlink user", provider, data.id)
        return
    await upsert_provider_vehicle(services, owner, data)


async def sync_vehicles(services: Services, user: User) -> list[Vehicle]:
    """Import every vehicle the provider lists for ``user`` (those within the tier's limit)."""
    if user.enode_user_id is None:
        raise BadRequest(f"{user.email} has not linked a vehicle account yet")
    listed = await services.provider.list_vehicles(user.enode_user_id)
    imported = [await upsert_provider_vehicle(services, user, data) for data in listed]
    return [vehicle for vehicle in imported if vehicle is not None]
