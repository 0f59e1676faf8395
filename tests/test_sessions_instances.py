"""Charging sessions on two instances sharing PostgreSQL and Redis, and over Enode's
webhook and poll: one state delivered to both (at once, twice, late) counts once."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest

from evlink.domain import ChargeStateData, VehicleData
from evlink.models import ChargeState, Vehicle
from evlink.models.sessions import ChargingSample, ChargingSession
from evlink.resolvers import vehicles
from evlink.resolvers.sessions import interval_energy
from evlink.settings import Settings
from tests.conftest import EnodeWorld, Server, shared_settings, two_instances

T0 = datetime(2025, 5, 20, 16, 0, tzinfo=UTC)


def _report(vehicle: Vehicle, minute: int, *, charging: bool, battery: int) -> VehicleData:
    assert vehicle.provider_vehicle_id is not None
    at = T0 + timedelta(minutes=minute)
    return VehicleData(
        id=vehicle.provider_vehicle_id,
        last_seen=at,
        charge_state=ChargeStateData(
            power_delivery_state="PLUGGED_IN:CHARGING" if charging else "PLUGGED_IN:STOPPED",
            battery_level=battery,
            is_plugged_in=True,
            is_charging=charging,
            battery_capacity=60.0,
            charge_limit=90,
            charge_rate=6.0 if charging else None,
            last_updated=at,
        ),
    )


async def _both(a: Server, b: Server, report: VehicleData) -> None:
    """The same report recorded by both instances at the same moment."""
    await asyncio.gather(
        vehicles.ingest_vehicle_update(a.services, report),
        vehicles.ingest_vehicle_update(b.services, report),
    )


async def test_two_instances_recording_the_same_states_count_each_once(settings: Settings) -> None:
    shared = shared_settings(settings)
    async with two_instances(shared) as pair:
        a, b = pair.a, pair.b
        user, _ = await a.user()
        vehicle = await a.vehicle(user, "plugged")
        for minute in range(0, 31, 5):  # 30 minutes at 6 kW, each state on both instances
            await _both(a, b, _report(vehicle, minute, charging=True, battery=50 + minute // 5))
        await vehicles.ingest_vehicle_update(
            b.services, _report(vehicle, 20, charging=True, battery=54)
        )
        await _both(a, b, _report(vehicle, 31, charging=False, battery=56))
        (session,) = await ChargingSession.filter(vehicle_id=vehicle.id)
        assert session.end_reason == "STOPPED"
        assert session.sample_count == 8
        assert await ChargingSample.filter(session_id=session.id).count() == 8
        assert session.energy_from_power == pytest.approx(6.0 * 30 / 60 + 6.0 / 2 / 60)


async def test_concurrent_states_on_two_instances_keep_the_totals_of_the_samples_kept(
    settings: Settings,
) -> None:
    """Different states at the same moment on two instances: whichever is counted, the
    session's totals are those of exactly its samples (none lost, none twice)."""
    shared = shared_settings(settings)
    async with two_instances(shared) as pair:
        a, b = pair.a, pair.b
        user, _ = await a.user()
        vehicle = await a.vehicle(user, "plugged")
        await _both(a, b, _report(vehicle, 0, charging=True, battery=50))
        for minute in range(2, 60, 2):
            await asyncio.gather(
                vehicles.ingest_vehicle_update(
                    a.services, _report(vehicle, minute, charging=True, battery=50)
                ),
                vehicles.ingest_vehicle_update(
                    b.services, _report(vehicle, minute + 1, charging=True, battery=50)
                ),
            )
        (session,) = await ChargingSession.filter(vehicle_id=vehicle.id)
        samples = await ChargingSample.filter(session_id=session.id).order_by("at")
        assert session.sample_count == len(samples)
        assert len(samples) >= 30  # at least one of each pair
        energy = sum(
            interval_energy(x.charge_rate, y.charge_rate, (y.at - x.at).total_seconds())
            for x, y in itertools.pairwise(samples)
        )
        assert session.energy_from_power == pytest.approx(energy)


async def test_a_webhook_and_a_poll_with_the_same_state_count_once(enode: EnodeWorld) -> None:
    user, key = await enode.linked_user()
    vehicle = await enode.vehicle(user, isCharging=True, batteryLevel=40, chargeRate=7.0)
    assert vehicle.provider_vehicle_id is not None
    raw = enode.fake.update_vehicle(vehicle.provider_vehicle_id, batteryLevel=41, chargeRate=7.0)
    await enode.deliver([enode.fake.vehicle_event(vehicle.provider_vehicle_id)])
    # The poll reads the very same state from Enode.
    await Vehicle.filter(id=vehicle.id).update(refreshed_at=None)
    polled = await enode.server.http.get(
        f"/api/status/{vehicle.id}", headers={"Authorization": f"Bearer {key}"}
    )
    assert polled.json()["batteryLevel"] == raw["chargeState"]["batteryLevel"]
    (session,) = await ChargingSession.filter(vehicle_id=vehicle.id)
    assert session.sample_count == 2  # the sync's state, then the webhook's (not the poll's)
    assert await ChargingSample.filter(session_id=session.id).count() == 2
    assert session.battery_start == 40
    assert session.battery_end == 41


async def test_an_instance_whose_remembered_session_is_stale_counts_each_state_once(
    settings: Settings,
) -> None:
    """Each instance remembers the open session it last wrote; when the other moved it
    meanwhile, the remembered one fails its compare-and-set and is read again: a state
    the other counted is not counted twice, a new one is counted (none lost)."""
    shared = shared_settings(settings)
    async with two_instances(shared) as pair:
        a, b = pair.a, pair.b
        user, _ = await a.user()
        vehicle = await a.vehicle(user, "plugged")
        for minute in (0, 5):
            await vehicles.ingest_vehicle_update(
                a.services, _report(vehicle, minute, charging=True, battery=50 + minute)
            )
        remembered = a.services.open_sessions[vehicle.id]
        assert (remembered.sample_count, remembered.last_sample_at) == (
            2,
            T0 + timedelta(minutes=5),
        )
        for minute in (10, 15):  # B moves the session on: A's memory is now stale
            await vehicles.ingest_vehicle_update(
                b.services, _report(vehicle, minute, charging=True, battery=50 + minute)
            )
        await vehicles.ingest_vehicle_update(  # counted by B already
            a.services, _report(vehicle, 15, charging=True, battery=65)
        )
        await vehicles.ingest_vehicle_update(  # new: A must count it on the session as B left it
            a.services, _report(vehicle, 20, charging=True, battery=70)
        )
        (session,) = await ChargingSession.filter(vehicle_id=vehicle.id)
        assert session.sample_count == 5
        assert await ChargingSample.filter(session_id=session.id).count() == 5
        assert session.energy_from_power == pytest.approx(6.0 * 20 / 60)
        assert session.battery_end == 70
        # A's state was written in its failed compare-and-set's statement: stored all the same.
        assert (await ChargeState.get(vehicle_id=vehicle.id)).battery_level == 70
        assert a.services.open_sessions[vehicle.id].sample_count == 5
        await vehicles.ingest_vehicle_update(
            b.services, _report(vehicle, 25, charging=False, battery=72)
        )
        await vehicles.ingest_vehicle_update(  # A remembers it open; B has ended it
            a.services, _report(vehicle, 30, charging=False, battery=72)
        )
        (ended,) = await ChargingSession.filter(vehicle_id=vehicle.id)
        assert (ended.sample_count, ended.end_reason) == (6, "STOPPED")
        assert vehicle.id not in a.services.open_sessions
        assert vehicle.id not in b.services.open_sessions
