"""Reading vehicles and their charge state, fresh enough and never a provider storm.

A read serves the stored state while it is younger than ``max_age``; an older
one refreshes from the provider first, and concurrent reads of one vehicle
share that one provider call. A read waits for that refresh at most the read
budget (``provider_read_budget``), counted from when the refresh began; past it,
and when the provider fails, the stored state is served with its own
``lastUpdated`` (stale but true), while the refresh goes on in the background
and stores what it finds for later reads. With nothing stored the client gets
the provider's error, or 504 once the budget is spent.
Every accepted change is published on the vehicle's charge-state topic, and
every write invalidates the vehicle in the read cache (:mod:`evlink.cache`), from
which :func:`read_status` answers the polls in between.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from tortoise.exceptions import IntegrityError
from tortoise.queryset import QuerySet

from evlink.cache import user_tag, vehicle_tag
from evlink.domain import ChargeStateData, VehicleData
from evlink.errors import (
    EvlinkError,
    ForbiddenOwner,
    NotFound,
    ProviderLinkMissing,
    ProviderUnavailable,
)
from evlink.events import charge_state_topic
from evlink.models import ChargeState, ChargingSession, User, Vehicle
from evlink.models.backends import RowUpdate, transaction
from evlink.models.users import ActiveKey, active_key_with_user
from evlink.models.vehicles import (
    CHARGE_STATE_FIELDS,
    AnyVehicle,
    StoredVehicle,
    VehicleRow,
    active_key_with_vehicle,
    as_model,
    charge_state_of,
    vehicle_with_charge_state,
)
from evlink.resolvers import rules, sessions
from evlink.services import Refresh, Services

__all__ = [
    "StatusRead",
    "VehicleStatus",
    "ensure_synced",
    "fresh_for",
    "get_vehicle",
    "get_vehicle_with_state",
    "ingest_vehicle_update",
    "list_vehicles",
    "provider_account_unreachable",
    "provider_link_missing",
    "provider_vehicle_deleted",
    "read_status",
    "record_vehicle_data",
    "vehicle_status",
]

logger = logging.getLogger(__name__)

# What a provider report may change on a vehicle; the rest (owner, name) is evlink's own.
_PROVIDER_FIELDS = [
    "vendor",
    "provider_user_id",
    "information",
    "capabilities",
    "smart_charging_policy",
    "location",
    "odometer",
    "last_seen",
    "is_reachable",
    "refreshed_at",
]


@dataclass(frozen=True, slots=True)
class VehicleStatus:
    """A vehicle with the charge state that goes with it.

    ``vehicle``: the model, or on a status read the stored row's read-only view of it
    (:class:`~evlink.models.vehicles.StoredVehicle`). ``rendered``: answers made from
    this status, by whoever renders them (the REST bodies), so that a status served from
    the read cache is rendered once.
    """

    vehicle: AnyVehicle
    charge_state: ChargeStateData
    rendered: dict[object, bytes] = field(default_factory=dict, compare=False, repr=False)


def parse_vehicle_id(vehicle_id: str | UUID) -> UUID:
    """A vehicle id from a path or argument; anything that is not a UUID is no vehicle."""
    if isinstance(vehicle_id, UUID):
        return vehicle_id
    try:
        return UUID(vehicle_id)
    except (ValueError, AttributeError, TypeError):
        raise NotFound() from None


async def get_vehicle(user: User, vehicle_id: str | UUID) -> Vehicle:
    """The user's vehicle: 404 when there is none, 403 when it is someone else's."""
    vehicle = await Vehicle.get_or_none(id=parse_vehicle_id(vehicle_id), deleted_at=None)
    if vehicle is None:
        raise NotFound()
    _check_owner(user, vehicle)
    return vehicle


async def get_vehicle_with_state(
    user: User, vehicle_id: str | UUID, along: StatusRead | None = None
) -> tuple[StoredVehicle, ChargeStateData | None]:
    """The user's vehicle as :func:`get_vehicle` finds it, with its stored charge state
    read in the same statement (:func:`~evlink.models.vehicles.vehicle_with_charge_state`),
    both without models (the vehicle read-only: :func:`~evlink.models.vehicles.as_model`
    makes the model to change).

    ``along``: the key's lookup of this request, which may have read this vehicle
    already (:class:`StatusRead`, GraphQL's known ``vehicle(id:)`` query); its row is
    taken once, and only for the id it was read for."""
    parsed = parse_vehicle_id(vehicle_id)
    row = along.take(parsed) if along is not None else None
    found = row.stored() if row is not None else await vehicle_with_charge_state(parsed)
    if found is None:
        raise NotFound()
    _check_owner(user, found[0])
    return found


class StatusRead:
    """A status read that rides along with the key's lookup: passed as the ``lookup`` of
    :func:`~evlink.resolvers.auth.authenticate_request`, it reads the active key with
    its user, the vehicle and its stored charge state in one statement
    (:func:`~evlink.models.vehicles.active_key_with_vehicle`), and :func:`read_status`
    then takes the vehicle from there instead of reading it.

    Only the database read moves: the key is still judged first (an unknown or revoked
    key is refused whatever the vehicle), the rate limits are charged between the two as
    before, and the vehicle is judged after them (404, 403, the read cache, freshness)
    exactly as a read of its own would be. An id that is no UUID reads the key alone.

    GraphQL's known ``vehicle(id:)`` query uses it the same way (the view passes it as
    the lookup, its ``vehicle`` resolver takes the row: :func:`get_vehicle_with_state`).
    """

    __slots__ = ("_cache", "_read_id", "_vehicle_id", "began", "row")

    def __init__(self, services: Services, vehicle_id: str) -> None:
        self._cache = services.cache
        self._vehicle_id = vehicle_id  # parsed only if the key must be read
        self._read_id: UUID | None = None  # the id the row was read for
        self.began = 0  # the read cache's generation before the statement
        self.row: VehicleRow | None = None  # the vehicle's part, once read

    async def lookup(self, key_hash: str) -> ActiveKey | None:
        try:
            vehicle_id = parse_vehicle_id(self._vehicle_id)
        except NotFound:  # read_status answers it, after the key and the limits
            return await active_key_with_user(key_hash)
        self.began = self._cache.begin()
        found = await active_key_with_vehicle(key_hash, vehicle_id)
        if found is None:
            return None
        key, self.row = found
        self._read_id = vehicle_id
        return key

    def take(self, vehicle_id: UUID) -> VehicleRow | None:
        """The row read for ``vehicle_id``, handed out once (a later read of it reads
        the database); None when none was read, or for another id."""
        row, self.row = self.row, None
        return row if row is not None and self._read_id == vehicle_id else None


def _check_owner(user: User, vehicle: AnyVehicle) -> None:
    if vehicle.user_id != user.id:  # type: ignore[union-attr]
        raise ForbiddenOwner()


async def read_status(
    services: Services, user: User, vehicle_id: str | UUID, along: StatusRead | None = None
) -> VehicleStatus:
    """The user's vehicle with its charge state (:func:`get_vehicle`, :func:`vehicle_status`),
    from the read cache while the stored state is younger than the max age.

    ``along``: the key's lookup of this request, which may have read the vehicle already
    (:class:`StatusRead`). A cached status is never mutated: a refresh reads the vehicle
    from the database.
    """
    # Keyed by the id as asked (parsed only on a miss): a UUID spelt another way is
    # another entry, never another vehicle's.
    key = ("status", str(vehicle_id))
    cache = services.cache
    cached: VehicleStatus | None = cache.get(key) if cache.enabled else None
    if cached is not None:
        _check_owner(user, cached.vehicle)
        return cached
    if along is not None and along.row is not None:
        began = along.began
        found = along.row.stored()
        if found is None:
            raise NotFound()
        vehicle, stored = found
        _check_owner(user, vehicle)
    else:
        began = cache.begin()
        vehicle, stored = await get_vehicle_with_state(user, vehicle_id)
    status = await vehicle_status(services, vehicle, stored=stored)
    lifetime = fresh_for(services, status.vehicle)
    if lifetime > 0:
        cache.put(key, status, tags=[vehicle_tag(vehicle.id)], began=began, max_age=lifetime)
    return status


def fresh_for(services: Services, vehicle: AnyVehicle) -> float:
    """Seconds until a read of ``vehicle`` must refresh it from the provider (0: now)."""
    return rules.fresh_for(vehicle.refreshed_at, _now(), services.settings.status_max_age)


async def list_vehicles(user: User) -> list[Vehicle]:
    return await Vehicle.filter(user=user, deleted_at=None).order_by("created_at", "id")


async def ensure_synced(services: Services, owned: list[Vehicle]) -> list[Vehicle]:
    """Read never-synced vehicles from their provider once, so every block is filled in.

    A vehicle that cannot be read (no link, provider down) is returned as stored.
    """
    never = [v for v in owned if v.refreshed_at is None and v.provider_vehicle_id is not None]
    if never:
        results = await asyncio.gather(
            *(_refresh_once(services, v) for v in never), return_exceptions=True
        )
        for vehicle, result in zip(never, results, strict=True):
            if isinstance(result, EvlinkError):
                logger.warning("first read of vehicle %s failed: %s", vehicle.id, result.code)
            elif isinstance(result, BaseException):
                raise result
    return owned


async def stored_charge_state(vehicle: AnyVehicle) -> ChargeStateData | None:
    return await charge_state_of(vehicle.id)


async def vehicle_status(
    services: Services,
    vehicle: AnyVehicle,
    max_age: float | None = None,
    *,
    within_budget: bool = True,
    stored: ChargeStateData | None = None,
) -> VehicleStatus:
    """The vehicle and its charge state, refreshed first when older than ``max_age`` seconds.

    ``within_budget``: wait for the refresh at most the read budget (reads, the command
    watcher). ``set_charging`` passes False: it judges a command on what the provider
    says, within the provider's own timeouts. ``stored``: the stored charge state when
    the caller read it with ``vehicle`` (:func:`read_status`); else it is read here.
    """
    if vehicle.provider_vehicle_id is None:
        raise provider_link_missing(services, vehicle)
    age = services.settings.status_max_age if max_age is None else max_age
    if rules.is_fresh(vehicle.refreshed_at, _now(), age):
        if stored is None:
            stored = await stored_charge_state(vehicle)
        if stored is not None:
            return VehicleStatus(vehicle, stored)
    return await _refresh_once(services, vehicle, within_budget=within_budget)


def provider_link_missing(services: Services, vehicle: AnyVehicle) -> ProviderLinkMissing:
    """The REST contract's 500 PROVIDER_LINK_MISSING for a car stored without a provider
    id (before `evlink vehicle add` asked the provider), saying what to run; logged as a
    WARNING once per vehicle and process, not at each poll."""
    if vehicle.id not in services.unlinked_logged:
        services.unlinked_logged.add(vehicle.id)
        logger.warning(
            "vehicle %s has no provider id: `evlink vehicle remove %s`, then add the car "
            "again with `evlink vehicle add`",
            vehicle.id,
            vehicle.id,
        )
    return ProviderLinkMissing(
        f"Vehicle {vehicle.id} has no provider id: run `evlink vehicle remove {vehicle.id}`, "
        "then `evlink vehicle add` with the car's provider id"
    )


async def _refresh_once(
    services: Services, vehicle: AnyVehicle, *, within_budget: bool = True
) -> VehicleStatus:
    loop = asyncio.get_running_loop()
    refresh = services.refreshes.get(vehicle.id)
    if refresh is None:
        # The refresh changes and saves the model (a stored vehicle is read-only).
        task = asyncio.ensure_future(_refresh(services, as_model(vehicle)))
        refresh = services.refreshes[vehicle.id] = Refresh(task, started=loop.time())
        task.add_done_callback(lambda done: _refreshed(services, vehicle.id, done))
    if not within_budget:
        # A caller that goes away must not cancel the refresh the others wait on.
        return await asyncio.shield(refresh.task)
    # The budget counts from the refresh's start: every read that joins it (a GraphQL
    # query's first listing, then its chargeState) answers within one budget.
    remaining = refresh.started + services.settings.provider_read_budget - loop.time()
    if remaining > 0:
        await asyncio.wait([refresh.task], timeout=remaining)  # never cancels the refresh
    if refresh.task.done():
        return refresh.task.result()
    stored = await stored_charge_state(vehicle)
    if stored is None:
        raise ProviderUnavailable("The vehicle provider did not answer in time", status=504)
    logger.warning(
        "vehicle %s: the provider has not answered within %.1f s; serving the stored state",
        vehicle.id,
        services.settings.provider_read_budget,
    )
    return VehicleStatus(vehicle, stored)


def _refreshed(services: Services, vehicle_id: UUID, task: asyncio.Task[VehicleStatus]) -> None:
    """A refresh ended: the next read starts another. Its failure was the waiting reads'
    to raise; one nobody waited for any more is logged here, unless the provider's."""
    services.refreshes.pop(vehicle_id, None)
    if task.cancelled():
        return
    failure = task.exception()
    if failure is not None and not isinstance(failure, EvlinkError):
        logger.warning("vehicle %s: refresh failed: %r", vehicle_id, failure)


