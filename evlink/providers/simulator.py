"""The built-in simulator: vehicles whose charge state follows simple physics.

A plugged-in, charging car gains energy at ``chargeRate`` kW until it reaches
its ``chargeLimit``, then reports ``PLUGGED_IN:COMPLETE``; range follows the
battery. START/STOP actions take effect after ``action_delay`` simulated
seconds, and scripted faults (:class:`SimulatorFault`) make them fail, lapse or
hang, so that the command watcher can be tested against every path.

Time comes from an injectable clock. With the :class:`SystemClock` a background
task steps the physics every ``tick`` seconds; with a :class:`ManualClock`
tests step it by calling :meth:`ManualClock.advance`, with no sleeps. Each
step pushes changed vehicles and actions into the update sink, as Enode's
webhooks would. The simulator keeps its state in memory: a restarted server
starts its cars afresh from their ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from evlink.errors import (
    BadRequest,
    DatabaseUnavailable,
    InvalidVehicleState,
    NotFound,
    ProviderUnavailable,
    SmartChargingActive,
)
from evlink.providers.base import (
    CAPABILITY_NAMES,
    ActionState,
    ChargeAction,
    ChargeStateData,
    ChargingAction,
    ProviderUpdate,
    UpdateSink,
    VehicleData,
    format_timestamp,
)

__all__ = [
    "Clock",
    "ManualClock",
    "SimulatedVehicle",
    "Simulator",
    "SimulatorFault",
    "SystemClock",
    "simulator_vehicle_id",
]

logger = logging.getLogger(__name__)

PROFILES = ("unplugged", "plugged", "charging")


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """Wall-clock time in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told; each move steps whoever listens to it."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2025, 5, 20, 16, 0, tzinfo=UTC)
        self._listeners: list[Callable[[], Awaitable[None]]] = []

    def now(self) -> datetime:
        return self._now

    def listen(self, listener: Callable[[], Awaitable[None]]) -> None:
        self._listeners.append(listener)

    async def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        for listener in list(self._listeners):
            await listener()


class SimulatorFault(StrEnum):
    """Scripted misbehaviour of one simulated vehicle."""

    ACTION_FAILS = "action_fails"  # every action ends FAILED (NO_RESPONSE)
    IGNORES_ACTION = "ignores_action"  # actions CONFIRM but the state never changes
    FAILS_FIRST_ATTEMPT = "fails_first_attempt"  # the first action FAILS, later ones work
    UNREACHABLE = "unreachable"  # the car is asleep: actions stay PENDING


