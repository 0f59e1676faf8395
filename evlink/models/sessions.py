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

from enum import StrEnum
from typing import Any
from uuid import UUID

from tortoise import fields
from tortoise.models import Model

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


_ADVANCE: dict[tuple[str, tuple[str, ...]], str] = {}  # by SQL dialect and columns set


async def advance_session(session_id: UUID, sample_count: int, values: dict[str, Any]) -> bool:
    """Write ``values`` on the session if it is open and still has ``sample_count``
    samples (the compare-and-set of :mod:`evlink.resolvers.sessions`); True if written.

    One statement, made once per set of fields: Tortoise's ``update()`` would build
    it again on every call, copying the query once per field set.
    """
    db = ChargingSession._meta.db
    names = tuple(values)
    fields_map = ChargingSession._meta.fields_map
    parameters = [fields_map[name].to_db_value(values[name], ChargingSession) for name in names]
    parameters += [fields_map["id"].to_db_value(session_id, ChargingSession), sample_count]
    changed, _ = await db.execute_query(_advance_sql(db.capabilities.dialect, names), parameters)
    return changed > 0


def _advance_sql(dialect: str, names: tuple[str, ...]) -> str:
    sql = _ADVANCE.get((dialect, names))
    if sql is None:
        count = len(names) + 2
        marks = [f"${i}" for i in range(1, count + 1)] if dialect == "postgres" else ["?"] * count
        columns = ChargingSession._meta.fields_db_projection
        # Only the model's own table and column names go into the text.
        assignments = ", ".join(
            f'"{columns[name]}" = {mark}' for name, mark in zip(names, marks, strict=False)
        )
        sql = _ADVANCE[(dialect, names)] = (
            f'UPDATE "{ChargingSession._meta.db_table}" SET {assignments} '  # noqa: S608
            f'WHERE "id" = {marks[-2]} AND "sample_count" = {marks[-1]} AND "ended_at" IS NULL'
        )
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