async def _refresh(services: Services, vehicle: Vehicle) -> VehicleStatus:
    assert vehicle.provider_vehicle_id is not None
    try:
        data = await services.provider.get_vehicle(vehicle.provider_vehicle_id)
    except EvlinkError as exc:
        stored = await stored_charge_state(vehicle)
        if stored is None:
            raise
        logger.warning(
            "provider read of vehicle %s failed (%s: %s); serving the stored state",
            vehicle.id,
            exc.code,
            exc.message,
        )
        return VehicleStatus(vehicle, stored)
    state = await record_vehicle_data(services, vehicle, data)
    return VehicleStatus(vehicle, state)


async def record_vehicle_data(
    services: Services, vehicle: Vehicle, data: VehicleData
) -> ChargeStateData:
    """Store what the provider reported, never letting an older report win; publish changes."""
    now = _now()
    if data.last_seen is None or vehicle.last_seen is None or data.last_seen >= vehicle.last_seen:
        vehicle.vendor = data.vendor or vehicle.vendor
        vehicle.provider_user_id = data.user_id or vehicle.provider_user_id
        vehicle.information = data.information or vehicle.information
        vehicle.capabilities = data.capabilities or vehicle.capabilities
        vehicle.smart_charging_policy = data.smart_charging_policy
        vehicle.location = data.location or vehicle.location
        vehicle.odometer = data.odometer or vehicle.odometer
        vehicle.last_seen = data.last_seen or vehicle.last_seen
        if data.is_reachable is not None:
            vehicle.is_reachable = data.is_reachable
    vehicle.refreshed_at = now
    # The vehicle's write: a statement made once (``save`` builds its query each time).
    write = RowUpdate(
        Vehicle, "id", vehicle.id, {name: getattr(vehicle, name) for name in _PROVIDER_FIELDS}
    )
    try:
        stored = await charge_state_of(vehicle.id)
        if stored is not None and _no_news(data.charge_state, stored):
            # Most refreshes: the car as stored. Its row alone, in one statement: the
            # state is not written, whatever another writer stores meanwhile (each one
            # only moves it forward, :func:`_record_charge_state`).
            await write.run()
            return stored
        # One commit for all of it: the vehicle, its charge state, its session.
        async with transaction():
            await write.run()
            written = await _record_charge_state(services, vehicle, data.charge_state)
    finally:
        await services.cache.invalidate(vehicle_tag(vehicle.id))
    if written.changed:  # published once committed, so that a reader finds it stored
        await _publish(services, vehicle, written.state)
        await sessions.publish(services, written.sessions)
    return written.state


