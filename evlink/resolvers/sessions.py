"""Charging sessions: one ledger of every charge, fed by every recorded charge state.

Every charge state that :mod:`evlink.resolvers.vehicles` accepts (a poll, a
webhook, the simulator's step, the watcher's read) comes to :func:`record_state`,
in the transaction that writes it (one commit for the car, its charge state, the
session and its sample). The rules:

- **Open.** A state with ``isCharging`` true opens a session when the car has
  none open. ``startedBy`` is EVLINK (with the command) when a PENDING or
  CONFIRMED START command of evlink for the car was made within
  ``EVLINK_CHARGING_DEADLINE`` before, else OTHER. The user's tariff is copied
  into the session (a later change does not rewrite its cost).
- **Grow.** Each later state is a sample: the charge rate is integrated over the
  time since the previous sample (a trapezoid, kW over hours), and that energy is
  priced at the price in force at the interval's start (:mod:`evlink.tariffs`).
- **Close.** A state with ``isCharging`` false, or not plugged in, ends it:
  UNPLUGGED when not plugged in, COMPLETE when full or at the charge limit, else
  STOPPED. A session that has had no state for ``EVLINK_SESSION_STALE_AFTER`` ends
  UNREACHABLE at its last sample: when the next state comes (provider time) or
  when it is read (evlink's clock, :func:`close_stale`).
- **Exactly once.** A sample is identified by its session and its time (the
  state's ``lastUpdated``). The session's totals move by a compare-and-set on its
  sample count, and only for a sample later than its latest: a state delivered
  twice (webhook and poll, two instances), late or out of order never counts
  twice nor moves a session backwards. A unique index on (session, time) keeps
  the samples themselves unique, and one on the open session per car (migration
  0008) makes two instances that both see the start open one session.
- **Remembered, not trusted.** Each process remembers the open session it last
  read, or wrote once that write is committed (:func:`publish`), per car
  (``Services.open_sessions``, at most ``MAX_REMEMBERED`` cars) and takes a state
  into it without reading it first: the compare-and-set on its sample count (and
  ``ended_at`` null) is what proves it current. When it fails (another instance
  or writer moved or ended it), the session is read again, so a stale memory
  costs a query, never a count. A write rolled back is never remembered: a
  memory ahead of the database would take a state delivered again for one
  already counted.

Energy: ``energyKwh`` is the integrated power when the session has at least two
samples with a charge rate, else the battery's change times its capacity; both
estimates are kept (:class:`Summary`). Changes are published on the car's
``vehicle:<id>:charging-session`` topic once they are committed (:func:`publish`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from tortoise.exceptions import IntegrityError

from evlink.domain import ChargeStateData, ChargingAction
from evlink.errors import BadRequest, NotFound
from evlink.events import charging_session_topic
from evlink.models import ChargingCommand, CommandState, User, Vehicle
from evlink.models.backends import RowUpdate, transaction
from evlink.models.sessions import (
    ChargingSample,
    ChargingSession,
    EndReason,
    StartedBy,
    UserTariff,
    advance_session,
)
from evlink.models.vehicles import AnyVehicle
from evlink.services import Services
from evlink.tariffs import Period, Tariff

__all__ = [
    "Bucket",
    "GroupBy",
    "Summary",
    "close_stale",
    "current_session",
    "end_reason",
    "get_session",
    "get_tariff",
    "interval_energy",
    "list_sessions",
    "publish",
    "record_state",
    "samples_of",
    "set_tariff",
    "statistics",
    "summary",
]

logger = logging.getLogger(__name__)

MAX_TRIES = 5  # compare-and-set rounds against other writers of the same session
MAX_LIST = 100  # sessions in one list
MAX_REMEMBERED = 10_000  # cars whose open session a process remembers (oldest forgotten)


# -- pure rules --------------------------------------------------------------------------


def end_reason(state: ChargeStateData) -> EndReason | None:
    """Why this state ends an open session; None when it does not."""
    if state.is_plugged_in is False:
        return EndReason.UNPLUGGED
    if state.is_charging is not False:
        return None
    full = state.is_fully_charged is True or (
        state.battery_level is not None
        and state.charge_limit is not None
        and state.battery_level >= state.charge_limit
    )
    return EndReason.COMPLETE if full else EndReason.STOPPED


def interval_energy(rate_before: float | None, rate_after: float | None, seconds: float) -> float:
    """kWh between two samples: the trapezoid of their rates (kW; unknown is 0)."""
    return ((rate_before or 0.0) + (rate_after or 0.0)) / 2 * max(0.0, seconds) / 3600


class EnergyMethod(StrEnum):
    POWER = "POWER"  # the charge rate integrated over time
    BATTERY = "BATTERY"  # the battery's change times its capacity


@dataclass(frozen=True, slots=True)
class Summary:
    """A session as clients see it: the stored row and what follows from it."""

    session: ChargingSession
    energy_kwh: float | None
    energy_method: EnergyMethod
    energy_from_power: float
    energy_from_battery: float | None
    cost: float | None
    currency: str | None
    duration_seconds: float
    average_power: float | None

    @property
    def active(self) -> bool:
        return self.session.ended_at is None


def summary(session: ChargingSession) -> Summary:
    """The session's energy (the method its samples allow), cost, duration, power."""
    from_battery = _energy_from_battery(session)
    tariff = Tariff.from_json(session.tariff) if session.tariff else None
    energy: float | None
    if session.rated_sample_count >= 2:
        method, energy = EnergyMethod.POWER, session.energy_from_power
        cost = session.cost_from_power
    else:
        method, energy = EnergyMethod.BATTERY, from_battery
        cost = None
        if tariff is not None and from_battery is not None:
            cost = from_battery * tariff.price_at(session.started_at)
    end = session.ended_at or session.last_sample_at
    seconds = max(0.0, (end - session.started_at).total_seconds())
    average = energy / (seconds / 3600) if energy is not None and seconds > 0 else None
    return Summary(
        session=session,
        energy_kwh=_round(energy),
        energy_method=method,
        energy_from_power=round(session.energy_from_power, 4),
        energy_from_battery=_round(from_battery),
        cost=_round(cost),
        currency=tariff.currency if tariff is not None else None,
        duration_seconds=seconds,
        average_power=_round(average),
    )


