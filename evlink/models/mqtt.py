"""MQTT publishing per user (``evlink mqtt enable``) and the publisher's lease."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model

from evlink.models.users import User


class MqttUser(Model):
    """A user whose cars evlink publishes over MQTT, under a random topic id.

    The topic id names the user in every topic (never the email or a key); it is
    kept when publishing is turned off, so that turning it on again gives Home
    Assistant the same topics.
    """

    user: fields.OneToOneRelation[User] = fields.OneToOneField(
        "evlink.User", related_name="mqtt", on_delete=fields.CASCADE, primary_key=True
    )
    topic_id = fields.CharField(max_length=32, unique=True)
    enabled = fields.BooleanField(default=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "mqtt_users"


class MqttLease(Model):
    """Which instance publishes state to the broker, until when (compare-and-set)."""

    name = fields.CharField(max_length=32, primary_key=True)
    owner = fields.CharField(max_length=128, null=True)
    expires_at = fields.DatetimeField(null=True)

    class Meta:
        table = "mqtt_leases"
