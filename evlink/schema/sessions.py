"""GraphQL types and fields of charging sessions, statistics and tariffs.

Each field calls one use case of :mod:`evlink.resolvers.sessions`; the root types
(``Vehicle``, ``Viewer``, ``Query``, ``Mutation``, ``Subscription``) take these
resolvers as fields.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Annotated, Any

import strawberry

from evlink.models.sessions import ChargingSample as ChargingSampleModel
from evlink.models.sessions import ChargingSession as ChargingSessionModel
from evlink.models.sessions import EndReason as EndReasonModel
from evlink.models.sessions import StartedBy as StartedByModel
from evlink.resolvers import follow, sessions, vehicles
from evlink.resolvers.sessions import Bucket
from evlink.resolvers.sessions import EnergyMethod as EnergyMethodModel
from evlink.resolvers.sessions import GroupBy as GroupByModel
from evlink.schema.context import Info
from evlink.tariffs import Tariff as TariffData
from evlink.tariffs import period_of

__all__ = [
    "ChargingSession",
    "ChargingStatistics",
    "Tariff",
    "TariffPeriodInput",
    "charging_session",
    "charging_session_events",
    "charging_sessions",
    "charging_statistics",
    "current_charging_session",
    "set_tariff",
    "viewer_tariff",
]

EndReason = strawberry.enum(
    EndReasonModel,
    name="ChargingSessionEndReason",
    description="Why a session ended: STOPPED (plugged in, not full), COMPLETE (full or at "
    "the charge limit), UNPLUGGED, UNREACHABLE (no state for EVLINK_SESSION_STALE_AFTER).",
)
StartedBy = strawberry.enum(
    StartedByModel,
    name="ChargingSessionStartedBy",
    description="EVLINK: an evlink START command (commandId); OTHER: anything else.",
)
EnergyMethod = strawberry.enum(
    EnergyMethodModel,
    name="EnergyMethod",
    description="POWER: the charge rate integrated over time (2 samples with a rate or "
    "more); BATTERY: the battery's change times its capacity.",
)
GroupBy = strawberry.enum(GroupByModel, name="StatisticsGroupBy")


@strawberry.type(description="A time-of-use period: its price from start to end (local).")
class TariffPeriod:
    start: str = strawberry.field(description="HH:MM, in the tariff's time zone.")
    end: str = strawberry.field(description="HH:MM; before start: the period wraps midnight.")
    price: float


@strawberry.input(description="A time-of-use period, HH:MM to HH:MM, at its own price.")
class TariffPeriodInput:
    start: str
    end: str
    price: float


@strawberry.type(description="A price per kWh, optionally by time of day.")
class Tariff:
    price_per_kwh: float
    currency: str
    periods: list[TariffPeriod]
    time_zone: str = strawberry.field(description="IANA time zone of the periods.")

    @classmethod
    def from_data(cls, tariff: TariffData) -> Tariff:
        periods = []
        for period in tariff.periods:
            start, _, end = period.text.partition("-")
            periods.append(TariffPeriod(start=start, end=end, price=period.price))
        return cls(
            price_per_kwh=tariff.price_per_kwh,
            currency=tariff.currency,
            periods=periods,
            time_zone=tariff.time_zone,
        )


@strawberry.type(description="Where the car was when a session started.")
class SessionLocation:
    latitude: float | None
    longitude: float | None


@strawberry.type(description="One charge state a session counted.")
class ChargingSample:
    at: datetime = strawberry.field(description="The state's lastUpdated.")
    battery_level: int | None
    range: float | None
    charge_rate: float | None = strawberry.field(description="kW.")
    is_plugged_in: bool | None
    is_charging: bool | None

    @classmethod
    def from_model(cls, sample: ChargingSampleModel) -> ChargingSample:
        return cls(
            at=sample.at,
            battery_level=sample.battery_level,
            range=sample.range,
            charge_rate=sample.charge_rate,
            is_plugged_in=sample.is_plugged_in,
            is_charging=sample.is_charging,
        )


@strawberry.type(description="One charge of a car: open while it charges, then final.")
class ChargingSession:
    id: strawberry.ID
    vehicle_id: strawberry.ID
    active: bool = strawberry.field(description="Open: the car is charging.")
    started_at: datetime
    ended_at: datetime | None
    end_reason: EndReason | None  # type: ignore[valid-type]
    started_by: StartedBy  # type: ignore[valid-type]
    command_id: strawberry.ID | None = strawberry.field(
        description="The START command that started it (startedBy EVLINK)."
    )
    battery_start: int | None = strawberry.field(description="Percent.")
    battery_end: int | None = strawberry.field(description="Percent; the latest while open.")
    range_start: float | None = strawberry.field(description="km.")
    range_end: float | None = strawberry.field(description="km; the latest while open.")
    battery_capacity: float | None = strawberry.field(description="kWh.")
    energy_kwh: float | None = strawberry.field(description="Energy added (energyMethod's).")
    energy_method: EnergyMethod  # type: ignore[valid-type]
    energy_from_power: float = strawberry.field(description="kWh, the rate integrated.")
    energy_from_battery: float | None = strawberry.field(
        description="kWh, battery change x capacity."
    )
    sample_count: int
    peak_power: float | None = strawberry.field(description="kW.")
    average_power: float | None = strawberry.field(description="kW: energy over duration.")
    duration_seconds: float
    cost: float | None = strawberry.field(description="In currency; null without a tariff.")
    currency: str | None
    tariff: Tariff | None = strawberry.field(description="The tariff when it opened.")
    start_location: SessionLocation | None
    model: strawberry.Private[ChargingSessionModel]

    @classmethod
    def from_model(cls, session: ChargingSessionModel) -> ChargingSession:
        found = sessions.summary(session)
        location = session.location or {}
        return cls(
            id=strawberry.ID(str(session.id)),
            vehicle_id=strawberry.ID(str(session.vehicle_id)),  # type: ignore[attr-defined]
            active=found.active,
            started_at=session.started_at,
            ended_at=session.ended_at,
            end_reason=session.end_reason,
            started_by=session.started_by,
            command_id=strawberry.ID(str(session.command_id)) if session.command_id else None,
            battery_start=session.battery_start,
            battery_end=session.battery_end,
            range_start=session.range_start,
            range_end=session.range_end,
            battery_capacity=session.battery_capacity,
            energy_kwh=found.energy_kwh,
            energy_method=found.energy_method,
            energy_from_power=found.energy_from_power,
            energy_from_battery=found.energy_from_battery,
            sample_count=session.sample_count,
            peak_power=session.peak_power,
            average_power=found.average_power,
            duration_seconds=found.duration_seconds,
            cost=found.cost,
            currency=found.currency,
            tariff=Tariff.from_data(TariffData.from_json(session.tariff))
            if session.tariff
            else None,
            start_location=SessionLocation(
                latitude=_number(location.get("latitude")),
                longitude=_number(location.get("longitude")),
            )
            if location
            else None,
            model=session,
        )

    @strawberry.field(description="The samples kept (pruned after the keep-days), oldest first.")
    async def samples(self) -> list[ChargingSample]:
        return [ChargingSample.from_model(s) for s in await sessions.samples_of(self.model)]


@strawberry.type(description="Sessions started in one day, week or month.")
class ChargingStatistics:
    start: datetime = strawberry.field(description="The bucket's start (local midnight).")
    energy_kwh: float
    cost: float | None = strawberry.field(description="Null when currencies differ.")
    currency: str | None
    session_count: int
    duration_seconds: float

    @classmethod
    def from_bucket(cls, bucket: Bucket) -> ChargingStatistics:
        return cls(
            start=bucket.start,
            energy_kwh=bucket.energy_kwh,
            cost=bucket.cost,
            currency=bucket.currency,
            session_count=bucket.session_count,
            duration_seconds=bucket.duration_seconds,
        )


# -- fields of the root types ---------------------------------------------------------------


async def charging_sessions(
    root: Any, info: Info, last: int = 20, before: datetime | None = None
) -> list[ChargingSession]:
    """The car's sessions, newest first (``last`` clamped to 0-100)."""
    found = await sessions.list_sessions(
        info.context.services, root.model, last=last, before=before
    )
    return [ChargingSession.from_model(s) for s in found]


