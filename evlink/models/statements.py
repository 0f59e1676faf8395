"""Hot reads written once per SQL dialect and run through Tortoise's own connection.

A status miss reads a key with its user and a vehicle with its charge state; Tortoise's
query building (pypika) for each would cost more than the database's answer. These
statements are made on first use (the models' table and column names are known once
Tortoise is set up), once per dialect, and only the models' own names go into their
text: every value is a parameter. :func:`model_from_row` makes a model of a row as
Tortoise's own queries do, with SQLite's text timestamps parsed by the standard
library's C parser first (Tortoise's falls back on the pure-Python ``iso8601``: a
tenth of a status miss's time went there).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, TypeVar

from tortoise.fields import DatetimeField
from tortoise.models import Model

__all__ = [
    "PerDialect",
    "Row",
    "columns",
    "model_from_row",
    "parse_timestamp_column",
    "placeholder",
]

T = TypeVar("T")
M = TypeVar("M", bound=Model)
Row = Any
"""A row as the backend gives it (``sqlite3.Row``, ``asyncpg.Record``; Tortoise types them
as dicts): the statements here read it by position."""


def columns(model: type[Model]) -> tuple[str, ...]:
    """The model's column names, in its fields' order."""
    return tuple(model._meta.fields_db_projection.values())


def placeholder(dialect: str, number: int = 1) -> str:
    """The placeholder of the ``number``-th parameter (from 1) in ``dialect``."""
    return f"${number}" if dialect == "postgres" else f"?{number}"


class PerDialect(Generic[T]):
    """What ``build(dialect)`` makes, made once per SQL dialect."""

    def __init__(self, build: Callable[[str], T]) -> None:
        self._build = build
        self._made: dict[str, T] = {}

    def __call__(self, dialect: str) -> T:
        made = self._made.get(dialect)
        if made is None:
            made = self._made[dialect] = self._build(dialect)
        return made


def _timestamp_columns(model: type[Model]) -> frozenset[str]:
    meta = model._meta
    return frozenset(
        column
        for name, column in meta.fields_db_projection.items()
        if isinstance(meta.fields_map[name], DatetimeField)
    )


_TIMESTAMPS: dict[type[Model], frozenset[str]] = {}


def parse_timestamp_column(value: Any) -> Any:
    """A timestamp column's value with SQLite's ISO 8601 text made a ``datetime`` (what
    the field's own conversion then takes as PostgreSQL's); anything else as it was."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value  # left to the field's own parser
    return value


def model_from_row(model: type[M], row: Row, names: tuple[str, ...], start: int = 0) -> M:
    """``model`` of a row whose columns ``start``, ``start + 1``, … are the ``names``
    columns (Tortoise's ``_init_from_db``). By position: SQLite's rows find a column by
    name with a case-insensitive scan of all their names (a status row has 50)."""
    timestamps = _TIMESTAMPS.get(model)
    if timestamps is None:
        timestamps = _TIMESTAMPS[model] = _timestamp_columns(model)
    values = {
        c: parse_timestamp_column(row[i]) if c in timestamps else row[i]
        for i, c in enumerate(names, start)
    }
    return model._init_from_db(**values)
