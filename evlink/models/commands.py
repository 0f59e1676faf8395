"""Charging commands: a user's wish to start or stop, followed until it is confirmed."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from tortoise import fields
from tortoise.models import Model

from evlink.domain import ChargingAction
from evlink.models.users import User
from evlink.models.vehicles import Vehicle


class CommandState(StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def is_final(self) -> bool:
        return self is not CommandState.PENDING


class ChargingCommand(Model):
    id = fields.UUIDField(primary_key=True)
    vehicle: fields.ForeignKeyRelation[Vehicle] = fields.ForeignKeyField(
        "evlink.Vehicle", related_name="charging_commands", on_delete=fields.CASCADE
    )
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "evlink.User", related_name="charging_commands", on_delete=fields.CASCADE
    )
    action = fields.CharEnumField(ChargingAction, max_length=8)
    state = fields.CharEnumField(CommandState, max_length=16, default=CommandState.PENDING)
    attempts = fields.IntField(default=0)
    provider_action_id = fields.CharField(max_length=128, null=True, db_index=True)
    # The provider's latest action as it shaped it (the REST contract's enode_response).
    provider_action: fields.JSONField[dict[str, Any] | None] = fields.JSONField(null=True)
    idempotency_key = fields.CharField(max_length=255, null=True)
    failure_reason: str | None = fields.TextField(null=True)
    # When the watcher should next look at this command (resend or poll).
    next_attempt_at = fields.DatetimeField(null=True)
    # The instance following this command, until when; an expired lease is free to take.
    lease_owner = fields.CharField(max_length=128, null=True, db_index=True)
    lease_expires_at = fields.DatetimeField(null=True)
    deadline_at = fields.DatetimeField()
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)
    completed_at = fields.DatetimeField(null=True)

    class Meta:
        table = "charging_commands"
        unique_together = (("user", "idempotency_key"),)
        ordering = ("-created_at",)