def _energy_from_battery(session: ChargingSession) -> float | None:
    start, end, capacity = session.battery_start, session.battery_end, session.battery_capacity
    if start is None or end is None or capacity is None:
        return None
    return (end - start) / 100 * capacity


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# -- recording -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Sample:
    at: datetime
    state: ChargeStateData


async def record_state(
    services: Services,
    vehicle: Vehicle,
    previous: ChargeStateData | None,
    state: ChargeStateData,
    along: RowUpdate | None = None,
) -> list[ChargingSession]:
    """Take a newly stored charge state into the car's sessions (see the module's rules),
    in the transaction that stores it; the sessions it changed, for :func:`publish` once
    that is committed (this process remembers them then, not before).

    ``previous``: the state it replaced. When neither is charging no session can be
    open or open now: nothing is read, and this process forgets the one it remembers.
    ``along``: the write of that state, not run yet: run here before any statement of
    the sessions, in the same database call as the session's compare-and-set when the
    open session is remembered (one trip for both), else alone.
    """
    return await _record(services, vehicle, previous, state, _Along(along))


@dataclass(slots=True)
class _Along:
    """A write to run before the sessions' statements, taken by the first of them."""

    update: RowUpdate | None

    def take(self) -> RowUpdate | None:
        update, self.update = self.update, None
        return update

    async def run(self) -> None:
        update = self.take()
        if update is not None:
            await update.run()


async def _record(
    services: Services,
    vehicle: Vehicle,
    previous: ChargeStateData | None,
    state: ChargeStateData,
    along: _Along,
) -> list[ChargingSession]:
    changed: list[ChargingSession] = []
    if state.is_charging is not True and (previous is None or previous.is_charging is not True):
        services.open_sessions.pop(vehicle.id, None)
        await along.run()
        return changed
    now = _now()
    sample = _Sample(state.last_updated or now, state)
    stale = timedelta(seconds=services.settings.session_stale_after)
    # Every way through the first try runs ``along`` before its first statement, or
    # carries it in the compare-and-set's call (a failed one too): never left over.
    for _ in range(MAX_TRIES):
        # What this process remembers is taken out: after a failed compare-and-set
        # (another writer was first) the next try finds nothing and reads the database.
        session = services.open_sessions.pop(vehicle.id, None)
        if session is None:
            await along.run()
            session = await _open_session(vehicle.id)
        if session is not None and sample.at - session.last_sample_at > stale:
            await along.run()
            if not await _end(session, EndReason.UNREACHABLE, session.last_sample_at):
                continue  # another writer moved it: look again
            changed.append(session)
            session = None
        if session is None:
            if state.is_charging is not True:
                return changed
            opened = await _open(services, vehicle, sample, now)
            if opened is not None:
                return [*changed, opened]
            continue  # another instance opened it: add to that one
        if sample.at <= session.last_sample_at:
            await along.run()
            _remember(services, session)
            return changed  # already counted, or older than what is counted
        if await _grow(session, sample, now, along.take()):
            return [*changed, session]
    logger.warning("vehicle %s: a charge state was not taken into its session", vehicle.id)
    return changed


