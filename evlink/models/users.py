"""Users, their tier, and their API keys (stored as a SHA-256 hash and a public prefix)."""

from __future__ import annotations

from enum import StrEnum

from tortoise import fields
from tortoise.models import Model


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