async def current_charging_session(root: Any, info: Info) -> ChargingSession | None:
    """The open session, or null."""
    found = await sessions.current_session(info.context.services, root.model)
    return None if found is None else ChargingSession.from_model(found)


async def charging_statistics(
    root: Any,
    info: Info,
    from_: Annotated[datetime, strawberry.argument(name="from")],
    to: datetime,
    group_by: GroupBy,  # type: ignore[valid-type]
) -> list[ChargingStatistics]:
    """Sessions started in [from, to) summed per bucket of the owner's time zone."""
    buckets = await sessions.statistics(
        info.context.services, root.model, from_, to, GroupByModel(group_by)
    )
    return [ChargingStatistics.from_bucket(b) for b in buckets]


async def charging_session(info: Info, id: strawberry.ID) -> ChargingSession:
    """One of the caller's sessions (NOT_FOUND for another's)."""
    user = await info.context.user()
    found = await sessions.get_session(info.context.services, user, str(id))
    return ChargingSession.from_model(found)


async def viewer_tariff(info: Info) -> Tariff | None:
    """The caller's tariff; null when none is set."""
    tariff = await sessions.get_tariff(await info.context.user())
    return None if tariff is None else Tariff.from_data(tariff)


async def set_tariff(
    info: Info,
    price_per_kwh: float,
    currency: str,
    periods: list[TariffPeriodInput] | None = None,
    time_zone: str | None = None,
) -> Tariff:
    """Set the caller's tariff; sessions opened from now on are priced by it."""
    user = await info.context.user()
    tariff = await sessions.set_tariff(
        user,
        price_per_kwh,
        currency,
        [period_of(p.start, p.end, p.price) for p in periods or []],
        time_zone,
    )
    return Tariff.from_data(tariff)


async def charging_session_events(
    info: Info, vehicle_id: strawberry.ID
) -> AsyncGenerator[ChargingSession, None]:
    """The open session now (if any), then each change: as it grows, and once it ends."""
    services = info.context.services
    user = await info.context.user()
    vehicle = await vehicles.get_vehicle(user, str(vehicle_id))
    async with services.metrics.subscription("chargingSession"):
        followed = follow.follow_charging_session(
            services, user, vehicle, watching=info.context.watching
        )
        async with contextlib.aclosing(followed) as found:
            async for session in found:
                yield ChargingSession.from_model(session)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
