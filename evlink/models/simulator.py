"""The simulator's cars, kept in the database so that every instance drives the same ones."""

from __future__ import annotations

from typing import Any

from tortoise import fields
from tortoise.models import Model


class SimulatorCar(Model):
    # The provider vehicle id (sim-plugged-…).
    id = fields.CharField(max_length=128, primary_key=True)
    # The car, its actions and the time its physics last ran (SimulatedCar.to_json).
    state: fields.JSONField[dict[str, Any]] = fields.JSONField()
    # Bumped by every change: a change written over another is refused (compare-and-set).
    version = fields.IntField(default=0)
    # The instance that runs this car's background steps, until when (a lease).
    step_owner = fields.CharField(max_length=128, null=True, db_index=True)
    step_until = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "simulator_cars"


class SimulatorAction(Model):
    """Which car a simulated charge action belongs to (get_action, cancel_action)."""

    id = fields.CharField(max_length=64, primary_key=True)
    car: fields.ForeignKeyRelation[SimulatorCar] = fields.ForeignKeyField(
        "evlink.SimulatorCar", related_name="actions", on_delete=fields.CASCADE
    )

    class Meta:
        table = "simulator_actions"