@dataclass(frozen=True, slots=True)
class _Written:
    state: ChargeStateData  # the car's charge state now
    changed: bool  # the state was new: stored, and taken into the sessions
    sessions: list[ChargingSession]  # the sessions it changed


async def _record_charge_state(
    services: Services, vehicle: Vehicle, incoming: ChargeStateData
) -> _Written:
    values = {name: getattr(incoming, name) for name in CHARGE_STATE_FIELDS}
    current = await charge_state_of(vehicle.id)
    if current is None:
        try:
            async with transaction():  # a savepoint: its failure leaves the rest standing
                await ChargeState.create(vehicle_id=vehicle.id, **values)
        except IntegrityError:  # a concurrent writer created it first
            current = await charge_state_of(vehicle.id)
            if current is None:
                raise
        else:
            changed = await sessions.record_state(services, vehicle, None, incoming)
            return _Written(incoming, True, changed)
    if _no_news(incoming, current):
        return _Written(current, False, [])
    # The state's write goes with the sessions' first statement (one database call for
    # both when the car's open session is remembered).
    write = RowUpdate(ChargeState, "vehicle_id", vehicle.id, values)
    changed = await sessions.record_state(services, vehicle, current, incoming, along=write)
    return _Written(incoming, True, changed)


def _is_older(incoming: datetime | None, stored: datetime | None) -> bool:
    return incoming is not None and stored is not None and incoming < stored


