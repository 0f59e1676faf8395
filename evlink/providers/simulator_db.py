"""The simulator's cars in the database: one simulated world for every instance.

Each car is one row of ``simulator_cars``: the car, its actions and the time its
physics last ran, as JSON, with a ``version``. A call loads the row, changes the
copy and writes it back with ``UPDATE … WHERE version = <loaded>``
(compare-and-set): of two instances changing one car at once, one wins, and the
other runs its change again on what the winner wrote. So a START taken by one
instance is what a STOP through another finds, on SQLite as on PostgreSQL.

The background steps, which push changes into the update sink, run on the
instance holding the car's step lease (``step_owner``, ``step_until``), taken
with one compare-and-set UPDATE as the command watcher takes its leases: the
first instance to tick takes every free car, renews them at each tick, and
hands them back when it stops; a lapsed lease (the instance died) is taken by
the next tick of another. ``simulator_actions`` finds an action's car by the
action's id.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q

from evlink.models.simulator import SimulatorAction, SimulatorCar
from evlink.providers.simulator import SimulatedCar

__all__ = ["STEP_LEASE", "DatabaseCars"]

STEP_LEASE = 10.0  # seconds an instance steps its cars before another may take them over


class DatabaseCars:
    """A :class:`~evlink.providers.simulator.SimulatorStore` in the database."""

    def __init__(self, lease: float = STEP_LEASE) -> None:
        self.lease = lease

    async def load(self, vehicle_id: str) -> SimulatedCar | None:
        row = await SimulatorCar.get_or_none(id=vehicle_id)
        return None if row is None else SimulatedCar.from_json(row.state, version=row.version)

    async def add(self, car: SimulatedCar) -> bool:
        try:
            await SimulatorCar.create(id=car.vehicle.id, state=car.to_json(), version=car.version)
        except IntegrityError:
            return False
        return True

    async def save(self, car: SimulatedCar) -> bool:
        saved = await SimulatorCar.filter(id=car.vehicle.id, version=car.version).update(
            state=car.to_json(), version=car.version + 1
        )
        if saved != 1:
            return False
        car.version += 1
        return True

    async def vehicle_ids(self) -> list[str]:
        ids = await SimulatorCar.all().order_by("created_at", "id").values_list("id", flat=True)
        return [str(vehicle_id) for vehicle_id in ids]

    async def car_of_action(self, action_id: str) -> str | None:
        row = await SimulatorAction.get_or_none(id=action_id)
        return None if row is None else str(row.car_id)  # type: ignore[attr-defined]

    async def note_action(self, action_id: str, vehicle_id: str) -> None:
        with contextlib.suppress(IntegrityError):  # the same pending action, returned again
            await SimulatorAction.create(id=action_id, car_id=vehicle_id)

    async def stepping(self, owner: str) -> list[str]:
        now = datetime.now(UTC)
        await SimulatorCar.filter(
            Q(step_owner=None) | Q(step_until__lt=now) | Q(step_owner=owner)
        ).update(step_owner=owner, step_until=now + timedelta(seconds=self.lease))
        ids = (
            await SimulatorCar.filter(step_owner=owner).order_by("id").values_list("id", flat=True)
        )
        return [str(vehicle_id) for vehicle_id in ids]

    async def release(self, owner: str) -> None:
        await SimulatorCar.filter(step_owner=owner).update(step_owner=None, step_until=None)
