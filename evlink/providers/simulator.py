"""The built-in simulator: vehicles whose charge state follows simple physics.

A plugged-in, charging car gains energy at its ``chargeRate`` kW, tapering
above 80 % (:meth:`SimulatedVehicle.power`), until it reaches its
``chargeLimit``, then reports ``PLUGGED_IN:COMPLETE``; range follows the
battery; the reported ``chargeRate`` is the power at that moment. START/STOP
actions take effect after ``action_delay`` simulated seconds, and scripted
faults (:class:`SimulatorFault`) make them fail, lapse or hang, so that the
command watcher can be tested against every path.

Time comes from an injectable clock. With the :class:`SystemClock` a background
task steps the physics every ``tick`` seconds; with a :class:`ManualClock`
tests step it by calling :meth:`ManualClock.advance`, with no sleeps. Each
step pushes changed vehicles and actions into the update sink, as Enode's
webhooks would.

The cars live in a :class:`SimulatorStore`, one :class:`SimulatedCar` (the car,
its actions, the time its physics last ran) at a time. Every call loads the
car, runs a plain function on it (:class:`SimulatedCar` holds the rules) and
stores it back; a store shared by several instances refuses a car changed
meanwhile, and the call runs again on the newer car. :class:`MemoryCars` (the
default: tests, demos) keeps them in this process;
:class:`evlink.providers.simulator_db.DatabaseCars` (``evlink serve``) in the
database, so that every instance and worker drives the same cars.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from evlink.domain import (
    CAPABILITY_NAMES,
    ActionState,
    ChargeAction,
    ChargeStateData,
    ChargingAction,
    ProviderUpdate,
    VehicleData,
    format_timestamp,
)
from evlink.errors import (
    BadRequest,
    DatabaseUnavailable,
    EvlinkError,
    InvalidVehicleState,
    NotFound,
    ProviderUnavailable,
    SmartChargingActive,
)
from evlink.providers.base import UpdateSink

__all__ = [
    "Clock",
    "ManualClock",
    "MemoryCars",
    "SimulatedCar",
    "SimulatedVehicle",
    "Simulator",
    "SimulatorFault",
    "SimulatorStore",
    "SystemClock",
    "is_simulator_vehicle_id",
    "simulator_vehicle_id",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_RESOLVED_ACTIONS = 20  # resolved actions a car keeps (get_action); older ones are dropped
MAX_CONFLICTS = 20  # times a call runs again on a car another instance changed meanwhile

PROFILES = ("unplugged", "plugged", "charging")

TAPER_FROM = 80.0  # battery percent above which the charging power tapers
TAPER_FLOOR = 0.3  # the power at 100 %, as a share of the car's charge_rate
PHYSICS_STEP = 30 / 3600  # hours: the power curve is followed in steps of 30 s at most


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


_VEHICLE_ID = re.compile(rf"sim-({'|'.join(PROFILES)})-[A-Za-z0-9._-]{{1,100}}")


def is_simulator_vehicle_id(vehicle_id: str) -> bool:
    """True for ``sim-<profile>-<name>``: the ids the simulator makes a car for."""
    return _VEHICLE_ID.fullmatch(vehicle_id) is not None


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

    def power(self) -> float:
        """kW the car takes now: ``charge_rate`` up to 80 %, then tapering linearly to
        30 % of it at 100 % (as lithium-ion cells do near full)."""
        if self.battery_level <= TAPER_FROM:
            return self.charge_rate
        taper = (self.battery_level - TAPER_FROM) / (100 - TAPER_FROM)
        return self.charge_rate * (1 - (1 - TAPER_FLOOR) * min(1.0, taper))

    def advance(self, hours: float) -> bool:
        """Charge for ``hours`` along the power curve (:meth:`power`, in steps of at most
        :data:`PHYSICS_STEP` hours); True when anything a client sees changed."""
        if not (self.is_charging and self.is_plugged_in) or hours <= 0:
            return False
        left = hours
        while left > 0 and self.battery_level < self.charge_limit:
            step = min(left, PHYSICS_STEP)
            gained = self.power() * step / self.battery_capacity * 100
            self.battery_level = min(float(self.charge_limit), self.battery_level + gained)
            left -= step
        if self.battery_level >= self.charge_limit:
            self.is_charging = False
        return True

    def to_json(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["last_updated"] = self.last_updated.isoformat()
        return values

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SimulatedVehicle:
        values = dict(raw)
        values["last_updated"] = datetime.fromisoformat(raw["last_updated"])
        values["fault"] = SimulatorFault(raw["fault"]) if raw.get("fault") else None
        return cls(**values)

    def snapshot(self) -> VehicleData:
        level = round(self.battery_level)
        charging = self.is_charging and self.is_plugged_in
        remaining = None
        if charging:
            missing_kwh = (self.charge_limit - self.battery_level) / 100 * self.battery_capacity
            remaining = round(missing_kwh / self.power() * 60)
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
                charge_rate=round(self.power(), 3) if charging else None,
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
    changed: bool = False  # resolved, and not pushed into the update sink yet

    def resolve(self, state: ActionState, now: datetime, failure: str | None = None) -> None:
        self.state = state
        self.updated_at = self.completed_at = now
        self.changed = True
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

    def to_json(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in _ACTION_TIMES:
            values[name] = _iso_or_none(values[name])
        return values

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> _Action:
        values = dict(raw)
        for name in _ACTION_TIMES:
            values[name] = datetime.fromisoformat(raw[name]) if raw.get(name) else None
        values["kind"] = ChargingAction(raw["kind"])
        values["state"] = ActionState(raw["state"])
        return cls(**values)


_ACTION_TIMES = ("created_at", "due_at", "updated_at", "completed_at")

_FAILURE_DETAILS = {
    "NO_RESPONSE": "The vehicle did not respond",
    "FAILED_PRECONDITION": "The vehicle was not in a state to carry out the action",
    "CONFLICT": "Replaced by an action of the other kind",
}


@dataclass(slots=True)
class SimulatedCar:
    """One car with its actions: what a store keeps, and each call changes as a whole.

    Its methods are the simulator's rules, plain functions of the car and the time.
    """

    vehicle: SimulatedVehicle
    stepped_at: datetime  # the clock's time up to which physics and actions have run
    actions: list[_Action] = field(default_factory=list)
    changed: bool = False  # the vehicle changed since it was last pushed
    version: int = 0  # the stored version it was loaded at (compare-and-set)
    # The car's own time: it runs ``speed`` times the clock's, so that the times it reports
    # (lastUpdated) match the charge it made (the clock's time at speed 1).
    sim_at: datetime | None = None

    @classmethod
    def from_id(cls, vehicle_id: str, now: datetime) -> SimulatedCar:
        """A car on first use, its starting state derived from its id; NOT_FOUND when the
        id is no simulator id (``sim-<unplugged|plugged|charging>-<name>``)."""
        if not is_simulator_vehicle_id(vehicle_id):
            raise NotFound(
                "No such vehicle at the provider: simulator ids are "
                "sim-<unplugged|plugged|charging>-<name>"
            )
        return cls(_vehicle_from_id(vehicle_id, now), stepped_at=now)

    def advance(self, now: datetime, speed: float) -> None:
        """Run the car up to ``now``: actions due by then take effect, then physics."""
        elapsed = max(0.0, (now - self.stepped_at).total_seconds()) * speed
        sim_now = self.stepped_at + timedelta(seconds=elapsed)
        self.sim_at = (self.sim_at or self.stepped_at) + timedelta(seconds=elapsed)
        self.stepped_at = max(self.stepped_at, now)
        for action in sorted(self.pending(), key=lambda a: a.due_at):
            if action.due_at <= sim_now:
                self._resolve(action, now)
        if self.vehicle.is_reachable and self.vehicle.advance(elapsed / 3600):
            self.vehicle.last_updated = self.car_time(now)
            self.changed = True

    def change(self, now: datetime, changes: dict[str, Any]) -> None:
        """Change the car as its owner would (plug, unplug, set a fault)."""
        vehicle = self.vehicle
        for name, value in changes.items():
            if not hasattr(vehicle, name):
                raise AttributeError(f"SimulatedVehicle has no {name}")
            setattr(vehicle, name, value)
        if not vehicle.is_plugged_in:
            vehicle.is_charging = False
        if changes.get("fault") == SimulatorFault.UNREACHABLE:
            vehicle.is_reachable = False
        vehicle.last_updated = self.car_time(now)
        self.changed = True

    def set_charging(self, kind: ChargingAction, now: datetime, delay: timedelta) -> ChargeAction:
        """A START/STOP: the pending one of the same kind, or a new one (replacing one of
        the other kind); the car's rules refuse with evlink's errors."""
        pending = self.pending()
        # An action of the other kind is replaced: the car's state is in motion, so the
        # new action is judged on plug and smart charging only.
        replacing = any(action.kind != kind for action in pending)
        _check_precondition(self.vehicle, kind, replacing=replacing)
        for action in pending:
            if action.kind == kind:
                return action.snapshot()
            action.resolve(ActionState.CANCELLED, now, "CONFLICT")
        self.vehicle.attempts += 1
        created = _Action(
            id=str(uuid.uuid4()),
            vehicle_id=self.vehicle.id,
            user_id=self.vehicle.user_id,
            kind=kind,
            created_at=now,
            due_at=now + delay,
        )
        self.actions.append(created)
        self._forget_old_actions()
        return created.snapshot()

    def cancel(self, action_id: str, now: datetime) -> ChargeAction:
        action = self.action(action_id)
        if action.state == ActionState.PENDING:
            action.resolve(ActionState.CANCELLED, now, None)
            action.failure_reason = {"type": "REQUESTED_CANCELLATION", "detail": "Cancelled"}
        return action.snapshot()

    def action(self, action_id: str) -> _Action:
        for action in self.actions:
            if action.id == action_id:
                return action
        raise NotFound("No such action at the provider")

    def pending(self) -> list[_Action]:
        return [a for a in self.actions if a.state == ActionState.PENDING]

    def car_time(self, now: datetime) -> datetime:
        """The car's time (:attr:`sim_at`), never behind what it reported last."""
        return max(self.sim_at or now, self.vehicle.last_updated)

    def take_updates(self) -> list[ProviderUpdate]:
        """What changed since the last push (the vehicle, then its actions), now pushed."""
        updates: list[ProviderUpdate] = [self.vehicle.snapshot()] if self.changed else []
        updates += [action.snapshot() for action in self.actions if action.changed]
        self.changed = False
        for action in self.actions:
            action.changed = False
        return updates

    def to_json(self) -> dict[str, Any]:
        return {
            "vehicle": self.vehicle.to_json(),
            "stepped_at": self.stepped_at.isoformat(),
            "actions": [action.to_json() for action in self.actions],
            "changed": self.changed,
            "sim_at": _iso_or_none(self.sim_at),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any], *, version: int) -> SimulatedCar:
        return cls(
            vehicle=SimulatedVehicle.from_json(raw["vehicle"]),
            stepped_at=datetime.fromisoformat(raw["stepped_at"]),
            actions=[_Action.from_json(action) for action in raw["actions"]],
            changed=bool(raw["changed"]),
            version=version,
            sim_at=datetime.fromisoformat(raw["sim_at"]) if raw.get("sim_at") else None,
        )

    def _resolve(self, action: _Action, now: datetime) -> None:
        vehicle = self.vehicle
        fault = vehicle.fault
        if fault == SimulatorFault.UNREACHABLE or not vehicle.is_reachable:
            return  # stays PENDING, as with a car that is asleep
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
        vehicle.last_updated = self.car_time(now)
        self.changed = True
        action.resolve(ActionState.CONFIRMED, now)

    def _forget_old_actions(self) -> None:
        """Keep pending and unpushed actions, and the latest resolved ones."""
        resolved = [a for a in self.actions if a.state != ActionState.PENDING and not a.changed]
        dropped = {a.id for a in resolved[:-MAX_RESOLVED_ACTIONS]}
        if dropped:
            self.actions = [a for a in self.actions if a.id not in dropped]


