"""Charging sessions, the samples they rest on, and each user's tariff.

A session is one charge of one car, from the first state seen charging to the
one that ends it (:mod:`evlink.resolvers.sessions` holds the rules). Its totals
are kept on the row as samples come, so reads never add samples up; the samples
themselves are kept to draw the session and pruned after
``EVLINK_SESSION_SAMPLES_KEEP_DAYS``. At most one session per car is open (a
partial unique index, migration 0008), and a sample is unique by its session
and time: two instances recording the same state store it once.
"""

from __future__ import annotations

import sqlite3
from enum import StrEnum
from typing import Any
from uuid import UUID

from tortoise import fields
from tortoise.models import Model

from evlink.models.backends import SQLITE_ONE_TRIP, RowUpdate, in_sqlite_thread
from evlink.models.users import User
from evlink.models.vehicles import Vehicle


class EndReason(StrEnum):
    STOPPED = "STOPPED"  # plugged in, not full: stopped by someone or something
    COMPLETE = "COMPLETE"  # full, or at the charge limit
    UNPLUGGED = "UNPLUGGED"
    UNREACHABLE = "UNREACHABLE"  # no state for EVLINK_SESSION_STALE_AFTER


class StartedBy(StrEnum):
    EVLINK = "EVLINK"  # a START command of evlink (command_id)
    OTHER = "OTHER"  # the car's schedule, the charger, its app


class ChargingSession(Model):
    id = fields.UUIDField(primary_key=True)
    vehicle: fields.ForeignKeyRelation[Vehicle] = fields.ForeignKeyField(
        "evlink.Vehicle", related_name="charging_sessions", on_delete=fields.CASCADE
    )
    # Provider time (the states' lastUpdated) of the first and the closing sample.
    started_at = fields.DatetimeField()
    ended_at = fields.DatetimeField(null=True)
    end_reason = fields.CharEnumField(EndReason, max_length=16, null=True)
    started_by = fields.CharEnumField(StartedBy, max_length=8, default=StartedBy.OTHER)
    command_id = fields.UUIDField(null=True)
    battery_start = fields.IntField(null=True)
    battery_end = fields.IntField(null=True)
    range_start = fields.FloatField(null=True)
    range_end = fields.FloatField(null=True)
    battery_capacity = fields.FloatField(null=True)
    # The charge rate integrated over time (trapezoids between samples), kWh.
    energy_from_power = fields.FloatField(default=0.0)
    # That energy priced interval by interval (null without a tariff).
    cost_from_power = fields.FloatField(null=True)
    peak_power = fields.FloatField(null=True)
    sample_count = fields.IntField(default=0)
    rated_sample_count = fields.IntField(default=0)  # samples with a charge rate
    # The latest sample integrated: its provider time and rate (the next trapezoid's side).
    last_sample_at = fields.DatetimeField()
    last_rate = fields.FloatField(null=True)
    # evlink's clock when it last recorded a sample (staleness: EVLINK_SESSION_STALE_AFTER).
    last_recorded_at = fields.DatetimeField()
    tariff: fields.JSONField[dict[str, Any] | None] = fields.JSONField(null=True)
    location: fields.JSONField[dict[str, Any] | None] = fields.JSONField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    samples: fields.ReverseRelation[ChargingSample]

    class Meta:
        table = "charging_sessions"
        indexes = (("vehicle_id", "started_at"),)


_ADVANCE: dict[tuple[Any, ...], str] = {}  # by dialect, fields, what it carries


async def advance_session(
    session_id: UUID,
    sample_count: int,
    values: dict[str, Any],
    sample: dict[str, Any] | None = None,
    along: RowUpdate | None = None,
) -> bool:
    """Write ``values`` on the session if it is open and still has ``sample_count``
    samples (the compare-and-set of :mod:`evlink.resolvers.sessions`); True if written.
    Then, if written, store ``sample`` (a :class:`ChargingSample`'s fields but its
    session): on PostgreSQL in the same statement, one round trip for both; on SQLite
    right after it in the same trip to aiosqlite's thread
    (:func:`~evlink.models.backends.in_sqlite_thread`; a call each where that is
    missing).

    ``along``: another write of the same transaction (the car's charge state), run
    first and whatever the compare-and-set finds, in the same database call: on
    PostgreSQL one more data-modifying ``WITH`` of the statement, on SQLite one more
    statement of the trip.

    Statements made once per set of fields: Tortoise's ``update()`` would build its
    query again on every call, copying it once per field set.
    """
    db = ChargingSession._meta.db
    dialect = db.capabilities.dialect
    names = tuple(values)
    parameters = _db_values(ChargingSession, values)
    session = _db_value(ChargingSession, "id", session_id)
    parameters += [session, sample_count]
    if sample is not None and dialect == "postgres":
        parameters += _db_values(ChargingSample, sample)
        sql = _advance_sql(dialect, names, tuple(sample))
        if along is not None:
            sql = _carrying(sql, along, len(parameters))
            parameters += along.parameters()
        _, inserted = await db.execute_query(sql, parameters)
        return bool(inserted)
    update = _advance_sql(dialect, names, ())
    if sample is not None and dialect == "sqlite" and SQLITE_ONE_TRIP:
        insert = _insert_sample_sql(tuple(sample))
        row = [session, *_db_values(ChargingSample, sample)]
        first = (along.sql(dialect), along.parameters()) if along is not None else None

        def update_then_insert(connection: sqlite3.Connection) -> bool:
            # In aiosqlite's thread: all the statements in one trip there.
            if first is not None:
                connection.execute(*first)
            if connection.execute(update, parameters).rowcount == 0:
                return False
            connection.execute(insert, row)
            return True

        return await in_sqlite_thread(db, update_then_insert)
    if along is not None:
        await along.run()
    changed, _ = await db.execute_query(update, parameters)
    if changed and sample is not None:
        await ChargingSample.create(session_id=session_id, **sample)
    return changed > 0


