"""Vehicles as evlink stores them, and their latest charge state.

:func:`vehicle_with_charge_state` is the read of a status miss: the vehicle and its
charge state in one statement (:mod:`evlink.models.statements`: written once per SQL
dialect, run through Tortoise's own connection, no query building per read); Tortoise's
``_init_from_db`` makes the models from the row, as its own queries do
(:func:`~evlink.models.statements.model_from_row`).

A status read takes the row further without models: :meth:`VehicleRow.stored` gives a
:class:`StoredVehicle` (read-only; what the status path reads of a vehicle, each column
converted as Tortoise converts it, the JSON columns only when read) and the charge state
as :class:`~evlink.domain.ChargeStateData` straight from its columns. A path that writes
the vehicle asks the view for its model (:meth:`StoredVehicle.model`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import fields as fields_of
from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID

from tortoise import fields
from tortoise.fields import DatetimeField
from tortoise.models import Model

from evlink.domain import ChargeStateData
from evlink.models.backends import ManyAtOnce, fetch_rows, fetch_together
from evlink.models.statements import (
    PerDialect,
    Row,
    columns,
    model_from_row,
    parse_timestamp_column,
    placeholder,
)
from evlink.models.users import KEY_COLUMNS, ActiveKey, ApiKey, User, active_key_from_row

logger = logging.getLogger(__name__)


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


_Convert = Callable[[Any], Any] | None
"""A column's conversion to the model's value (None: the value as the driver gives it)."""

_set = object.__setattr__


class StoredVehicle:
    """A vehicle as its stored row has it, read-only: duck-typed like :class:`Vehicle` for
    every reader (the REST bodies, the GraphQL types, freshness, the ownership check), and
    kept in the read cache. Each attribute is the value Tortoise's model would have (the
    same field conversions); the JSON columns, and the timestamps a status never shows,
    are converted when first read. A writer takes :meth:`model`."""

    __slots__ = (
        "_plan",
        "_row",
        "_start",
        "capabilities",
        "created_at",
        "deleted_at",
        "id",
        "information",
        "is_reachable",
        "last_seen",
        "location",
        "name",
        "odometer",
        "provider",
        "provider_user_id",
        "provider_vehicle_id",
        "refreshed_at",
        "removed_at",
        "smart_charging_policy",
        "user_id",
        "vendor",
    )

    id: UUID
    user_id: int
    provider: str
    provider_vehicle_id: str | None
    provider_user_id: str | None
    name: str | None
    vendor: str | None
    information: dict[str, Any]
    capabilities: dict[str, Any]
    smart_charging_policy: dict[str, Any]
    location: dict[str, Any] | None
    odometer: dict[str, Any] | None
    last_seen: datetime | None
    is_reachable: bool | None
    refreshed_at: datetime | None
    created_at: datetime
    deleted_at: datetime | None
    removed_at: datetime | None
    _row: Row
    _start: int
    _plan: _RowPlan

    def __init__(self, row: Row, start: int, plan: _RowPlan) -> None:
        _set(self, "_row", row)
        _set(self, "_start", start)
        _set(self, "_plan", plan)
        for name, index, convert in plan.eager:
            value = row[start + index]
            _set(self, name, value if convert is None else convert(value))

    @classmethod
    def of_model(cls, vehicle: Vehicle, row: Row, start: int, plan: _RowPlan) -> StoredVehicle:
        """The view of a model made of ``row`` (every attribute read from the model)."""
        made = cls.__new__(cls)
        _set(made, "_row", row)
        _set(made, "_start", start)
        _set(made, "_plan", plan)
        for name in _FIELDS:
            _set(made, name, getattr(vehicle, name))
        return made

    def __getattr__(self, name: str) -> Any:
        # Only for an attribute not set yet: a lazy column, converted once.
        lazy = self._plan.lazy.get(name) if not name.startswith("_") else None
        if lazy is None:
            raise AttributeError(name)
        index, convert = lazy
        value = convert(self._row[self._start + index])
        _set(self, name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a stored vehicle is read-only ({name}): change its model()")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a stored vehicle is read-only ({name})")

    def __repr__(self) -> str:
        return f"<StoredVehicle {self.id}>"

    def model(self) -> Vehicle:
        """A new :class:`Vehicle` model of the same row (Tortoise's own conversion), to
        change and save."""
        return model_from_row(Vehicle, self._row, self._plan.vehicle_columns, self._start)


_FIELDS = tuple(name for name in StoredVehicle.__slots__ if not name.startswith("_"))
"""The model's attributes, which a stored vehicle has too."""

AnyVehicle: TypeAlias = Vehicle | StoredVehicle
"""A vehicle to read: the model, or the stored row's view of it."""


def as_model(vehicle: AnyVehicle) -> Vehicle:
    """``vehicle`` as a model to change and save (a new one for a :class:`StoredVehicle`)."""
    return vehicle.model() if isinstance(vehicle, StoredVehicle) else vehicle


# Converted only when read: the JSON columns (a status shows the location, and the
# information only for a car without a name) and the timestamps a status never shows.
_LAZY = frozenset(
    {
        "information",
        "capabilities",
        "smart_charging_policy",
        "location",
        "odometer",
        "created_at",
        "deleted_at",
        "removed_at",
    }
)


@dataclass(frozen=True, slots=True)
class _RowPlan:
    """How a row whose vehicle columns start at some index, its charge state's right after
    them, becomes a :class:`StoredVehicle` and :class:`ChargeStateData`: per column, by
    offset from that index, the conversion Tortoise's ``_init_from_db`` applies."""

    vehicle_columns: tuple[str, ...]
    state_columns: tuple[str, ...]
    id_at: int  # the vehicle's id (null: no vehicle)
    state_key_at: int  # the charge state's vehicle id (null: no charge state)
    eager: tuple[tuple[str, int, _Convert], ...]  # (attribute, offset, conversion)
    lazy: dict[str, tuple[int, Callable[[Any], Any]]]
    state: tuple[tuple[int, _Convert], ...]  # in CHARGE_STATE_FIELDS order
    exact: bool  # the conversions are Tortoise's (else the models are made, then read)


def _made_by(kind: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: value if value is None else kind(value)


def _timestamp(field: DatetimeField[Any]) -> Callable[[Any], Any]:
    convert = field.to_python_value
    return lambda value: value if value is None else convert(parse_timestamp_column(value))


def _conversions(model: type[Model]) -> dict[str, tuple[str, _Convert]] | None:
    """Column -> (attribute, conversion) as ``_init_from_db`` converts the model's
    columns with the backend in use (its field lists made at Tortoise's set-up: native
    types as the driver gives them, the field's type, or the field's ``to_python_value``);
    None when Tortoise no longer has those lists as this reads them."""
    meta = model._meta
    try:
        native = meta.db_native_fields
        default = meta.db_default_fields
        complex_ = meta.db_complex_fields
    except AttributeError:
        return None
    made: dict[str, tuple[str, _Convert]] = {}
    try:
        for column, name, _field in native:
            made[column] = (name, None)
        for column, name, field in default:
            made[column] = (name, _made_by(field.field_type))
        for column, name, field in complex_:
            if isinstance(field, DatetimeField):
                made[column] = (name, _timestamp(field))
            else:
                made[column] = (name, field.to_python_value)
    except (TypeError, ValueError):
        return None
    expected = {column: name for name, column in meta.fields_db_projection.items()}
    if {column: name for column, (name, _) in made.items()} != expected:
        return None
    return made


def _row_plan(dialect: str) -> _RowPlan:
    """The :class:`_RowPlan` of the backend in use (made once per SQL dialect, as the
    statements are)."""
    del dialect  # the conversions are the backend's; one backend per dialect
    vehicle_columns, state_columns = columns(Vehicle), columns(ChargeState)
    vehicle = _conversions(Vehicle)
    state = _conversions(ChargeState)
    exact = (
        vehicle is not None
        and state is not None
        and {name for name, _ in vehicle.values()} == set(_FIELDS)
        and {name for name, _ in state.values()} >= set(CHARGE_STATE_FIELDS)
    )
    eager: list[tuple[str, int, _Convert]] = []
    lazy: dict[str, tuple[int, Callable[[Any], Any]]] = {}
    state_plan: list[tuple[int, _Convert]] = []
    if exact:
        assert vehicle is not None
        assert state is not None
        for index, column in enumerate(vehicle_columns):
            name, convert = vehicle[column]
            if name in _LAZY and convert is not None:
                lazy[name] = (index, convert)
            else:
                eager.append((name, index, convert))
        at = {name: (column, convert) for column, (name, convert) in state.items()}
        start = len(vehicle_columns)
        for name in CHARGE_STATE_FIELDS:
            column, convert = at[name]
            state_plan.append((start + state_columns.index(column), convert))
    else:
        logger.warning(
            "Tortoise's field lists are not as evlink reads them: a status read makes "
            "the vehicle's models first (slower, same answers)"
        )
    return _RowPlan(
        vehicle_columns,
        state_columns,
        vehicle_columns.index("id"),
        len(vehicle_columns) + state_columns.index("vehicle_id"),
        tuple(eager),
        lazy,
        tuple(state_plan),
        exact,
    )


_row_plans = PerDialect(_row_plan)


@dataclass(frozen=True, slots=True)
class _Statement:
    sql: str
    vehicle_columns: tuple[str, ...]
    state_columns: tuple[str, ...]
    plan: _RowPlan


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
    return _Statement(sql, vehicle_columns, state_columns, _row_plans(dialect))


_with_state = PerDialect(_with_state_statement)


async def vehicle_with_charge_state(
    vehicle_id: UUID,
) -> tuple[StoredVehicle, ChargeStateData | None] | None:
    """The vehicle with this id unless deleted, and its stored charge state (None when
    none is stored): one statement, so one round trip and one snapshot of both rows
    (:meth:`VehicleRow.stored`)."""
    db = Vehicle._meta.db
    statement = _with_state(db.capabilities.dialect)
    value = Vehicle._meta.fields_map["id"].to_db_value(vehicle_id, Vehicle)
    rows = await fetch_rows(db, statement.sql, [value])
    if not rows:
        return None
    return VehicleRow(rows[0], 0, statement.plan).stored()


def _state_of_row(row: Row, start: int, plan: _RowPlan) -> ChargeStateData:
    """The charge state's columns of ``row`` as data; ``start``: where the vehicle's columns
    would begin (the charge state's follow them)."""
    return ChargeStateData(
        *[
            row[start + index] if convert is None else convert(row[start + index])
            for index, convert in plan.state
        ]
    )


def _state_statement(dialect: str) -> _Statement:
    """The statement of :func:`charge_state_of` in ``dialect``: the charge state's columns
    alone."""
    state_columns = columns(ChargeState)
    sql = " ".join(
        [
            "SELECT",
            ", ".join(f'"{c}"' for c in state_columns),
            f'FROM "{ChargeState._meta.db_table}"',
            f'WHERE "vehicle_id" = {placeholder(dialect)}',
        ]
    )
    return _Statement(sql, (), state_columns, _row_plans(dialect))


_state_of = PerDialect(_state_statement)


async def charge_state_of(vehicle_id: UUID) -> ChargeStateData | None:
    """The stored charge state of the vehicle with this id (None: none stored), read with a
    statement made once and converted as a status read converts it (Tortoise's query
    building and model cost a refresh more than the read itself)."""
    db = ChargeState._meta.db
    statement = _state_of(db.capabilities.dialect)
    plan = statement.plan
    if not plan.exact:
        stored = await ChargeState.get_or_none(vehicle_id=vehicle_id)
        return None if stored is None else charge_state_data(stored)
    value = Vehicle._meta.fields_map["id"].to_db_value(vehicle_id, Vehicle)
    rows = await fetch_rows(db, statement.sql, [value])
    if not rows:
        return None
    # The plan counts the state's columns from the vehicle's first: none are selected here.
    return _state_of_row(rows[0], -len(plan.vehicle_columns), plan)


@dataclass(frozen=True, slots=True)
class _KeyStatement:
    read: ManyAtOnce  # on PostgreSQL also for many keys and vehicles at once
    vehicle_columns: tuple[str, ...]  # from vehicle_start on, then the charge state's
    state_columns: tuple[str, ...]
    vehicle_start: int
    plan: _RowPlan


def _key_with_vehicle_statement(dialect: str) -> _KeyStatement:
    """The statement of :func:`active_key_with_vehicle` in ``dialect``: the key's and the
    user's columns as :func:`~evlink.models.users.active_key_with_user` selects them, then
    the vehicle's and its charge state's (read by position, so their names may overlap
    the user's). On PostgreSQL also its form for many at once: the pairs of key hash and
    vehicle id as two arrays of text, each row ending with its pair's ordinal."""
    vehicle_columns, state_columns = columns(Vehicle), columns(ChargeState)
    selected = KEY_COLUMNS + [f'u."{c}"' for c in columns(User)]
    vehicle_start = len(selected)
    selected += [f'v."{c}"' for c in vehicle_columns] + [f'c."{c}"' for c in state_columns]
    joined = [
        f'JOIN "{User._meta.db_table}" u ON u."id" = k."user_id"',
        f'LEFT JOIN "{Vehicle._meta.db_table}" v',
        'ON v."id" = {vehicle} AND v."deleted_at" IS NULL',
        f'LEFT JOIN "{ChargeState._meta.db_table}" c ON c."vehicle_id" = v."id"',
    ]
    one = " ".join(
        [
            "SELECT",
            ", ".join(selected),
            f'FROM "{ApiKey._meta.db_table}" k',
            *joined,
            f'WHERE k."hash" = {placeholder(dialect, 1)} AND k."revoked_at" IS NULL',
        ]
    ).replace("{vehicle}", placeholder(dialect, 2))
    many = None
    if dialect == "postgres":
        many = " ".join(
            [
                "SELECT",
                ", ".join(selected),
                ', q."n"',
                # Both arrays as text[], whose codec asyncpg has built in: a uuid[] it
                # would look up on each new connection first (three more round trips).
                'FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q("hash", "vehicle", "n")',
                f'JOIN "{ApiKey._meta.db_table}" k',
                'ON k."hash" = q."hash" AND k."revoked_at" IS NULL',
                *joined,
            ]
        ).replace("{vehicle}", 'q."vehicle"::uuid')
    return _KeyStatement(
        ManyAtOnce(one, many), vehicle_columns, state_columns, vehicle_start, _row_plans(dialect)
    )


_key_with_vehicle = PerDialect(_key_with_vehicle_statement)


class VehicleRow:
    """The vehicle part of a status read's row (from ``start`` on: the vehicle's columns,
    then its charge state's), converted only when asked (a read the read cache answers
    after all never needs it)."""

    __slots__ = ("_plan", "_row", "_start")

    def __init__(self, row: Row, start: int, plan: _RowPlan) -> None:
        self._row = row
        self._start = start
        self._plan = plan

    @property
    def converts_itself(self) -> bool:
        """Whether :meth:`stored` converts the columns itself (else it reads the models,
        :meth:`stored_from_models`): Tortoise's field lists were as it reads them."""
        return self._plan.exact

    def stored(self) -> tuple[StoredVehicle, ChargeStateData | None] | None:
        """The vehicle (None: no such vehicle, or deleted) and its stored charge state
        (None: none stored), without models."""
        plan = self._plan
        if not plan.exact:
            return self.stored_from_models()
        row, start = self._row, self._start
        if row[start + plan.id_at] is None:
            return None
        vehicle = StoredVehicle(row, start, plan)
        if row[start + plan.state_key_at] is None:
            return vehicle, None
        return vehicle, _state_of_row(row, start, plan)

    def stored_from_models(self) -> tuple[StoredVehicle, ChargeStateData | None] | None:
        """What :meth:`stored` gives, read from Tortoise's models of the row (the way
        when Tortoise's field lists are not as :meth:`stored` reads them)."""
        found = self.models()
        if found is None:
            return None
        vehicle, state = found
        stored = StoredVehicle.of_model(vehicle, self._row, self._start, self._plan)
        return stored, None if state is None else charge_state_data(state)

    def models(self) -> tuple[Vehicle, ChargeState | None] | None:
        """The row as Tortoise's models."""
        row, plan, start = self._row, self._plan, self._start
        if row[start + plan.id_at] is None:
            return None  # no such vehicle, or deleted
        vehicle = model_from_row(Vehicle, row, plan.vehicle_columns, start)
        if row[start + plan.state_key_at] is None:
            return vehicle, None
        state_start = start + len(plan.vehicle_columns)
        state = model_from_row(ChargeState, row, plan.state_columns, state_start)
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
    rows = await fetch_together(db, statement.read, [key_hash, value])
    if not rows:
        return None
    row = rows[0]
    return active_key_from_row(row), VehicleRow(row, statement.vehicle_start, statement.plan)
