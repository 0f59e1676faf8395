"""Webhook deliveries, written before they are answered so that none is lost."""

from __future__ import annotations

from typing import Any

from tortoise import fields
from tortoise.models import Model


class WebhookDelivery(Model):
    # The provider's delivery id (Enode's x-enode-delivery): a repeat is seen here.
    id = fields.CharField(max_length=128, primary_key=True)
    provider = fields.CharField(max_length=32)
    # The signature covers the body, not the delivery id: the same signed body under a
    # new id is a replay, refused by this column.
    body_sha256 = fields.CharField(max_length=64, unique=True, null=True)
    body: fields.JSONField[list[dict[str, Any]]] = fields.JSONField()
    received_at = fields.DatetimeField(auto_now_add=True)
    processed_at = fields.DatetimeField(null=True, db_index=True)

    class Meta:
        table = "webhook_deliveries"
