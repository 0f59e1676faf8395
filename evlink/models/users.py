"""Users, their tier, and their API keys (stored as a SHA-256 hash and a public prefix).

:func:`active_key_with_user` is the key lookup of every request the read cache does
not answer: the active key with this hash and its user, in one statement
(:mod:`evlink.models.statements`), which makes the user as Tortoise would.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from tortoise import fields
from tortoise.models import Model

from evlink.models.backends import fetch_rows
from evlink.models.statements import (
    PerDialect,
    Row,
    columns,
    model_from_row,
    parse_timestamp_column,
    placeholder,
)


class Tier(StrEnum):
    FREE = "FREE"
    BASIC = "BASIC"
    PRO = "PRO"


class User(Model):
    id = fields.IntField(primary_key=True)
    email = fields.CharField(max_length=254, unique=True)
    tier = fields.CharEnumField(Tier, max_length=8, default=Tier.FREE)
    # The id this user has at Enode (chosen by evlink when the user first links a car).
    enode_user_id = fields.CharField(max_length=64, null=True, unique=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "users"

    def __str__(self) -> str:
        return self.email


class ApiKey(Model):
    id = fields.IntField(primary_key=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "evlink.User", related_name="api_keys", on_delete=fields.CASCADE
    )
    name = fields.CharField(max_length=100, default="")
    # The key's first characters, safe to show in listings ("evl_3fJk9Q").
    prefix = fields.CharField(max_length=16, db_index=True)
    hash = fields.CharField(max_length=64, unique=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    last_used_at = fields.DatetimeField(null=True)
    revoked_at = fields.DatetimeField(null=True)

    class Meta:
        table = "api_keys"


@dataclass(frozen=True, slots=True)
class ActiveKey:
    """An active key's id and last use, with its user."""

    id: int
    last_used_at: datetime | None
    user: User


KEY_COLUMNS = ['k."id" AS "key_id"', 'k."last_used_at" AS "key_last_used_at"']
"""What a statement selects of the key ``k`` first, then the user's :func:`columns`,
for :func:`active_key_from_row` (aliased: the user has an ``id`` too)."""


def _active_key_statement(dialect: str) -> str:
    """The statement of :func:`active_key_with_user` in ``dialect``: the key's two columns
    under names of their own (the user has an ``id`` too), then the user's."""
    selected = KEY_COLUMNS + [f'u."{c}"' for c in columns(User)]
    return " ".join(
        [
            "SELECT",
            ", ".join(selected),
            f'FROM "{ApiKey._meta.db_table}" k',
            f'JOIN "{User._meta.db_table}" u ON u."id" = k."user_id"',
            f'WHERE k."hash" = {placeholder(dialect)} AND k."revoked_at" IS NULL',
        ]
    )


_active_key = PerDialect(_active_key_statement)


async def active_key_with_user(key_hash: str) -> ActiveKey | None:
    """The key with this hash unless revoked, with its user: one statement."""
    db = ApiKey._meta.db
    rows = await fetch_rows(db, _active_key(db.capabilities.dialect), [key_hash])
    if not rows:
        return None
    return active_key_from_row(rows[0])


def active_key_from_row(row: Row) -> ActiveKey:
    """The key of a row that starts with :data:`KEY_COLUMNS` and the user's columns."""
    user = model_from_row(User, row, columns(User), len(KEY_COLUMNS))
    last_used_at = ApiKey._meta.fields_map["last_used_at"]
    last_used = last_used_at.to_python_value(parse_timestamp_column(row[1]))
    return ActiveKey(int(row[0]), last_used, user)