async def _open_session(vehicle_id: UUID) -> ChargingSession | None:
    return await ChargingSession.get_or_none(vehicle_id=vehicle_id, ended_at=None)


def _remember(services: Services, session: ChargingSession) -> None:
    """Note ``session`` as its car's open one in this process (forget it once ended)."""
    memory = services.open_sessions
    vehicle_id = session.vehicle_id  # type: ignore[attr-defined]
    memory.pop(vehicle_id, None)
    if session.ended_at is not None:
        return
    if len(memory) >= MAX_REMEMBERED:
        del memory[next(iter(memory))]  # the car remembered longest ago
    memory[vehicle_id] = session


async def _open(
    services: Services, vehicle: Vehicle, sample: _Sample, now: datetime
) -> ChargingSession | None:
    """A new session from its first sample; None when the car has one open already."""
    state = sample.state
    command = await _starting_command(services, vehicle, now)
    tariff = await get_tariff_of(vehicle.user_id)  # type: ignore[attr-defined]
    try:
        async with transaction():  # a savepoint: its failure leaves the rest standing
            session = await ChargingSession.create(
                vehicle_id=vehicle.id,
                started_at=sample.at,
                started_by=StartedBy.EVLINK if command is not None else StartedBy.OTHER,
                command_id=command,
                battery_start=state.battery_level,
                battery_end=state.battery_level,
                range_start=state.range,
                range_end=state.range,
                battery_capacity=state.battery_capacity,
                energy_from_power=0.0,
                cost_from_power=0.0 if tariff is not None else None,
                peak_power=state.charge_rate,
                sample_count=1,
                rated_sample_count=1 if state.charge_rate is not None else 0,
                last_sample_at=sample.at,
                last_rate=state.charge_rate,
                last_recorded_at=now,
                tariff=tariff.to_json() if tariff is not None else None,
                location=vehicle.location,
            )
    except IntegrityError:
        return None
    await ChargingSample.create(session_id=session.id, **_row(sample))
    await _prune_samples(services, vehicle, now)
    return session


async def _starting_command(services: Services, vehicle: Vehicle, now: datetime) -> UUID | None:
    """evlink's START for this car that may have started this charge, if any."""
    window = timedelta(seconds=services.settings.charging_deadline)
    command = (
        await ChargingCommand.filter(
            vehicle_id=vehicle.id,
            action=ChargingAction.START,
            state__in=[CommandState.PENDING, CommandState.CONFIRMED],
            created_at__gte=now - window,
        )
        .order_by("-created_at")
        .first()
    )
    return None if command is None else command.id


async def _grow(
    session: ChargingSession, sample: _Sample, now: datetime, along: RowUpdate | None
) -> bool:
    """Integrate a later sample (and end the session on a closing one) by compare-and-set
    on the sample count; False when another writer changed the session first. ``along``
    runs first in the same database call, whatever the compare-and-set finds."""
    state = sample.state
    seconds = (sample.at - session.last_sample_at).total_seconds()
    energy = interval_energy(session.last_rate, state.charge_rate, seconds)
    values: dict[str, Any] = {
        "energy_from_power": session.energy_from_power + energy,
        "sample_count": session.sample_count + 1,
        "rated_sample_count": session.rated_sample_count + (state.charge_rate is not None),
        "last_sample_at": sample.at,
        "last_rate": state.charge_rate,
        "last_recorded_at": now,
        "battery_end": _latest(state.battery_level, session.battery_end),
        "range_end": _latest(state.range, session.range_end),
        "battery_capacity": _latest(state.battery_capacity, session.battery_capacity),
        "peak_power": max(
            (p for p in (session.peak_power, state.charge_rate) if p is not None), default=None
        ),
    }
    tariff = _tariff_of(session)
    if tariff is not None:
        price = tariff.price_at(session.last_sample_at)
        values["cost_from_power"] = (session.cost_from_power or 0.0) + energy * price
    reason = end_reason(state)
    if reason is not None:
        values["ended_at"] = sample.at
        values["end_reason"] = reason
    if not await advance_session(session.id, session.sample_count, values, _row(sample), along):
        return False
    # The row as written, without reading it back. Plain columns: Tortoise's
    # __setattr__ adds nothing for them (it checks relations and async defaults).
    vars(session).update(values)
    return True


_TARIFFS: dict[UUID, tuple[object, Tariff]] = {}  # by session: its tariff's JSON, parsed