class SimulatorStore(Protocol):
    """Where the simulated cars live, shared by whoever uses the same store."""

    async def load(self, vehicle_id: str) -> SimulatedCar | None: ...

    async def add(self, car: SimulatedCar) -> bool:
        """Store a new car; False when the store has one with that id already."""
        ...

    async def save(self, car: SimulatedCar) -> bool:
        """Store a changed car; False (nothing stored) when the stored one changed since
        ``car`` was loaded."""
        ...

    async def vehicle_ids(self) -> list[str]: ...

    async def car_of_action(self, action_id: str) -> str | None: ...

    async def note_action(self, action_id: str, vehicle_id: str) -> None: ...

    async def stepping(self, owner: str) -> list[str]:
        """The cars whose background steps ``owner`` runs (it takes free ones)."""
        ...

    async def release(self, owner: str) -> None:
        """``owner`` stops stepping: others take its cars at once."""
        ...


class MemoryCars:
    """The cars of one process: the default (tests, demos, the bench).

    A call changes the stored car in place without awaiting anything in between, so
    no version is needed; tests may also change a car directly (:meth:`car`).
    """

    def __init__(self) -> None:
        self.cars: dict[str, SimulatedCar] = {}
        self._action_cars: dict[str, str] = {}

    def car(self, vehicle_id: str, now: datetime) -> SimulatedCar:
        car = self.cars.get(vehicle_id)
        if car is None:
            car = self.cars[vehicle_id] = SimulatedCar.from_id(vehicle_id, now)
        return car

    async def load(self, vehicle_id: str) -> SimulatedCar | None:
        return self.cars.get(vehicle_id)

    async def add(self, car: SimulatedCar) -> bool:
        return self.cars.setdefault(car.vehicle.id, car) is car

    async def save(self, car: SimulatedCar) -> bool:
        return True

    async def vehicle_ids(self) -> list[str]:
        return list(self.cars)

    async def car_of_action(self, action_id: str) -> str | None:
        return self._action_cars.get(action_id)

    async def note_action(self, action_id: str, vehicle_id: str) -> None:
        self._action_cars[action_id] = vehicle_id

    async def stepping(self, owner: str) -> list[str]:
        return list(self.cars)

    async def release(self, owner: str) -> None:
        return None