def _carrying(sql: str, along: RowUpdate, before: int) -> str:
    """PostgreSQL's ``sql`` (a ``WITH``) carrying ``along`` as one more data-modifying
    ``WITH``, its parameters numbered after the ``before`` of ``sql``. PostgreSQL runs
    every data-modifying ``WITH`` to completion, read or not."""
    known = ("carrying", sql, along.model, along.key, tuple(along.values))
    carried = _ADVANCE.get(known)
    if carried is None:
        assert sql.startswith("WITH ")
        carried = f"WITH along AS ({along.sql('postgres', before + 1)}), {sql[len('WITH ') :]}"
        _ADVANCE[known] = carried
    return carried


def _db_value(model: type[Model], name: str, value: Any) -> Any:
    return model._meta.fields_map[name].to_db_value(value, model)


_CONVERTERS: dict[tuple[type[Model], tuple[str, ...]], list[Any]] = {}  # to_db_value by field


def _db_values(model: type[Model], values: dict[str, Any]) -> list[Any]:
    """``values`` as the database takes them, in order (each by its field's
    ``to_db_value``, looked up once per set of fields)."""
    names = tuple(values)
    converters = _CONVERTERS.get((model, names))
    if converters is None:
        fields = model._meta.fields_map
        converters = _CONVERTERS[model, names] = [fields[name].to_db_value for name in names]
    return [
        convert(value, model) for convert, value in zip(converters, values.values(), strict=True)
    ]


def _advance_sql(dialect: str, names: tuple[str, ...], sample: tuple[str, ...]) -> str:
    """The compare-and-set setting ``names``; with ``sample`` (PostgreSQL), the insert
    of a sample of those fields for the session it moved, if it moved one."""
    sql = _ADVANCE.get((dialect, names, sample))
    if sql is None:
        count = len(names) + 2 + len(sample)
        marks = [f"${i}" for i in range(1, count + 1)] if dialect == "postgres" else ["?"] * count
        session_columns = ChargingSession._meta.fields_db_projection
        sample_columns = ChargingSample._meta.fields_db_projection
        # Only the models' own table and column names go into the text.
        assignments = ", ".join(
            f'"{session_columns[name]}" = {mark}' for name, mark in zip(names, marks, strict=False)
        )
        id_mark, count_mark = marks[len(names)], marks[len(names) + 1]
        update = " ".join(
            [
                f'UPDATE "{ChargingSession._meta.db_table}" SET {assignments}',  # noqa: S608
                f'WHERE "id" = {id_mark} AND "sample_count" = {count_mark}',
                'AND "ended_at" IS NULL',
            ]
        )
        sql = update
        if sample:
            columns = ", ".join(f'"{sample_columns[name]}"' for name in sample)
            sql = " ".join(
                [
                    f'WITH moved AS ({update} RETURNING "id")',
                    f'INSERT INTO "{ChargingSample._meta.db_table}" ("session_id", {columns})',
                    f'SELECT "id", {", ".join(marks[len(names) + 2 :])} FROM moved',  # noqa: S608
                    'RETURNING "id"',
                ]
            )
        _ADVANCE[(dialect, names, sample)] = sql
    return sql


def _insert_sample_sql(sample: tuple[str, ...]) -> str:
    """SQLite's insert of a sample of those fields (its session first)."""
    sql = _ADVANCE.get(("sqlite-sample", (), sample))
    if sql is None:
        columns = ChargingSample._meta.fields_db_projection
        names = ", ".join(['"session_id"', *(f'"{columns[name]}"' for name in sample)])
        marks = ", ".join("?" * (len(sample) + 1))
        sql = f'INSERT INTO "{ChargingSample._meta.db_table}" ({names}) VALUES ({marks})'  # noqa: S608
        _ADVANCE[("sqlite-sample", (), sample)] = sql
    return sql


class ChargingSample(Model):
    id = fields.BigIntField(primary_key=True)
    session: fields.ForeignKeyRelation[ChargingSession] = fields.ForeignKeyField(
        "evlink.ChargingSession", related_name="samples", on_delete=fields.CASCADE
    )
    at = fields.DatetimeField()  # the state's lastUpdated
    battery_level = fields.IntField(null=True)
    range = fields.FloatField(null=True)
    charge_rate = fields.FloatField(null=True)
    is_plugged_in = fields.BooleanField(null=True)
    is_charging = fields.BooleanField(null=True)

    class Meta:
        table = "charging_samples"
        unique_together = (("session", "at"),)


class UserTariff(Model):
    # A user's tariff: evlink.tariffs.Tariff, its periods as in Tariff.to_json.
    user: fields.OneToOneRelation[User] = fields.OneToOneField(
        "evlink.User", related_name="tariff", on_delete=fields.CASCADE, primary_key=True
    )
    price_per_kwh = fields.FloatField()
    currency = fields.CharField(max_length=3)
    periods: fields.JSONField[list[dict[str, Any]]] = fields.JSONField(default=list)
    time_zone = fields.CharField(max_length=64, default="UTC")
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "tariffs"
