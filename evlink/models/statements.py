"""Hot reads written once per SQL dialect and run through Tortoise's own connection.

A status miss reads a key with its user and a vehicle with its charge state; Tortoise's
query building (pypika) for each would cost more than the database's answer. These
statements are made on first use (the models' table and column names are known once
Tortoise is set up), once per dialect, and only the models' own names go into their
text: every value is a parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from tortoise.models import Model

__all__ = ["PerDialect", "columns", "placeholder"]

T = TypeVar("T")


def columns(model: type[Model]) -> tuple[str, ...]:
    """The model's column names, in its fields' order."""
    return tuple(model._meta.fields_db_projection.values())


def placeholder(dialect: str) -> str:
    """The first (and only) parameter's placeholder in ``dialect``."""
    return "$1" if dialect == "postgres" else "?"


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