def _tariff_of(session: ChargingSession) -> Tariff | None:
    """The session's tariff, parsed once per session and process (while the same JSON
    object is on it; as many sessions as are remembered)."""
    raw = session.tariff
    if raw is None:
        return None
    known = _TARIFFS.get(session.id)
    if known is not None and known[0] is raw:
        return known[1]
    tariff = Tariff.from_json(raw)
    if len(_TARIFFS) >= MAX_REMEMBERED:
        del _TARIFFS[next(iter(_TARIFFS))]
    _TARIFFS[session.id] = (raw, tariff)
    return tariff


def _latest(value: Any, stored: Any) -> Any:
    return stored if value is None else value


def _row(sample: _Sample) -> dict[str, Any]:
    """The sample's stored fields but its session. A sample is stored by the writer
    whose compare-and-set counted it, in the same transaction: never twice."""
    state = sample.state
    return {
        "at": sample.at,
        "battery_level": state.battery_level,
        "range": state.range,
        "charge_rate": state.charge_rate,
        "is_plugged_in": state.is_plugged_in,
        "is_charging": state.is_charging,
    }


async def _end(session: ChargingSession, reason: EndReason, at: datetime) -> bool:
    """End the session by compare-and-set; False when another writer changed it first."""
    values = {"ended_at": at, "end_reason": reason}
    if not await advance_session(session.id, session.sample_count, values):
        return False
    await session.refresh_from_db()
    return True


async def _prune_samples(services: Services, vehicle: Vehicle, now: datetime) -> None:
    """Drop the samples of the car's sessions that ended before the keep-days."""
    cutoff = now - timedelta(days=services.settings.session_samples_keep_days)
    ended = await ChargingSession.filter(vehicle_id=vehicle.id, ended_at__lt=cutoff).values_list(
        "id", flat=True
    )
    if ended:
        await ChargingSample.filter(session_id__in=list(ended)).delete()


async def publish(services: Services, sessions: Iterable[ChargingSession]) -> None:
    """Once the transaction that changed them is committed: remember each session as its
    car's open one in this process (an ended one forgotten) and tell the subscribers of
    its car that it changed. Never before the commit: a rolled-back change must neither
    reach a subscriber nor stay in this process's memory."""
    for session in sessions:
        _remember(services, session)
        vehicle_id = session.vehicle_id  # type: ignore[attr-defined]
        await services.events.publish(
            charging_session_topic(vehicle_id),
            {"vehicleId": str(vehicle_id), "id": str(session.id)},
        )


# -- reading ---------------------------------------------------------------------------------


async def close_stale(services: Services, vehicle: AnyVehicle) -> None:
    """End the car's open session UNREACHABLE when evlink has recorded no state for it
    within ``EVLINK_SESSION_STALE_AFTER`` (evlink's clock)."""
    session = await _open_session(vehicle.id)
    stale = timedelta(seconds=services.settings.session_stale_after)
    if session is None or _now() - session.last_recorded_at <= stale:
        return
    if await _end(session, EndReason.UNREACHABLE, session.last_sample_at):
        await publish(services, [session])


async def current_session(services: Services, vehicle: AnyVehicle) -> ChargingSession | None:
    """The car's open session, if any (a stale one is ended first)."""
    await close_stale(services, vehicle)
    return await _open_session(vehicle.id)


async def list_sessions(
    services: Services,
    vehicle: AnyVehicle,
    *,
    last: int = 20,
    before: datetime | None = None,
    since: datetime | None = None,
) -> list[ChargingSession]:
    """The car's sessions, newest first: at most ``last`` (0-100), started before
    ``before`` and at or after ``since``."""
    await close_stale(services, vehicle)
    query = ChargingSession.filter(vehicle_id=vehicle.id)
    if before is not None:
        query = query.filter(started_at__lt=before)
    if since is not None:
        query = query.filter(started_at__gte=since)
    limit = max(0, min(last, MAX_LIST))
    return await query.order_by("-started_at", "-id").limit(limit)


async def get_session(services: Services, user: User, session_id: str | UUID) -> ChargingSession:
    """A session of one of the user's cars; another user's answers as a missing one."""
    try:
        parsed = session_id if isinstance(session_id, UUID) else UUID(str(session_id))
    except ValueError:
        raise NotFound("Charging session not found") from None
    session = await ChargingSession.get_or_none(
        id=parsed, vehicle__user_id=user.id, vehicle__deleted_at__isnull=True
    )
    if session is None:
        raise NotFound("Charging session not found")
    if session.ended_at is None:
        await close_stale(services, await session.vehicle)
        await session.refresh_from_db()
    return session