def _no_news(incoming: ChargeStateData, stored: ChargeStateData) -> bool:
    """Whether ``incoming`` leaves the stored state as it is: the same, or older."""
    return _is_older(incoming.last_updated, stored.last_updated) or incoming == stored


async def _publish(services: Services, vehicle: Vehicle, state: ChargeStateData) -> None:
    await services.events.publish(
        charge_state_topic(vehicle.id), {"vehicleId": str(vehicle.id), **state.to_enode()}
    )


async def ingest_vehicle_update(services: Services, data: VehicleData) -> None:
    """A vehicle change pushed by the provider (webhook, simulator step)."""
    vehicles = await Vehicle.filter(
        provider=services.provider.name, provider_vehicle_id=data.id, deleted_at=None
    )
    for vehicle in vehicles:
        await record_vehicle_data(services, vehicle, data)


async def provider_vehicle_deleted(services: Services, provider_vehicle_id: str) -> None:
    """The provider deleted a vehicle from its user's account: deleted here too
    (``deleted_at``; a later report of it adds it back)."""
    deleted = Vehicle.filter(
        provider=services.provider.name, provider_vehicle_id=provider_vehicle_id, deleted_at=None
    )
    await _updating(services, deleted, deleted_at=_now())


async def provider_account_unreachable(services: Services, provider_user_id: str) -> None:
    """The provider lost its user's credentials: every vehicle of that account is
    unreachable until a report says otherwise."""
    unreachable = Vehicle.filter(provider=services.provider.name, provider_user_id=provider_user_id)
    await _updating(services, unreachable, is_reachable=False)


async def _updating(services: Services, vehicles: QuerySet[Vehicle], **values: Any) -> None:
    """Update ``vehicles`` and invalidate them (and their owners' lists) in the read cache."""
    touched = await vehicles.values_list("id", "user_id")
    await vehicles.update(**values)
    tags = {vehicle_tag(vehicle_id) for vehicle_id, _ in touched}
    tags |= {user_tag(owner_id) for _, owner_id in touched}
    await services.cache.invalidate(*sorted(tags))


def _now() -> datetime:
    return datetime.now(UTC)