class Simulator:
    """A Provider whose vehicles follow :class:`SimulatedCar` rules, kept in a store."""

    name = "simulator"

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        action_delay: float = 3.0,
        tick: float = 1.0,
        speed: float = 1.0,
        store: SimulatorStore | None = None,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.action_delay = timedelta(seconds=action_delay)
        self.tick = tick
        self.speed = speed
        self.store: SimulatorStore = store or MemoryCars()
        # Who steps cars in a shared store (its step leases).
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.calls: list[str] = []  # provider calls, for tests and benchmarks
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
        try:
            await self.store.release(self.owner)
        except Exception as exc:  # the leases lapse on their own
            logger.warning("simulator: handing back the cars' steps failed: %r", exc)

    async def get_vehicle(self, vehicle_id: str) -> VehicleData:
        self.calls.append(f"get_vehicle {vehicle_id}")
        self._check_outage()
        return await self._change(vehicle_id, lambda car, now: car.vehicle.snapshot())

    async def list_vehicles(self, user_id: str) -> list[VehicleData]:
        self.calls.append(f"list_vehicles {user_id}")
        self._check_outage()
        found = []
        for vehicle_id in await self.store.vehicle_ids():
            data = await self._change(vehicle_id, lambda car, now: car.vehicle.snapshot())
            if data.user_id == user_id:
                found.append(data)
        return found

    async def set_charging(self, vehicle_id: str, action: ChargingAction) -> ChargeAction:
        self.calls.append(f"set_charging {vehicle_id} {action.value}")
        self._check_outage()
        created = await self._change(
            vehicle_id, lambda car, now: car.set_charging(action, now, self.action_delay)
        )
        await self.store.note_action(created.id, vehicle_id)
        return created

    async def get_action(self, action_id: str) -> ChargeAction:
        self.calls.append(f"get_action {action_id}")
        self._check_outage()
        vehicle_id = await self._car_of(action_id)
        return await self._change(vehicle_id, lambda car, now: car.action(action_id).snapshot())

    async def cancel_action(self, action_id: str) -> ChargeAction:
        self.calls.append(f"cancel_action {action_id}")
        self._check_outage()
        vehicle_id = await self._car_of(action_id)
        return await self._change(
            vehicle_id, lambda car, now: car.cancel(action_id, now), advance=False
        )

    async def link_user(self, user_id: str, redirect_uri: str) -> str:
        raise BadRequest("The simulator has no vehicle accounts to link; use EVLINK_PROVIDER=enode")

    # -- Controls for demos and tests (cars kept in memory) ---------------

    def vehicle(self, vehicle_id: str) -> SimulatedVehicle:
        """The simulated vehicle with this id, created from its id on first use."""
        return self._memory().car(vehicle_id, self.clock.now()).vehicle

    def update_vehicle(self, vehicle_id: str, **changes: Any) -> SimulatedVehicle:
        """Change a car as its owner would (plug, unplug, set a fault); pushed at the next step."""
        now = self.clock.now()
        car = self._memory().car(vehicle_id, now)
        car.advance(now, self.speed)
        car.change(now, changes)
        return car.vehicle

    async def step(self) -> None:
        """Advance the cars this instance steps to now; push every change into the sink."""
        if self._sink is None:
            return  # not started, or closed: changes wait for whoever steps next
        async with self._lock:
            for vehicle_id in await self.store.stepping(self.owner):
                updates = await self._change(vehicle_id, lambda car, now: car.take_updates())
                for update in updates:
                    sink = self._sink
                    if sink is None:
                        return
                    try:
                        await sink(update)
                    except DatabaseUnavailable:
                        pass  # logged once per outage (evlink.models.backends); reads refresh later
                    except Exception:
                        logger.exception("simulator: recording an update failed")

    # -- internals ---------------------------------------------------------

    async def _change(
        self,
        vehicle_id: str,
        change: Callable[[SimulatedCar, datetime], T],
        *,
        advance: bool = True,
    ) -> T:
        """Run ``change`` on the car, advanced to now, and store it; again on the newer
        car when another instance stored it meanwhile. A refusal (an evlink error) is
        raised once the advanced car is stored."""
        for _ in range(MAX_CONFLICTS):
            car = await self._car(vehicle_id)
            now = self.clock.now()
            if advance:
                car.advance(now, self.speed)
            refused: EvlinkError | None = None
            try:
                result = change(car, now)
            except EvlinkError as error:
                refused = error
            if await self.store.save(car):
                if refused is not None:
                    raise refused
                return result
        raise ProviderUnavailable(
            "The simulated car is busy; try again", status=503, retry_after=1.0
        )

    async def _car(self, vehicle_id: str) -> SimulatedCar:
        car = await self.store.load(vehicle_id)
        if car is None:
            car = SimulatedCar.from_id(vehicle_id, self.clock.now())
            if not await self.store.add(car):  # another instance made it first
                car = await self.store.load(vehicle_id)
                if car is None:
                    raise ProviderUnavailable("The simulated car is busy; try again", status=503)
        return car

    async def _car_of(self, action_id: str) -> str:
        vehicle_id = await self.store.car_of_action(action_id)
        if vehicle_id is None:
            raise NotFound("No such action at the provider")
        return vehicle_id

    def _memory(self) -> MemoryCars:
        if not isinstance(self.store, MemoryCars):
            raise TypeError("this simulator's cars are not in memory: change them through calls")
        return self.store

    async def _run_ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                await self.step()
            except DatabaseUnavailable:
                pass  # logged once per outage (evlink.models.backends); the next tick tries again
            except Exception:
                logger.exception("simulator: a step failed")

    def _check_outage(self) -> None:
        if self.outage is not None:
            raise self.outage


def _check_precondition(
    vehicle: SimulatedVehicle, action: ChargingAction, *, replacing: bool
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


def _iso_or_none(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