def simulator_vehicle_id(profile: str) -> str:
    """A new simulator vehicle id that starts in ``profile`` (unplugged|plugged|charging)."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}")
    return f"sim-{profile}-{uuid.uuid4().hex[:12]}"


@dataclass(slots=True)
class SimulatedVehicle:
    id: str
    user_id: str = "simulator"
    vendor: str = "TESLA"
    brand: str = "Tesla"
    model: str = "Model 3"
    year: int = 2023
    battery_capacity: float = 75.0  # kWh
    battery_level: float = 50.0  # %
    charge_limit: int = 80  # %
    charge_rate: float = 11.0  # kW while charging
    km_per_kwh: float = 6.5
    max_current: float = 16.0
    is_plugged_in: bool = True
    is_charging: bool = False
    is_reachable: bool = True
    smart_charging: bool = False
    fault: SimulatorFault | None = None
    odometer_km: float = 12000.0
    latitude: float = 59.3293
    longitude: float = 18.0686
    last_updated: datetime = field(default_factory=lambda: datetime.now(UTC))
    attempts: int = 0  # actions received, for FAILS_FIRST_ATTEMPT

    @property
    def power_delivery_state(self) -> str:
        if not self.is_plugged_in:
            return "UNPLUGGED"
        if self.is_charging:
            return "PLUGGED_IN:CHARGING"
        if self.battery_level >= self.charge_limit:
            return "PLUGGED_IN:COMPLETE"
        return "PLUGGED_IN:STOPPED"

    def advance(self, hours: float) -> bool:
        """Charge for ``hours``; True when anything a client sees changed."""
        if not (self.is_charging and self.is_plugged_in) or hours <= 0:
            return False
        energy = self.charge_rate * hours
        self.battery_level = min(
            float(self.charge_limit), self.battery_level + energy / self.battery_capacity * 100
        )
        if self.battery_level >= self.charge_limit:
            self.is_charging = False
        return True

    def snapshot(self) -> VehicleData:
        level = round(self.battery_level)
        charging = self.is_charging and self.is_plugged_in
        remaining = None
        if charging:
            missing_kwh = (self.charge_limit - self.battery_level) / 100 * self.battery_capacity
            remaining = round(missing_kwh / self.charge_rate * 60)
        name = f"{self.brand} {self.model}"
        return VehicleData(
            id=self.id,
            user_id=self.user_id,
            vendor=self.vendor,
            last_seen=self.last_updated,
            is_reachable=self.is_reachable,
            information={
                "vin": _fake_vin(self.id),
                "brand": self.brand,
                "model": self.model,
                "year": self.year,
                "displayName": name,
            },
            charge_state=ChargeStateData(
                power_delivery_state=self.power_delivery_state,
                battery_level=level,
                range=round(self.battery_level / 100 * self.battery_capacity * self.km_per_kwh, 2),
                is_plugged_in=self.is_plugged_in,
                is_charging=charging,
                is_fully_charged=self.battery_level >= 100,
                battery_capacity=self.battery_capacity,
                charge_limit=self.charge_limit,
                charge_rate=self.charge_rate if charging else None,
                charge_time_remaining=remaining,
                max_current=self.max_current,
                last_updated=self.last_updated,
            ),
            smart_charging_policy={
                "isEnabled": self.smart_charging,
                "deadline": None,
                "minimumChargeLimit": 0,
            },
            location={
                "id": None,
                "latitude": self.latitude,
                "longitude": self.longitude,
                "lastUpdated": _iso(self.last_updated),
            },
            odometer={"distance": self.odometer_km, "lastUpdated": _iso(self.last_updated)},
            capabilities={
                name: {"isCapable": name != "setMaxCurrent", "interventionIds": []}
                for name in CAPABILITY_NAMES
            },
        )


@dataclass(slots=True)
class _Action:
    id: str
    vehicle_id: str
    user_id: str
    kind: ChargingAction
    created_at: datetime
    due_at: datetime
    state: ActionState = ActionState.PENDING
    updated_at: datetime | None = None
    completed_at: datetime | None = None
    failure_reason: dict[str, Any] | None = None

    def resolve(self, state: ActionState, now: datetime, failure: str | None = None) -> None:
        self.state = state
        self.updated_at = self.completed_at = now
        if failure is not None:
            self.failure_reason = {"type": failure, "detail": _FAILURE_DETAILS[failure]}

    def snapshot(self) -> ChargeAction:
        return ChargeAction(
            id=self.id,
            target_id=self.vehicle_id,
            kind=self.kind.value,
            state=self.state.value,
            user_id=self.user_id,
            created_at=self.created_at,
            updated_at=self.updated_at or self.created_at,
            completed_at=self.completed_at,
            failure_reason=self.failure_reason,
        )


_FAILURE_DETAILS = {
    "NO_RESPONSE": "The vehicle did not respond",
    "FAILED_PRECONDITION": "The vehicle was not in a state to carry out the action",
    "CONFLICT": "Replaced by an action of the other kind",
}


class Simulator:
    """A Provider whose vehicles live in memory and follow :class:`SimulatedVehicle` physics."""

    name = "simulator"

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        action_delay: float = 3.0,
        tick: float = 1.0,
        speed: float = 1.0,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.action_delay = timedelta(seconds=action_delay)
        self.tick = tick
        self.speed = speed
        self.vehicles: dict[str, SimulatedVehicle] = {}
        self.actions: dict[str, _Action] = {}
        self.calls: list[str] = []  # provider calls, for tests and benchmarks
        self._last_step = self.clock.now()
        self._dirty_vehicles: set[str] = set()
        self._dirty_actions: set[str] = set()
        self._sink: UpdateSink | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._listening = False
        # While set, every call fails as an unreachable provider would (502).
        self.outage: ProviderUnavailable | None = None
        self._lock = asyncio.Lock()

    # -- Provider protocol -------------------------------------------------

    async def start(self, sink: UpdateSink) -> None:
        self._sink = sink
        if isinstance(self.clock, ManualClock):
            if not self._listening:
                self.clock.listen(self.step)
                self._listening = True
        else:
            self._ticker = asyncio.create_task(self._run_ticker(), name="simulator-ticker")

    async def aclose(self) -> None:
        self._sink = None
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None

    async def get_vehicle(self, vehicle_id: str) -> VehicleData:
        self.calls.append(f"get_vehicle {vehicle_id}")
        self._check_outage()
        self._advance()
        return self.vehicle(vehicle_id).snapshot()

    async def list_vehicles(self, user_id: str) -> list[VehicleData]:
        self.calls.append(f"list_vehicles {user_id}")
        self._check_outage()
        self._advance()
        return [v.snapshot() for v in self.vehicles.values() if v.user_id == user_id]

    async def set_charging(self, vehicle_id: str, action: ChargingAction) -> ChargeAction:
        self.calls.append(f"set_charging {vehicle_id} {action.value}")
        self._check_outage()
        self._advance()
        vehicle = self.vehicle(vehicle_id)
        pending_actions = self._pending_actions(vehicle_id)
        # An action of the other kind is replaced: the car's state is in motion, so the
        # new action is judged on plug and smart charging only.
        replacing = any(pending.kind != action for pending in pending_actions)
        self._check_precondition(vehicle, action, replacing=replacing)
        now = self.clock.now()
        for pending in pending_actions:
            if pending.kind == action:
                return pending.snapshot()
            pending.resolve(ActionState.CANCELLED, now, "CONFLICT")
            self._dirty_actions.add(pending.id)
        vehicle.attempts += 1
        created = _Action(
            id=str(uuid.uuid4()),
            vehicle_id=vehicle_id,
            user_id=vehicle.user_id,
            kind=action,
            created_at=now,
            due_at=now + self.action_delay,
        )
        self.actions[created.id] = created
        return created.snapshot()

    async def get_action(self, action_id: str) -> ChargeAction:
        self.calls.append(f"get_action {action_id}")
        self._check_outage()
        self._advance()
        return self._action(action_id).snapshot()

    async def cancel_action(self, action_id: str) -> ChargeAction:
        self.calls.append(f"cancel_action {action_id}")
        self._check_outage()
        action = self._action(action_id)
        if action.state == ActionState.PENDING:
            action.resolve(ActionState.CANCELLED, self.clock.now(), None)
            action.failure_reason = {"type": "REQUESTED_CANCELLATION", "detail": "Cancelled"}
            self._dirty_actions.add(action.id)
        return action.snapshot()

    async def link_user(self, user_id: str, redirect_uri: str) -> str:
        raise BadRequest("The simulator has no vehicle accounts to link; use EVLINK_PROVIDER=enode")

    # -- Controls for demos and tests -------------------------------------

    def vehicle(self, vehicle_id: str) -> SimulatedVehicle:
        """The simulated vehicle with this id, created from its id on first use."""
        vehicle = self.vehicles.get(vehicle_id)
        if vehicle is None:
            if not vehicle_id.startswith("sim-"):
                raise NotFound("No such vehicle at the provider")
            vehicle = self.vehicles[vehicle_id] = _vehicle_from_id(vehicle_id, self.clock.now())
        return vehicle

    def add_vehicle(self, vehicle: SimulatedVehicle) -> SimulatedVehicle:
        vehicle.last_updated = self.clock.now()
        self.vehicles[vehicle.id] = vehicle
        return vehicle

    def update_vehicle(self, vehicle_id: str, **changes: Any) -> SimulatedVehicle:
        """Change a car as its owner would (plug, unplug, set a fault); pushed at the next step."""
        self._advance()
        vehicle = self.vehicle(vehicle_id)
        for name, value in changes.items():
            if not hasattr(vehicle, name):
                raise AttributeError(f"SimulatedVehicle has no {name}")
            setattr(vehicle, name, value)
        if not vehicle.is_plugged_in:
            vehicle.is_charging = False
        if changes.get("fault") == SimulatorFault.UNREACHABLE:
            vehicle.is_reachable = False
        vehicle.last_updated = self.clock.now()
        self._dirty_vehicles.add(vehicle_id)
        return vehicle

    async def step(self) -> None:
        """Advance physics to now and push every change into the update sink."""
        async with self._lock:
            self._advance()
            updates: list[ProviderUpdate] = [
                self.vehicles[vid].snapshot()
                for vid in sorted(self._dirty_vehicles)
                if vid in self.vehicles
            ]
            updates += [self.actions[aid].snapshot() for aid in sorted(self._dirty_actions)]
            self._dirty_vehicles.clear()
            self._dirty_actions.clear()
            sink = self._sink
            if sink is None:
                return
            for update in updates:
                try:
                    await sink(update)
                except DatabaseUnavailable:
                    pass  # logged once per outage (evlink.models.backends); reads refresh later
                except Exception:
                    logger.exception("simulator: recording an update failed")

    # -- internals ---------------------------------------------------------

    async def _run_ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            await self.step()

    def _advance(self) -> None:
        now = self.clock.now()
        elapsed = (now - self._last_step).total_seconds() * self.speed
        sim_now = self._last_step + timedelta(seconds=elapsed)
        self._last_step = now
        # Actions due within this step take effect at their due time, then physics runs on.
        for action in sorted(self._pending_all(), key=lambda a: a.due_at):
            if action.due_at <= sim_now:
                self._resolve(action, now)
        for vehicle in self.vehicles.values():
            if vehicle.is_reachable and vehicle.advance(elapsed / 3600):
                vehicle.last_updated = now
                self._dirty_vehicles.add(vehicle.id)

    def _resolve(self, action: _Action, now: datetime) -> None:
        vehicle = self.vehicles[action.vehicle_id]
        fault = vehicle.fault
        if fault == SimulatorFault.UNREACHABLE or not vehicle.is_reachable:
            return  # stays PENDING, as with a car that is asleep
        self._dirty_actions.add(action.id)
        if fault == SimulatorFault.ACTION_FAILS or (
            fault == SimulatorFault.FAILS_FIRST_ATTEMPT and vehicle.attempts <= 1
        ):
            action.resolve(ActionState.FAILED, now, "NO_RESPONSE")
            return
        if fault == SimulatorFault.IGNORES_ACTION:
            action.resolve(ActionState.CONFIRMED, now)
            return
        if action.kind == ChargingAction.START:
            if not vehicle.is_plugged_in or vehicle.battery_level >= vehicle.charge_limit:
                action.resolve(ActionState.FAILED, now, "FAILED_PRECONDITION")
                return
            vehicle.is_charging = True
        else:
            vehicle.is_charging = False
        vehicle.last_updated = now
        self._dirty_vehicles.add(vehicle.id)
        action.resolve(ActionState.CONFIRMED, now)

    def _check_precondition(
        self, vehicle: SimulatedVehicle, action: ChargingAction, *, replacing: bool
    ) -> None:
        if vehicle.smart_charging:
            raise SmartChargingActive()
        if action == ChargingAction.START and not vehicle.is_plugged_in:
            raise InvalidVehicleState("The vehicle is not plugged in")
        if replacing:
            return
        if action == ChargingAction.START:
            if vehicle.is_charging:
                raise InvalidVehicleState("The vehicle is already charging")
            if vehicle.battery_level >= vehicle.charge_limit:
                raise InvalidVehicleState("The battery is already at its charge limit")
        elif not vehicle.is_charging:
            raise InvalidVehicleState("The vehicle is not charging")

    def _check_outage(self) -> None:
        if self.outage is not None:
            raise self.outage

    def _pending_all(self) -> list[_Action]:
        return [a for a in self.actions.values() if a.state == ActionState.PENDING]

    def _pending_actions(self, vehicle_id: str) -> list[_Action]:
        return [a for a in self._pending_all() if a.vehicle_id == vehicle_id]

    def _action(self, action_id: str) -> _Action:
        action = self.actions.get(action_id)
        if action is None:
            raise NotFound("No such action at the provider")
        return action


def _vehicle_from_id(vehicle_id: str, now: datetime) -> SimulatedVehicle:
    """Deterministic starting state: the profile from the id, the battery from its hash."""
    digest = hashlib.sha256(vehicle_id.encode()).digest()
    profile = next((p for p in PROFILES if vehicle_id.startswith(f"sim-{p}-")), "plugged")
    models = [
        ("TESLA", "Tesla", "Model 3", 75.0),
        ("XPENG", "XPENG", "G6", 87.5),
        ("VOLKSWAGEN", "Volkswagen", "ID.4", 77.0),
    ]
    vendor, brand, model, capacity = models[digest[0] % len(models)]
    return SimulatedVehicle(
        id=vehicle_id,
        vendor=vendor,
        brand=brand,
        model=model,
        battery_capacity=capacity,
        battery_level=float(20 + digest[1] % 40),
        is_plugged_in=profile != "unplugged",
        is_charging=profile == "charging",
        odometer_km=float(5000 + int.from_bytes(digest[2:4], "big") % 60000),
        last_updated=now,
    )


def _fake_vin(vehicle_id: str) -> str:
    return "SIM" + hashlib.sha256(vehicle_id.encode()).hexdigest()[:14].upper()


def _iso(value: datetime) -> str:
    return format_timestamp(value) or ""
