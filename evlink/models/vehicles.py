"""Vehicles as evlink stores them, and their latest charge state.

:func:`vehicle_with_charge_state` is the read of a status miss: the vehicle and its
charge state in one statement (:mod:`evlink.models.statements`: written once per SQL
dialect, run through Tortoise's own connection, no query building per read); Tortoise's
``_init_from_db`` makes the models from the row, as its own queries do
(:func:`~evlink.models.statements.model_from_row`).
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import fields as fields_of
from typing import Any
from uuid import UUID

from tortoise import fields
from tortoise.models import Model

from evlink.domain import ChargeStateData
from evlink.models.backends import fetch_rows
from evlink.models.statements import PerDialect, Row, columns, model_from_row, placeholder
from evlink.models.users import KEY_COLUMNS, ActiveKey, ApiKey, User, active_key_from_row


class Vehicle(Model):
    id = fields.UUIDField(primary_key=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "evlink.User", related_name="vehicles", on_delete=fields.CASCADE
    )
    provider = fields.CharField(max_length=32)
    # The provider's id of this vehicle (Enode's vehicle id); null until linked.
    provider_vehicle_id = fields.CharField(max_length=128, null=True, db_index=True)
    provider_user_id = fields.CharField(max_length=128, null=True)
    name = fields.CharField(max_length=100, null=True)
    vendor = fields.CharField(max_length=64, null=True)
    information: fields.JSONField[dict[str, Any]] = fields.JSONField(default=dict)
    capabilities: fields.JSONField[dict[str, Any]] = fields.JSONField(default=dict)
    smart_charging_policy: fields.JSONField[dict[str, Any]] = fields.JSONField(default=dict)
    location: fields.JSONField[dict[str, Any] | None] = fields.JSONField(null=True)
    odometer: fields.JSONField[dict[str, Any] | None] = fields.JSONField(null=True)
    last_seen = fields.DatetimeField(null=True)
    is_reachable = fields.BooleanField(null=True)
    # When evlink last read this vehicle from its provider (drives freshness).
    refreshed_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    deleted_at = fields.DatetimeField(null=True)
    # Removed by hand (`evlink vehicle remove`), not by the provider: the provider's
    # reports (webhooks, `evlink enode sync`) do not bring it back; `vehicle add` does.
    removed_at = fields.DatetimeField(null=True)

    charge_state: fields.BackwardOneToOneRelation[ChargeState]

    class Meta:
        table = "vehicles"
        unique_together = (("provider", "provider_vehicle_id"),)


class ChargeState(Model):
    vehicle: fields.OneToOneRelation[Vehicle] = fields.OneToOneField(
        "evlink.Vehicle", related_name="charge_state", on_delete=fields.CASCADE, primary_key=True
    )
    power_delivery_state = fields.CharField(max_length=64, default="UNKNOWN")
    battery_level = fields.IntField(null=True)
    range = fields.FloatField(null=True)
    is_plugged_in = fields.BooleanField(null=True)
    is_charging = fields.BooleanField(null=True)
    is_fully_charged = fields.BooleanField(null=True)
    battery_capacity = fields.FloatField(null=True)
    charge_limit = fields.IntField(null=True)
    charge_rate = fields.FloatField(null=True)
    charge_time_remaining = fields.IntField(null=True)
    max_current = fields.FloatField(null=True)
    plugged_in_charger_id = fields.CharField(max_length=128, null=True)
    # When the vehicle reported this state (provider time), never moved backwards.
    last_updated = fields.DatetimeField(null=True)

    class Meta:
        table = "charge_states"


CHARGE_STATE_FIELDS = tuple(f.name for f in fields_of(ChargeStateData))


def charge_state_data(state: ChargeState) -> ChargeStateData:
    """The stored charge state as provider-neutral data."""
    return ChargeStateData(**{name: getattr(state, name) for name in CHARGE_STATE_FIELDS})


@dataclass(frozen=True, slots=True)
class _Statement:
    sql: str
    vehicle_columns: tuple[str, ...]
    state_columns: tuple[str, ...]


def _with_state_statement(dialect: str) -> _Statement:
    """The statement of :func:`vehicle_with_charge_state` in ``dialect``. The two tables'
    column names differ, so none needs an alias."""
    vehicle_columns, state_columns = columns(Vehicle), columns(ChargeState)
    selected = [f'v."{c}"' for c in vehicle_columns] + [f'c."{c}"' for c in state_columns]
    sql = " ".join(
        [
            "SELECT",
            ", ".join(selected),
            f'FROM "{Vehicle._meta.db_table}" v',
            f'LEFT JOIN "{ChargeState._meta.db_table}" c ON c."vehicle_id" = v."id"',
            f'WHERE v."id" = {placeholder(dialect)} AND v."deleted_at" IS NULL',
        ]
    )
    return _Statement(sql, vehicle_columns, state_columns)


_with_state = PerDialect(_with_state_statement)


async def vehicle_with_charge_state(vehicle_id: UUID) -> tuple[Vehicle, ChargeState | None] | None:
    """The vehicle with this id unless deleted, and its stored charge state (None when
    none is stored): one statement, so one round trip and one snapshot of both rows."""
    db = Vehicle._meta.db
    statement = _with_state(db.capabilities.dialect)
    value = Vehicle._meta.fields_map["id"].to_db_value(vehicle_id, Vehicle)
    rows = await fetch_rows(db, statement.sql, [value])
    if not rows:
        return None
    row = rows[0]
    vehicle = model_from_row(Vehicle, row, statement.vehicle_columns)
    state_start = len(statement.vehicle_columns)
    if row[state_start + statement.state_columns.index("vehicle_id")] is None:
        return vehicle, None  # the LEFT JOIN found no charge state
    state = model_from_row(ChargeState, row, statement.state_columns, state_start)
    return vehicle, state


@dataclass(frozen=True, slots=True)
class _KeyStatement:
    sql: str
    vehicle_columns: tuple[str, ...]  # from vehicle_start on, then the charge state's
    state_columns: tuple[str, ...]
    vehicle_start: int


def _key_with_vehicle_statement(dialect: str) -> _KeyStatement:
    """The statement of :func:`active_key_with_vehicle` in ``dialect``: the key's and the
    user's columns as :func:`~evlink.models.users.active_key_with_user` selects them, then
    the vehicle's and its charge state's (read by position, so their names may overlap
    the user's)."""
    vehicle_columns, state_columns = columns(Vehicle), columns(ChargeState)
    selected = KEY_COLUMNS + [f'u."{c}"' for c in columns(User)]
    vehicle_start = len(selected)
    selected += [f'v."{c}"' for c in vehicle_columns] + [f'c."{c}"' for c in state_columns]
    sql = " ".join(
        [
            "SELECT",
            ", ".join(selected),
            f'FROM "{ApiKey._meta.db_table}" k',
            f'JOIN "{User._meta.db_table}" u ON u."id" = k."user_id"',
            f'LEFT JOIN "{Vehicle._meta.db_table}" v',
            f'ON v."id" = {placeholder(dialect, 2)} AND v."deleted_at" IS NULL',
            f'LEFT JOIN "{ChargeState._meta.db_table}" c ON c."vehicle_id" = v."id"',
            f'WHERE k."hash" = {placeholder(dialect, 1)} AND k."revoked_at" IS NULL',
        ]
    )
    return _KeyStatement(sql, vehicle_columns, state_columns, vehicle_start)


_key_with_vehicle = PerDialect(_key_with_vehicle_statement)


class VehicleRow:
    """The vehicle part of :func:`active_key_with_vehicle`'s row, made into models only
    when asked (a read the read cache answers after all never needs them)."""

    __slots__ = ("_row", "_statement")

    def __init__(self, row: Row, statement: _KeyStatement) -> None:
        self._row = row
        self._statement = statement

    def models(self) -> tuple[Vehicle, ChargeState | None] | None:
        """As :func:`vehicle_with_charge_state` would have answered."""
        row, statement = self._row, self._statement
        start = statement.vehicle_start
        if row[start + statement.vehicle_columns.index("id")] is None:
            return None  # no such vehicle, or deleted
        vehicle = model_from_row(Vehicle, row, statement.vehicle_columns, start)
        state_start = start + len(statement.vehicle_columns)
        if row[state_start + statement.state_columns.index("vehicle_id")] is None:
            return vehicle, None
        state = model_from_row(ChargeState, row, statement.state_columns, state_start)
        return vehicle, state


async def active_key_with_vehicle(
    key_hash: str, vehicle_id: UUID
) -> tuple[ActiveKey, VehicleRow] | None:
    """:func:`~evlink.models.users.active_key_with_user` and
    :func:`vehicle_with_charge_state` in one statement (one round trip): None when there
    is no such active key, whatever the vehicle; else the key and the vehicle's row."""
    db = ApiKey._meta.db
    statement = _key_with_vehicle(db.capabilities.dialect)
    value = Vehicle._meta.fields_map["id"].to_db_value(vehicle_id, Vehicle)
    rows = await fetch_rows(db, statement.sql, [key_hash, value])
    if not rows:
        return None
    row = rows[0]
    return active_key_from_row(row), VehicleRow(row, statement)