async def samples_of(session: ChargingSession) -> list[ChargingSample]:
    """The samples kept of a session, oldest first (pruned ones are gone)."""
    return await ChargingSample.filter(session_id=session.id).order_by("at")


# -- statistics --------------------------------------------------------------------------------


class GroupBy(StrEnum):
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"


@dataclass(frozen=True, slots=True)
class Bucket:
    start: datetime
    energy_kwh: float
    cost: float | None
    currency: str | None
    session_count: int
    duration_seconds: float


async def statistics(
    services: Services,
    vehicle: AnyVehicle,
    start: datetime,
    end: datetime,
    group_by: GroupBy,
) -> list[Bucket]:
    """Sessions started in [start, end) summed per day, week (from Monday) or month of
    the owner's tariff time zone (UTC without a tariff); only buckets with sessions."""
    if end <= start:
        raise BadRequest("to must be after from")
    await close_stale(services, vehicle)
    tariff = await get_tariff_of(vehicle.user_id)  # type: ignore[union-attr]
    zone = ZoneInfo(tariff.time_zone if tariff is not None else "UTC")
    sessions = await ChargingSession.filter(
        vehicle_id=vehicle.id, started_at__gte=start, started_at__lt=end
    ).order_by("started_at")
    groups: dict[datetime, list[Summary]] = {}
    for session in sessions:
        groups.setdefault(bucket_start(session.started_at, group_by, zone), []).append(
            summary(session)
        )
    return [_bucket(begin, items) for begin, items in sorted(groups.items())]


def bucket_start(instant: datetime, group_by: GroupBy, zone: ZoneInfo) -> datetime:
    """The start of the day, week or month holding ``instant`` in ``zone``, in UTC."""
    local = instant.astimezone(zone)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if group_by is GroupBy.WEEK:
        day = day - timedelta(days=day.weekday())  # wall-clock arithmetic in ``zone``
    elif group_by is GroupBy.MONTH:
        day = day.replace(day=1)
    return day.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Totals:
    """What sessions add up to, rounded as each session is (the one rule for REST's
    ``total`` and GraphQL's statistics buckets)."""

    energy_kwh: float
    cost: float | None
    currency: str | None
    count: int
    duration_seconds: float


def totals(items: Iterable[Summary]) -> Totals:
    """The sums of ``items``; ``cost`` and ``currency`` are None unless every priced
    session has the same currency (energy in two currencies has no one price)."""
    items = list(items)
    currencies = {s.currency for s in items if s.cost is not None}
    one = len(currencies) == 1
    return Totals(
        energy_kwh=round(sum(s.energy_kwh or 0.0 for s in items), 4),
        cost=round(sum(s.cost or 0.0 for s in items), 4) if one else None,
        currency=next(iter(currencies)) if one else None,
        count=len(items),
        duration_seconds=round(sum(s.duration_seconds for s in items), 6),
    )


def _bucket(start: datetime, items: Iterable[Summary]) -> Bucket:
    total = totals(items)
    return Bucket(
        start=start,
        energy_kwh=total.energy_kwh,
        cost=total.cost,
        currency=total.currency,
        session_count=total.count,
        duration_seconds=total.duration_seconds,
    )


# -- tariffs -----------------------------------------------------------------------------------


async def get_tariff_of(user_id: int) -> Tariff | None:
    row = await UserTariff.get_or_none(user_id=user_id)
    if row is None:
        return None
    return Tariff.from_json(
        {
            "pricePerKwh": row.price_per_kwh,
            "currency": row.currency,
            "periods": row.periods,
            "timeZone": row.time_zone,
        }
    )


async def get_tariff(user: User) -> Tariff | None:
    """The user's tariff; None when none was set (sessions then have no cost)."""
    return await get_tariff_of(user.id)


async def set_tariff(
    user: User,
    price_per_kwh: float,
    currency: str,
    periods: Iterable[Period] = (),
    time_zone: str | None = None,
) -> Tariff:
    """Check and store the user's tariff (BAD_REQUEST naming what is wrong); sessions
    opened from now on are priced by it, earlier ones keep theirs."""
    tariff = Tariff.checked(price_per_kwh, currency, periods, time_zone)
    values = tariff.to_json()
    await UserTariff.update_or_create(
        defaults={
            "price_per_kwh": tariff.price_per_kwh,
            "currency": tariff.currency,
            "periods": values["periods"],
            "time_zone": tariff.time_zone,
        },
        user_id=user.id,
    )
    return tariff


def _now() -> datetime:
    return datetime.now(UTC)
